package conntrack

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

var captureEvents = flag.Bool("capture-events", false, "capture ctnetlink event messages from the running kernel into testdata/events")

// rawEventSocket is a ctnetlink event socket opened with plain syscalls, independent of the
// netlink libraries, so that the captured bytes are exactly what the kernel queued.
type rawEventSocket struct{ fd int }

func openRawEventSocket(t testing.TB, groups ...uint32) *rawEventSocket {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("netlink socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatalf("bind netlink: %v", err)
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			t.Fatalf("join group %d: %v", g, err)
		}
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatalf("rcvtimeo: %v", err)
	}
	return &rawEventSocket{fd: fd}
}

// drain returns every datagram queued until the socket stays empty for 200 ms.
func (s *rawEventSocket) drain(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EWOULDBLOCK {
			return out
		}
		if err != nil {
			t.Fatalf("recvfrom: %v", err)
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// pick returns the one datagram whose decoded event is of type typ and whose original tuple
// matches orig (ports and addresses).
func pick(t testing.TB, msgs [][]byte, destroy bool, orig Tuple) []byte {
	t.Helper()
	var found [][]byte
	for _, b := range msgs {
		var m netlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatalf("unmarshal netlink message: %v", err)
		}
		var ev ct.Event
		if err := ev.Unmarshal(m); err != nil || (ev.Type == ct.EventDestroy) != destroy || ev.Flow == nil {
			continue
		}
		got := Tuple{
			Src: netip.AddrPortFrom(ev.Flow.TupleOrig.IP.SourceAddress, ev.Flow.TupleOrig.Proto.SourcePort),
			Dst: netip.AddrPortFrom(ev.Flow.TupleOrig.IP.DestinationAddress, ev.Flow.TupleOrig.Proto.DestinationPort),
		}
		if got.unmap() == orig.unmap() {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d events (destroy %v) of %s among %d messages, want 1", len(found), destroy, orig, len(msgs))
	}
	return found[0]
}

// TestCaptureEvents records the event messages the unit tests of the filter replay. It runs
// only with -capture-events (as root): go test ./conntrack -run TestCaptureEvents -capture-events
func TestCaptureEvents(t *testing.T) {
	if !*captureEvents {
		t.Skip("run with -capture-events to record testdata/events from this kernel")
	}
	for _, fam := range []struct {
		name string
		ip   netip.Addr
	}{{"ipv4", lo4}, {"ipv6", lo6}} {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t)
			// A carrier on a port that is not a control port, and a port-forward to 21.
			l.nft(`add rule inet ftpalg_lab out tcp dport 990 ct helper set "sane"`)
			s := openRawEventSocket(t, 1, 3) // NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY
			uname := kernelRelease(t)
			save := func(name, what string, b []byte) {
				t.Helper()
				path := filepath.Join("testdata", "events", fam.name+"_"+name+".hex")
				text := fmt.Sprintf("# %s\n# captured from Linux %s by TestCaptureEvents\n%s\n", what, uname, hex.EncodeToString(b))
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}

			m := l.master(fam.ip, 21)
			plain := l.master(fam.ip, 80)
			carrier := l.master(fam.ip, 990)
			fwd, _ := l.connect(l.listeners[netip.AddrPortFrom(fam.ip, 21)], netip.AddrPortFrom(fam.ip, 2121))
			fwd = fwd.unmap()
			lnData := l.listen(netip.AddrPortFrom(fam.ip, 0))
			e := Expectation{Master: m, Src: fam.ip, Dst: netip.AddrPortFrom(fam.ip, portOf(lnData.Addr().String()))}
			if err := l.c.CreateExpect(e); err != nil {
				t.Fatal(err)
			}
			data, _ := l.connect(lnData, e.Dst)
			data = data.unmap()
			news := s.drain(t)
			save("new_master", "NEW of a data connection that used an expectation (CTA_TUPLE_MASTER present)", pick(t, news, false, data))
			save("new_nomaster", "NEW of a control connection to port 21 (carrier helper, no master)", pick(t, news, false, m))
			save("new_plain", "NEW of an unrelated connection to port 80", pick(t, news, false, plain))

			for _, tu := range []Tuple{m, plain, carrier, fwd, data} {
				l.run("", "conntrack", "-D", "-p", "tcp", "--orig-port-src", strconv.Itoa(int(tu.Src.Port())), "--orig-port-dst", strconv.Itoa(int(tu.Dst.Port())))
			}
			dels := s.drain(t)
			save("destroy_21", "DESTROY of a control connection to port 21 (carrier helper)", pick(t, dels, true, m))
			save("destroy_80", "DESTROY of an unrelated connection to port 80", pick(t, dels, true, plain))
			save("destroy_carrier990", "DESTROY of a connection to port 990 carrying the carrier helper", pick(t, dels, true, carrier))
			save("destroy_fwd2121", "DESTROY of a connection to port 2121 DNATed to 21 (reply source port 21)", pick(t, dels, true, fwd))
			save("destroy_data", "DESTROY of a data connection (it had a master)", pick(t, dels, true, data))
		})
	}
}

