package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	// equateNetip compares netip values by ==.
	equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{})
	// ignoreTimeout compares expectations without their remaining time.
	ignoreTimeout = cmp.Options{equateNetip, cmpopts.IgnoreFields(Expectation{}, "Timeout")}
)

func TestLookup(t *testing.T) {
	for _, tc := range []struct {
		name string
		ip   netip.Addr
		dnat bool // dial the port-forward 2121, which DNATs to 21
	}{
		{name: "ipv4 original", ip: lo4},
		{name: "ipv6 original", ip: lo6},
		{name: "ipv4 port-forward reverse", ip: lo4, dnat: true},
		{name: "ipv6 port-forward reverse", ip: lo6, dnat: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			ln := l.listen(netip.AddrPortFrom(tc.ip, 21))
			dport := uint16(21)
			if tc.dnat {
				dport = 2121
			}
			orig, _ := l.connect(ln, netip.AddrPortFrom(tc.ip, dport))
			// What the queue point sees of a client→server packet: after DNAT.
			seen := Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(tc.ip, 21)}
			got, err := l.c.Lookup(seen)
			if err != nil {
				t.Fatalf("Lookup(%s): %v", seen, err)
			}
			want := Flow{
				ID:     got.ID,
				Orig:   Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(tc.ip, dport)},
				Reply:  Tuple{Src: netip.AddrPortFrom(tc.ip, 21), Dst: orig.Src},
				Helper: CarrierHelper,
			}
			if diff := cmp.Diff(want, got, equateNetip); diff != "" {
				t.Errorf("Lookup(%s) (-want +got):\n%s", seen, diff)
			}
			if got.ID == 0 {
				t.Errorf("Lookup(%s): zero ID", seen)
			}
		})
	}
}

// TestLookupHairpin: DNAT and SNAT on one connection (NAT loopback): the queue point sees the
// client's source and the inside server; Discover finds the entry by its two sources.
func TestLookupHairpin(t *testing.T) {
	l := newLab(t)
	ln := l.listen(netip.AddrPortFrom(lo4, 21))
	orig, _ := l.connect(ln, netip.AddrPortFrom(lo4, 2123))
	seen := Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(lo4, 21)}
	if _, err := l.c.Lookup(seen); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(%s) = %v: a hash look-up cannot find a hairpin entry", seen, err)
	}
	fs, err := l.c.Discover(seen)
	if err != nil || len(fs) != 1 {
		t.Fatalf("Discover(%s) = %+v, %v", seen, fs, err)
	}
	got := fs[0]
	if got.Orig != unmapTuple(orig) || got.Reply.Src != seen.Dst || got.Reply.Dst.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("Lookup(%s) = %+v, want orig %s, reply from %s to 127.0.0.2", seen, got, orig, seen.Dst)
	}
	// A connection with the same client port to another server is not it.
	other := Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(lo4, 22)}
	if _, err := l.c.Discover(other); !errors.Is(err, ErrNotFound) {
		t.Errorf("Discover(%s) = %v, want ErrNotFound", other, err)
	}
}

// TestZones: a control connection in zone 5 is found in its zone (not in zone 0), discovered
// across zones, and gets its pinhole and its sequence adjustment in its zone.
func TestZones(t *testing.T) {
	l := newLab(t)
	ln := l.listen(netip.AddrPortFrom(lo4, 2125))
	orig, _ := l.connect(ln, netip.AddrPortFrom(lo4, 2125))
	if _, err := l.c.Lookup(orig); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup in zone 0 = %v, want ErrNotFound", err)
	}
	f, err := l.c.LookupIn(orig, 5)
	if err != nil || f.Zone != 5 {
		t.Fatalf("LookupIn(zone 5) = %+v, %v", f, err)
	}
	if f.Helper != CarrierHelper {
		t.Fatalf("helper %q", f.Helper)
	}
	fs, err := l.c.Discover(orig)
	if err != nil || len(fs) != 1 || fs[0].Zone != 5 || fs[0].Orig != orig {
		t.Fatalf("Discover = %+v, %v; want the zone-5 entry", fs, err)
	}
	e := Expectation{Zone: 5, Master: f.Orig, Src: lo4, Dst: netip.AddrPortFrom(lo4, l.freePort(lo4)), Timeout: 30 * time.Second}
	if err := l.c.CreateExpect(e); err != nil {
		t.Fatalf("CreateExpect in zone 5: %v", err)
	}
	// The kernel's expectation dump does not report the zone; deleting shows it is there.
	if got := l.listExpect(); len(got) != 1 {
		t.Errorf("expectations = %+v, want one", got)
	}
	wrong := e
	wrong.Zone = 0
	if err := l.c.DeleteExpect(wrong); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteExpect in zone 0 = %v, want ErrNotFound (it is in zone 5)", err)
	}
	if err := l.c.DeleteExpect(e); err != nil {
		t.Errorf("DeleteExpect in zone 5: %v", err)
	}
	if got := l.listExpect(); len(got) != 0 {
		t.Errorf("expectations after delete = %+v", got)
	}
}

