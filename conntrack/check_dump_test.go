package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// TestLiveFTPHelperFlowsStreams fills a namespace's conntrack table with many unrelated
// entries (FTPALG_CHECK_ENTRIES, default 50,000; the table holds at most nf_conntrack_max)
// beside three live connections that carry the kernel ftp helper (IPv4 and IPv6 to port 21,
// and IPv4 to a port-forward 2121 → 21), then checks that the startup check finds exactly those
// and that its Go heap cost does not grow with the table: the kernel's filter keeps the
// unrelated entries in the kernel, and the plain dump (the fallback) streams them through one
// buffer. The cost of the library dump the check used before is measured beside it.
func TestLiveFTPHelperFlowsStreams(t *testing.T) {
	l := newLab(t)
	n := 50000
	if s := os.Getenv("FTPALG_CHECK_ENTRIES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("FTPALG_CHECK_ENTRIES=%q: %v", s, err)
		}
		n = v
	}
	l.nft(`flush ruleset
table inet fw {
	ct helper ftph { type "ftp" protocol tcp; }
	chain out { type filter hook output priority filter; tcp dport 21 ct helper set "ftph"; }
	chain nat_out {
		type nat hook output priority -100; policy accept;
		meta nfproto ipv4 tcp dport 2121 dnat ip to 127.0.0.1:21
	}
}`)
	live := []Tuple{l.master(lo4, 21), l.master(lo6, 21)}
	fwd, _ := l.connect(l.listeners[netip.AddrPortFrom(lo4, 21)], netip.AddrPortFrom(lo4, 2121))
	live = append(live, unmapTuple(fwd))
	l.nft("delete table inet fw")
	for _, tu := range live {
		f, err := l.c.ct.Get(ct.Flow{TupleOrig: ctTuple(tu)})
		if err != nil || f.Helper.Name != "ftp" {
			t.Fatalf("setup: flow %s: helper %q, %v; want ftp", tu, f.Helper.Name, err)
		}
	}

	start := time.Now()
	created, on21 := fillConntrack(t, l.c, n)
	t.Logf("created %d unrelated entries (%d of them TCP to port 21 without a helper) in %v",
		created, on21, time.Since(start).Round(time.Millisecond))
	// What the filtered dumps may return: the TCP entries on port 21, each at most twice (its
	// original destination and its reply source port are both 21).
	maxFiltered := 2 * (on21 + len(live))

	d, err := openCTDump()
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for _, tc := range []struct {
		name      string
		ports     []uint16
		useFilter bool
		want      int
		first     Tuple
	}{
		{name: "filtered port 21", ports: []uint16{21}, useFilter: true, want: 3, first: live[0]},
		{name: "filtered port 2121", ports: []uint16{2121}, useFilter: true, want: 1, first: live[2]},
		{name: "filtered both ports", ports: []uint16{2121, 21}, useFilter: true, want: 3},
		{name: "filtered other port", ports: []uint16{990}, useFilter: true, want: 0},
		{name: "plain dump port 21", ports: []uint16{21}, want: 3},
		{name: "plain dump both ports", ports: []uint16{2121, 21}, want: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m ftpHelperMatches
			var st ctDumpStats
			var err error
			alloc, heap := heapCost(func() { st, err = d.scanFTPHelper(tc.ports, &m, tc.useFilter) })
			if err != nil {
				t.Fatalf("scan: %v", err)
			}
			t.Logf("%d dumps, %d entries received, filtered %v, %d retried: allocated %d B, heap grew %d B",
				st.dumps, st.entries, st.filtered, st.retried, alloc, heap)
			if m.n != tc.want {
				t.Errorf("found %d entries with helper ftp, want %d", m.n, tc.want)
			}
			if tc.first.IsValid() {
				if diff := cmp.Diff(tc.first, m.first, equateNetip); diff != "" {
					t.Errorf("first match (-want +got):\n%s", diff)
				}
			}
			if st.filtered != tc.useFilter {
				t.Errorf("filtered = %v, want %v (does this kernel refuse CTA_FILTER on dumps?)", st.filtered, tc.useFilter)
			}
			switch {
			case tc.useFilter && st.entries > maxFiltered:
				t.Errorf("the kernel's filter let %d entries through, want at most %d (the TCP ones on port 21)", st.entries, maxFiltered)
			case !tc.useFilter && st.entries < created:
				t.Errorf("the plain dump returned %d entries, want at least %d", st.entries, created)
			}
			if alloc > 1<<20 {
				t.Errorf("the check allocated %d bytes for a table of %d entries, want < 1 MiB (it must not grow with the table)", alloc, created)
			}
		})
	}

	// A request the kernel refuses (an unknown filter flag: EINVAL from the attribute policy on
	// this kernel, EOPNOTSUPP from older ones) is an error that names the errno,
	// and the socket goes on serving the next dump.
	t.Run("kernel error", func(t *testing.T) {
		var flags [4]byte
		binary.NativeEndian.PutUint32(flags[:], 1<<31)
		bad := appendAttr(nil, dumpCTAFilter|nlaFNested, appendAttr(nil, dumpCTAFilterOrigFlags, flags[:]))
		var st ctDumpStats
		if _, err := d.dump(unix.AF_INET, bad, &st, func(*ctDumpEntry) {}); !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("dump with an unknown filter flag: %v, want EINVAL or EOPNOTSUPP", err)
		}
		var m ftpHelperMatches
		if _, err := d.scanFTPHelper([]uint16{21}, &m, true); err != nil || m.n != 3 {
			t.Errorf("next scan: %d found, %v; want 3", m.n, err)
		}
	})

	// The public check names them, from a fresh socket like a starting ftpalg.
	err = CheckKernelFTPHelper([]uint16{21})
	if !errors.Is(err, ErrKernelFTPHelper) || !strings.Contains(err.Error(), `3 live connection(s) with helper "ftp" (first `+live[0].String()) {
		t.Errorf("CheckKernelFTPHelper: %v, want ErrKernelFTPHelper naming 3 live connections, first %s", err, live[0])
	}

	// What the library dump held: every entry decoded at once.
	var flows []ct.Flow
	alloc, heap := heapCost(func() { flows, err = l.c.ct.Dump(nil) })
	if err != nil {
		t.Fatalf("library dump: %v", err)
	}
	t.Logf("for comparison, ti-mo/conntrack Dump of %d entries: allocated %d B, heap grew %d B", len(flows), alloc, heap)
	runtime.KeepAlive(flows)
}