func portOf(hostport string) uint16 {
	i := strings.LastIndexByte(hostport, ':')
	p, _ := strconv.Atoi(hostport[i+1:])
	return uint16(p)
}

func kernelRelease(t testing.TB) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// runListener runs lis until the test ends and delivers its events on the returned channel.
func runListener(t testing.TB, lis *Listener) <-chan Event {
	t.Helper()
	events := make(chan Event, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- lis.Run(ctx, func(ev Event) {
			select {
			case events <- ev:
			default:
				t.Errorf("test event channel full, %s dropped", ev.Kind)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return events
}

// unrelated opens n TCP connections to port (a listener is opened) and closes them at once;
// their conntrack entries stay until flushed. Nothing about them is any business of ftpalg.
func (l *lab) unrelated(ip netip.Addr, port uint16, n int) {
	l.t.Helper()
	l.mustBeInside()
	addr := netip.AddrPortFrom(ip, port)
	ln, ok := l.listeners[addr]
	if !ok {
		ln = l.listen(addr)
		l.listeners[addr] = ln
	}
	for range n {
		c, err := net.DialTimeout("tcp", addr.String(), 3*time.Second)
		if err != nil {
			l.t.Fatalf("dial %s: %v", addr, err)
		}
		c.Close()
	}
}

// flush destroys every conntrack entry of the lab: a DESTROY event each.
func (l *lab) flush() {
	l.t.Helper()
	l.mustBeInside()
	l.run("", "conntrack", "-F")
}

// mustBeInside stops the test unless the calling thread is in the lab's namespace: a lab
// helper called from another goroutine (a subtest of the test that made the lab) would dial
// and flush conntrack in the host's namespace.
func (l *lab) mustBeInside() {
	l.t.Helper()
	inside, err := sameNetNS(l.c.ns)
	if err != nil {
		l.t.Fatal(err)
	}
	if !inside {
		l.t.Fatal("lab helper called outside the lab's network namespace (from another goroutine?)")
	}
}

// settle waits until the listener has read no message for 300 ms and returns its count.
func settle(lis *Listener) uint64 {
	n := lis.Received()
	for {
		time.Sleep(300 * time.Millisecond)
		m := lis.Received()
		if m == n {
			return n
		}
		n = m
	}
}

// TestListenFiltered proves the kernel filter on the real kernel: among a crowd of unrelated
// connections, only the events of control connections and used pinholes reach the socket.
func TestListenFiltered(t *testing.T) {
	l := newLab(t)
	lis, err := l.c.SubscribeFiltered(EventFilter{Ports: []uint16{21}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	events := runListener(t, lis)

	const crowd = 100
	l.unrelated(lo4, 80, crowd)
	m4 := l.master(lo4, 21)
	l.unrelated(lo6, 80, crowd)
	m6 := l.master(lo6, 21)
	fwd, _ := l.connect(l.listeners[netip.AddrPortFrom(lo4, 21)], netip.AddrPortFrom(lo4, 2121))
	fwd = fwd.unmap()
	l.unrelated(lo4, 990, crowd) // not a control port (no carrier here)
	lnData := l.listen(netip.AddrPortFrom(lo6, 0))
	e := Expectation{Master: m6, Src: lo6, Dst: netip.AddrPortFrom(lo6, portOf(lnData.Addr().String()))}
	if err := l.c.CreateExpect(e); err != nil {
		t.Fatal(err)
	}
	data, _ := l.connect(lnData, e.Dst)
	data = data.unmap()
	l.flush()

	// Exactly these, in any order: the pinhole used, the three control connections' ends.
	want := map[string]bool{
		"flow_new " + data.String():    true,
		"flow_destroy " + m4.String():  true,
		"flow_destroy " + m6.String():  true,
		"flow_destroy " + fwd.String(): true,
	}
	n := settle(lis)
	timeout := time.After(time.Second)
	var got []string
	for len(got) < len(want) {
		select {
		case ev := <-events:
			got = append(got, ev.Kind.String()+" "+ev.Flow.Orig.unmap().String())
		case <-timeout:
			t.Fatalf("events %v, want %d", got, len(want))
		}
	}
	select {
	case ev := <-events:
		got = append(got, ev.Kind.String()+" "+ev.Flow.Orig.unmap().String())
	case <-time.After(100 * time.Millisecond):
	}
	for _, g := range got {
		if !want[g] {
			t.Errorf("unwanted event %q", g)
		}
		delete(want, g)
	}
	for w := range want {
		t.Errorf("missing event %q", w)
	}
	// The kernel queued nothing else: 3 × crowd unrelated connections cost no message.
	if n != 4 {
		t.Errorf("listener read %d messages, want 4 (the kernel filter let unwanted events through)", n)
	}
	t.Logf("%d connections, %d events read", 3*crowd+4, n)
}

// TestListenFilteredOverrun checks that an overflow of the socket buffer still reaches the
// listener as EventsLost (ENOBUFS is a socket error, which no filter sees), and that a flood of
// unwanted events, which overflows an unfiltered listener, no longer overflows it.
func TestListenFilteredOverrun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		filter   EventFilter
		port     uint16
		wantLost bool
	}{
		{name: "unfiltered, unrelated flood", port: 80, wantLost: true}, // the control
		{name: "filtered, unrelated flood", filter: EventFilter{Ports: []uint16{21}}, port: 80, wantLost: false},
		{name: "filtered, control flood", filter: EventFilter{Ports: []uint16{21}}, port: 21, wantLost: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A lab per subtest: the lab is bound to the goroutine (thread) that made it.
			l := newLab(t)
			lis, err := l.c.SubscribeFiltered(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			// The kernel rounds 0 up to its minimum: room for a few event messages.
			if err := lis.sock.SetReadBuffer(0); err != nil {
				t.Fatal(err)
			}
			// Nobody reads while 300 connections are made and destroyed.
			l.unrelated(lo4, tc.port, 300)
			l.flush()
			var mu sync.Mutex
			kinds := map[EventKind]int{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- lis.Run(ctx, func(ev Event) { mu.Lock(); kinds[ev.Kind]++; mu.Unlock() })
			}()
			time.Sleep(300 * time.Millisecond)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("events %v, messages read %d", kinds, lis.Received())
			if lost := kinds[EventsLost] > 0; lost != tc.wantLost {
				t.Errorf("EventsLost reported: %v, want %v", lost, tc.wantLost)
			}
			if !tc.filter.isZero() && tc.port == 80 && len(kinds) > 0 {
				t.Errorf("filtered listener delivered unrelated events: %v", kinds)
			}
		})
	}
}

// BenchmarkListenUnrelated counts the event messages that reach the listener's socket for
// 1,000 unrelated connections (new and destroyed), without and with the kernel filter. Each
// iteration makes 1,000 connections; run it with -benchtime=3x.
func BenchmarkListenUnrelated(b *testing.B) {
	for _, bc := range []struct {
		name   string
		filter EventFilter
	}{
		{name: "unfiltered"},
		{name: "filtered", filter: EventFilter{Ports: []uint16{21}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := newLab(b) // in the sub-benchmark's goroutine: the lab is bound to its thread
			lis, err := l.c.SubscribeFiltered(bc.filter)
			if err != nil {
				b.Fatal(err)
			}
			defer lis.Close()
			var delivered int
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- lis.Run(ctx, func(Event) { delivered++ }) }()
			for b.Loop() {
				l.unrelated(lo4, 80, 1000)
				l.flush()
				settle(lis)
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(lis.Received())/float64(b.N), "msgs/op")
			b.ReportMetric(float64(delivered)/float64(b.N), "events/op")
		})
	}
}