func TestLookupNotFound(t *testing.T) {
	l := newLab(t)
	seen := Tuple{Src: netip.MustParseAddrPort("127.0.0.1:1"), Dst: netip.MustParseAddrPort("127.0.0.1:21")}
	_, err := l.c.Lookup(seen)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup(%s) = %v, want ErrNotFound", seen, err)
	}
	if !strings.Contains(err.Error(), seen.String()) {
		t.Errorf("error %q does not name the tuple %s", err, seen)
	}
}

func TestSetSeqAdj(t *testing.T) {
	// The carrier attached before the DNAT (2122) or after it (2121): either way the entry has
	// the extension (nft's ct helper statement adds it to an entry that is NATed already).
	for _, tc := range []struct {
		ip   netip.Addr
		port uint16
	}{{lo4, 2122}, {lo6, 2122}, {lo4, 2121}, {lo6, 2121}} {
		t.Run(fmt.Sprintf("%s port %d", tc.ip, tc.port), func(t *testing.T) {
			ip := tc.ip
			l := newLab(t)
			ln := l.listen(netip.AddrPortFrom(ip, 21))
			orig, _ := l.connect(ln, netip.AddrPortFrom(ip, tc.port))
			f, err := l.c.Lookup(Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(ip, 21)})
			if err != nil {
				t.Fatal(err)
			}
			if f.Adjusting {
				t.Fatalf("adjusting before any SetSeqAdj: %+v", f.SeqAdj)
			}
			// The first resize of a stream: Before is 0 (the case ti-mo/conntrack drops).
			first := SeqAdj{}.Next(1000, 3)
			if diff := cmp.Diff(SeqAdj{Pos: 1000, Before: 0, After: 3}, first); diff != "" {
				t.Fatalf("Next (-want +got):\n%s", diff)
			}
			if err := l.c.SetSeqAdj(f, Original, first, true); err != nil {
				t.Fatalf("SetSeqAdj(original, %+v): %v", first, err)
			}
			second := first.Next(2000, -5)
			if err := l.c.SetSeqAdj(f, Reply, second, true); err != nil {
				t.Fatalf("SetSeqAdj(reply, %+v): %v", second, err)
			}
			got, err := l.c.Lookup(Tuple{Src: orig.Src, Dst: netip.AddrPortFrom(ip, 21)})
			if err != nil {
				t.Fatal(err)
			}
			if !got.Adjusting {
				t.Fatal("Lookup after SetSeqAdj: not adjusting")
			}
			if diff := cmp.Diff([2]SeqAdj{first, {Pos: 2000, Before: 3, After: -2}}, got.SeqAdj); diff != "" {
				t.Errorf("Lookup's SeqAdj (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("no extension", func(t *testing.T) {
		// A carrier and no NAT at all: the kernel accepts the update and keeps nothing;
		// SetSeqAdj must say so.
		l := newLab(t)
		m := l.master(lo4, 21)
		f, err := l.c.Lookup(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.c.SetSeqAdj(f, Original, SeqAdj{Pos: 1, After: 3}, true); !errors.Is(err, ErrNoSeqAdj) {
			t.Errorf("SetSeqAdj = %v, want ErrNoSeqAdj", err)
		}
		// Unverified, the same update reports nothing: the caller must verify once.
		if err := l.c.SetSeqAdj(f, Original, SeqAdj{Pos: 1, After: 3}, false); err != nil {
			t.Errorf("SetSeqAdj unverified = %v", err)
		}
	})
	t.Run("gone", func(t *testing.T) {
		l := newLab(t)
		gone := Flow{Orig: Tuple{Src: netip.MustParseAddrPort("127.0.0.1:1"), Dst: netip.MustParseAddrPort("127.0.0.1:21")}}
		if err := l.c.SetSeqAdj(gone, Original, SeqAdj{Pos: 1, After: 3}, true); !errors.Is(err, ErrNotFound) {
			t.Errorf("SetSeqAdj(gone) = %v, want ErrNotFound", err)
		}
	})
}

func TestSeqAdjOffsets(t *testing.T) {
	a := SeqAdj{Pos: 0xfffffff0, Before: 3, After: 5}
	for _, tc := range []struct {
		v        uint32
		seq, ack int32
	}{
		{0xffffff00, 3, 3}, {0xfffffff0, 3, 3}, {0xfffffff1, 5, 3}, {0xfffffff3, 5, 3}, {0xfffffff4, 5, 5}, {0x10, 5, 5},
	} {
		if got := a.SeqOffset(tc.v); got != tc.seq {
			t.Errorf("SeqOffset(%#x) = %d, want %d", tc.v, got, tc.seq)
		}
		if got := a.AckOffset(tc.v); got != tc.ack {
			t.Errorf("AckOffset(%#x) = %d, want %d", tc.v, got, tc.ack)
		}
	}
}

func TestSeqAdjNext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cur   SeqAdj
		seq   uint32
		delta int32
		want  SeqAdj
	}{
		{"first", SeqAdj{}, 100, 3, SeqAdj{100, 0, 3}},
		{"zero delta", SeqAdj{100, 0, 3}, 200, 0, SeqAdj{100, 0, 3}},
		{"later segment", SeqAdj{100, 0, 3}, 200, 2, SeqAdj{200, 3, 5}},
		{"same segment", SeqAdj{100, 0, 3}, 100, 2, SeqAdj{100, 0, 5}},
		{"older segment keeps the point", SeqAdj{200, 3, 5}, 100, -1, SeqAdj{200, 3, 4}},
		{"wraps", SeqAdj{0xfffffff0, 0, 3}, 0x10, -5, SeqAdj{0x10, 3, -2}},
		{"shrink then grow back to zero", SeqAdj{100, 0, -5}, 200, 5, SeqAdj{200, -5, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cur.Next(tc.seq, tc.delta); got != tc.want {
				t.Errorf("%+v.Next(%d, %d) = %+v, want %+v", tc.cur, tc.seq, tc.delta, got, tc.want)
			}
		})
	}
}

// TestExpectRelated is the proof that matters: a connection from Src to Dst becomes RELATED to
// the master (its conntrack entry has the master set), and with NAT it lands on NATTo.
func TestExpectRelated(t *testing.T) {
	for _, tc := range []struct {
		name string
		ip   netip.Addr
		nat  bool
	}{
		{name: "ipv4", ip: lo4},
		{name: "ipv6", ip: lo6},
		{name: "ipv4 nat", ip: lo4, nat: true},
		{name: "ipv6 nat", ip: lo6, nat: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			m := l.master(tc.ip, 21)
			lnData := l.listen(netip.AddrPortFrom(tc.ip, 0))
			landing := lnData.Addr().(*net.TCPAddr).AddrPort()
			landing = netip.AddrPortFrom(landing.Addr().Unmap(), landing.Port())
			e := Expectation{Master: m, Src: tc.ip, Dst: landing, Timeout: 30 * time.Second}
			if tc.nat {
				// As for a PORT command seen in the original direction: the announced endpoint
				// is landing; the peer is told another port, where nothing listens.
				e.Dst = netip.AddrPortFrom(tc.ip, l.freePort(tc.ip))
				e.NAT, e.NATDir, e.NATTo = true, Reply, landing
			}
			if err := l.c.CreateExpect(e); err != nil {
				t.Fatalf("CreateExpect(%s): %v", e, err)
			}
			if diff := cmp.Diff([]Expectation{e}, l.listExpect(), ignoreTimeout); diff != "" {
				t.Errorf("ListExpect (-want +got):\n%s", diff)
			}
			// conntrack-tools as an independent reader of the expectation table.
			fam := "ipv4"
			if tc.ip.Is6() {
				fam = "ipv6"
			}
			out := l.run("", "conntrack", "-L", "expect", "-f", fam)
			if !strings.Contains(out, "dport="+strconv.Itoa(int(e.Dst.Port()))) {
				t.Errorf("conntrack -L expect does not show dport %d:\n%s", e.Dst.Port(), out)
			}

			data, conn := l.connect(lnData, e.Dst) // fails unless NAT sends it to landing
			if got := conn.RemoteAddr().(*net.TCPAddr).AddrPort().Port(); got != e.Dst.Port() {
				t.Errorf("client sees remote port %d, want %d", got, e.Dst.Port())
			}
			f, err := l.c.Lookup(unmapTuple(data))
			if err != nil {
				t.Fatalf("Lookup data %s: %v", data, err)
			}
			if f.Master == nil || *f.Master != m {
				t.Errorf("data connection master = %v, want %s", f.Master, m)
			}
			if tc.nat {
				if f.Reply.Src != landing {
					t.Errorf("data connection reply source = %s, want NATTo %s", f.Reply.Src, landing)
				}
			}
			if got := l.listExpect(); len(got) != 0 {
				t.Errorf("expectation not consumed: %v", got)
			}
		})
	}
}