// heapCost runs fn and returns the bytes it allocated (garbage included) and how much the live
// heap grew over it.
func heapCost(fn func()) (alloc, grew int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return int64(after.TotalAlloc - before.TotalAlloc), int64(after.HeapAlloc) - int64(before.HeapAlloc)
}

// fillConntrack creates up to n unrelated entries through ctnetlink: UDP and TCP flows between
// documentation addresses to ports other than the control ports, plus a few TCP ones to port
// 21 without a helper (on21 of them). It stops early, saying so, when the table is full.
func fillConntrack(t *testing.T, c *Conn, n int) (created, on21 int) {
	t.Helper()
	src4 := netip.MustParseAddr("198.51.100.7")
	for i := range n {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], 0xc0000200|uint32(i)&0xff) // 192.0.2.x
		dst := netip.AddrFrom4(a)
		proto, dport := uint8(unix.IPPROTO_UDP), uint16(53)
		switch {
		case i%5 == 0:
			proto, dport = unix.IPPROTO_TCP, 443
		case i%5000 == 1:
			proto, dport = unix.IPPROTO_TCP, 21
			on21++
		}
		sport := uint16(1024 + i%60000)
		f := ct.NewFlow(proto, 0, src4, dst, sport, dport, 600, 0)
		// Vary the source address beyond 60,000 so that tuples stay unique.
		if i >= 60000 {
			binary.BigEndian.PutUint32(a[:], 0xcb007100|uint32(i/60000)) // 203.0.113.x
			f.TupleOrig.IP.SourceAddress = netip.AddrFrom4(a)
			f.TupleReply.IP.DestinationAddress = netip.AddrFrom4(a)
		}
		if err := c.ct.Create(f); err != nil {
			if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.ENOSPC) {
				t.Logf("conntrack table full after %d entries: %v", i, err)
				if dport == 21 {
					on21--
				}
				return i, on21
			}
			t.Fatalf("create entry %d: %v", i, err)
		}
	}
	return n, on21
}

// FuzzDecodeCTDumpEntry: the dump decoder never panics and never reads a tuple it was not given.
func FuzzDecodeCTDumpEntry(f *testing.F) {
	proto := appendAttr(nil, ctaProtoNum, []byte{unix.IPPROTO_TCP})
	proto = appendAttr(proto, ctaProtoSrc, []byte{0x9c, 0x40})
	proto = appendAttr(proto, ctaProtoDst, []byte{0, 21})
	ip := appendAttr(nil, ctaIPv4Src, []byte{192, 0, 2, 5})
	ip = appendAttr(ip, ctaIPv4Dst, []byte{198, 51, 100, 20})
	tuple := appendAttr(appendAttr(nil, ctaTupleIP|nlaFNested, ip), ctaTupleProto|nlaFNested, proto)
	msg := append([]byte{unix.AF_INET, 0, 0, 0}, appendAttr(nil, dumpCTATupleOrig|nlaFNested, tuple)...)
	msg = appendAttr(msg, dumpCTAHelp|nlaFNested, appendAttr(nil, dumpCTAHelpName, []byte("ftp\x00")))
	f.Add(msg)
	f.Add(msg[:len(msg)-3])
	f.Add([]byte{unix.AF_INET6, 0, 0, 0, 4, 0, 1, 0})
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < nfgenmsgLen {
			return
		}
		var e ctDumpEntry
		decodeCTDumpEntry(&e, b)
		if !e.hasOrig && (e.orig.Src.Addr().IsValid() && e.orig.Dst.Addr().IsValid()) {
			t.Errorf("hasOrig false with a valid tuple %s", e.orig)
		}
	})
	var e ctDumpEntry
	decodeCTDumpEntry(&e, msg)
	want := Tuple{Src: netip.MustParseAddrPort("192.0.2.5:40000"), Dst: netip.MustParseAddrPort("198.51.100.20:21")}
	if !e.hasOrig || e.orig != want || e.proto != unix.IPPROTO_TCP || string(e.helper) != "ftp" {
		f.Errorf("decoded %+v, want orig %s tcp helper ftp", e, want)
	}
}