func TestCreateExpectErrors(t *testing.T) {
	l := newLab(t)
	m1 := l.master(lo4, 21)
	m2 := l.master(lo4, 21)
	noHelper := l.master(lo4, 2100)
	gone := Tuple{Src: netip.MustParseAddrPort("127.0.0.1:1"), Dst: netip.MustParseAddrPort("127.0.0.1:21")}
	dst := netip.AddrPortFrom(lo4, l.freePort(lo4))
	first := Expectation{Master: m1, Src: lo4, Dst: dst}
	if err := l.c.CreateExpect(first); err != nil {
		t.Fatalf("CreateExpect(%s): %v", first, err)
	}
	for _, tc := range []struct {
		name string
		e    Expectation
		want error
	}{
		{name: "same tuple same master", e: first, want: ErrExist},
		{name: "same tuple other master", e: Expectation{Master: m2, Src: lo4, Dst: dst}, want: ErrExist},
		{name: "master without helper", e: Expectation{Master: noHelper, Src: lo4, Dst: netip.AddrPortFrom(lo4, 40000)}, want: ErrNoHelper},
		{name: "master gone", e: Expectation{Master: gone, Src: lo4, Dst: netip.AddrPortFrom(lo4, 40001)}, want: ErrNotFound},
		{name: "invalid", e: Expectation{Master: m1, Src: lo6, Dst: netip.AddrPortFrom(lo4, 40002)}, want: errBadExpectation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := l.c.CreateExpect(tc.e)
			t.Logf("CreateExpect: %v", got)
			if err := errIs(got, tc.want); err != nil {
				t.Errorf("CreateExpect(%s): %v", tc.e, err)
			}
		})
	}
	if diff := cmp.Diff([]Expectation{first}, l.listExpect(), ignoreTimeout); diff != "" {
		t.Errorf("ListExpect after failed creations (-want +got):\n%s", diff)
	}
}

// TestExpectSecondOnMaster measures what a second expectation on the same master does: the
// carrier's policy allows one, and the kernel evicts the older one.
func TestExpectSecondOnMaster(t *testing.T) {
	l := newLab(t)
	m := l.master(lo4, 21)
	a := Expectation{Master: m, Src: lo4, Dst: netip.AddrPortFrom(lo4, l.freePort(lo4))}
	b := Expectation{Master: m, Src: lo4, Dst: netip.AddrPortFrom(lo4, l.freePort(lo4))}
	if err := l.c.CreateExpect(a); err != nil {
		t.Fatal(err)
	}
	if err := l.c.CreateExpect(b); err != nil {
		t.Fatalf("second CreateExpect on one master: %v", err)
	}
	if diff := cmp.Diff([]Expectation{b}, l.listExpect(), ignoreTimeout); diff != "" {
		t.Errorf("ListExpect (-want +got):\n%s", diff)
	}
}

// TestExpectTimeout measures the timeout the kernel gives an expectation: the carrier's
// policy, whatever is asked.
func TestExpectTimeout(t *testing.T) {
	for _, asked := range []time.Duration{0, 5 * time.Second, time.Hour} {
		t.Run(asked.String(), func(t *testing.T) {
			l := newLab(t)
			m := l.master(lo4, 21)
			e := Expectation{Master: m, Src: lo4, Dst: netip.AddrPortFrom(lo4, l.freePort(lo4)), Timeout: asked}
			if err := l.c.CreateExpect(e); err != nil {
				t.Fatal(err)
			}
			got := l.listExpect()
			if len(got) != 1 {
				t.Fatalf("ListExpect = %v, want 1 expectation", got)
			}
			t.Logf("asked %v, kernel gives %v", asked, got[0].Timeout)
			if got[0].Timeout < 295*time.Second || got[0].Timeout > 300*time.Second {
				t.Errorf("timeout %v, want the carrier policy (300s)", got[0].Timeout)
			}
		})
	}
}

func TestDeleteExpect(t *testing.T) {
	for _, ip := range []netip.Addr{lo4, lo6} {
		t.Run(ip.String(), func(t *testing.T) {
			l := newLab(t)
			m1 := l.master(ip, 21)
			m2 := l.master(ip, 21)
			e := Expectation{Master: m1, Src: ip, Dst: netip.AddrPortFrom(ip, l.freePort(ip))}
			if err := l.c.CreateExpect(e); err != nil {
				t.Fatal(err)
			}
			other := e
			other.Master = m2
			if err := l.c.DeleteExpect(other); !errors.Is(err, ErrNotFound) {
				t.Errorf("DeleteExpect with another master = %v, want ErrNotFound", err)
			}
			if got := l.listExpect(); len(got) != 1 {
				t.Fatalf("expectation deleted through another master: %v", got)
			}
			if err := l.c.DeleteExpect(e); err != nil {
				t.Fatalf("DeleteExpect: %v", err)
			}
			if got := l.listExpect(); len(got) != 0 {
				t.Errorf("ListExpect after delete = %v", got)
			}
			if err := l.c.DeleteExpect(e); !errors.Is(err, ErrNotFound) {
				t.Errorf("second DeleteExpect = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestListen(t *testing.T) {
	l := newLab(t)
	lis, err := l.c.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan Event, 64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lis.Run(ctx, func(ev Event) { events <- ev }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// wait returns the first event of kind k that match accepts, in any order of arrival
	// (the kernel reports a used expectation's removal before the new connection).
	var seen []Event
	wait := func(k EventKind, match func(Event) bool) Event {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for i := 0; ; i++ {
			for i >= len(seen) {
				select {
				case ev := <-events:
					seen = append(seen, ev)
				case <-timeout:
					t.Fatalf("no %s event; got %v", k, seen)
				}
			}
			if seen[i].Kind == k && match(seen[i]) {
				return seen[i]
			}
		}
	}

	m := l.master(lo4, 21)
	lnData := l.listen(netip.AddrPortFrom(lo4, 0))
	e := Expectation{Master: m, Src: lo4, Dst: lnData.Addr().(*net.TCPAddr).AddrPort()}
	if err := l.c.CreateExpect(e); err != nil {
		t.Fatal(err)
	}
	got := wait(ExpectNew, func(Event) bool { return true })
	if diff := cmp.Diff(e, got.Expect, ignoreTimeout); diff != "" {
		t.Errorf("ExpectNew (-want +got):\n%s", diff)
	}

	data, _ := l.connect(lnData, e.Dst)
	got = wait(FlowNew, func(ev Event) bool { return ev.Flow.Orig == data })
	if got.Flow.Master == nil || *got.Flow.Master != m {
		t.Errorf("FlowNew master = %v, want %s", got.Flow.Master, m)
	}
	got = wait(ExpectDestroy, func(Event) bool { return true })
	if diff := cmp.Diff(e, got.Expect, ignoreTimeout); diff != "" {
		t.Errorf("ExpectDestroy (-want +got):\n%s", diff)
	}

	l.run("", "conntrack", "-D", "-p", "tcp", "--orig-port-src", strconv.Itoa(int(data.Src.Port())))
	got = wait(FlowDestroy, func(ev Event) bool { return ev.Flow.Orig == data })
	if diff := cmp.Diff(data, got.Flow.Orig, equateNetip); diff != "" {
		t.Errorf("FlowDestroy (-want +got):\n%s", diff)
	}
}

func TestListenStops(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.c.Listen(ctx, func(Event) {}); err != nil {
		t.Errorf("Listen = %v, want nil when its context ends", err)
	}
}

func BenchmarkCreateExpect(b *testing.B) {
	l := newLab(b)
	m := l.master(lo4, 21)
	e := Expectation{Master: m, Src: lo4, Dst: netip.AddrPortFrom(lo4, 0)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		// A new port each time: each creation evicts the previous one (one per master).
		e.Dst = netip.AddrPortFrom(lo4, uint16(20000+i%20000))
		i++
		if err := l.c.CreateExpect(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCreateDeleteExpect(b *testing.B) {
	l := newLab(b)
	m := l.master(lo4, 21)
	e := Expectation{Master: m, Src: lo4, Dst: netip.AddrPortFrom(lo4, 20000)}
	b.ReportAllocs()
	for b.Loop() {
		if err := l.c.CreateExpect(e); err != nil {
			b.Fatal(err)
		}
		if err := l.c.DeleteExpect(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	l := newLab(b)
	m := l.master(lo4, 21)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := l.c.Lookup(m); err != nil {
			b.Fatal(err)
		}
	}
}
