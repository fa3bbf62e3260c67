package conntrack

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The kernel tests run in a fresh, unnamed network namespace per test: the test goroutine locks
// its OS thread, moves it into the new namespace, and creates every socket (ctnetlink, TCP
// listeners and dialers) and every child process (nft, conntrack) from that thread. Only
// loopback exists in it; nothing reaches the root namespace.
//
//	 client 127.0.0.1:X / [::1]:X ──lo──► server :21   (master, carrier helper "sane")
//	 data   127.0.0.1:Y ──lo──► :P (expected)  ──nat-follow-master──► :Q (NATTo)
//
// Skipped only when not root (namespaces and ctnetlink writes need it); CI runs as root.

// labRuleset attaches the carrier to port-21 control connections, leaves port 2100 without a
// helper, port-forwards 2121 to 21 (DNAT, for the reverse lookup), and registers NAT chains on
// every hook so that nat-follow-master can rewrite loopback connections. Port 2122 is
// port-forwarded to 21 too, with the carrier attached BEFORE the DNAT: only such a connection
// has the sequence-adjustment extension (on 2121 the helper comes after NAT). Port 2123 is
// hairpin NAT: DNAT to 21 and SNAT to 127.0.0.2, so neither tuple is what the queue point sees.
// Port 2125 is a control port in conntrack zone 5.
const labRuleset = `
table inet ftpalg_lab {
	ct helper sane {
		type "sane" protocol tcp
	}
	chain out {
		type filter hook output priority filter; policy accept;
		tcp dport { 21, 2125 } ct helper set "sane"
	}
	chain zone_out {
		type filter hook output priority raw; policy accept;
		tcp dport 2125 ct zone set 5
		tcp sport 2125 ct zone set 5
	}
	chain out_early {
		type filter hook output priority -150; policy accept;
		tcp dport 2122 ct helper set "sane"
	}
	chain nat_out {
		type nat hook output priority -100; policy accept;
		meta nfproto ipv4 tcp dport { 2121, 2122, 2123 } dnat ip to 127.0.0.1:21
		meta nfproto ipv6 tcp dport { 2121, 2122 } dnat ip6 to [::1]:21
	}
	chain nat_pre { type nat hook prerouting priority -100; policy accept; }
	chain nat_in { type nat hook input priority 100; policy accept; }
	chain nat_post {
		type nat hook postrouting priority 100; policy accept;
		ip daddr 127.0.0.1 tcp dport 21 ct original proto-dst 2123 snat ip to 127.0.0.2
	}
}
`

type lab struct {
	t         testing.TB
	c         *Conn
	listeners map[netip.AddrPort]net.Listener // servers opened by master
}

func skipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces and write conntrack state")
	}
}

// newLab moves the calling goroutine into a fresh network namespace for the rest of the test,
// brings lo up, installs labRuleset and dials ctnetlink there.
func newLab(t testing.TB) *lab {
	t.Helper()
	skipUnlessRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime ends it with the goroutine.
			t.Errorf("restore netns: %v", err)
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	})
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	l := &lab{t: t, listeners: make(map[netip.AddrPort]net.Listener)}
	l.nft(labRuleset)
	c, err := Dial()
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	l.c = c
	return l
}

// run runs a command in the lab namespace and returns its output.
func (l *lab) run(stdin string, name string, args ...string) string {
	l.t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func (l *lab) nft(ruleset string) { l.t.Helper(); l.run(ruleset, "nft", "-f", "-") }

// listen opens a TCP listener in the lab; port 0 picks a free port.
func (l *lab) listen(addr netip.AddrPort) net.Listener {
	l.t.Helper()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		l.t.Fatalf("listen %s: %v", addr, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	return ln
}

// connect dials addr from the lab and waits for the server side to accept it (when ln is
// given). It returns the client's tuple (original direction).
func (l *lab) connect(ln net.Listener, addr netip.AddrPort) (Tuple, net.Conn) {
	l.t.Helper()
	accepted := make(chan net.Conn, 1)
	if ln != nil {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
	}
	c, err := net.DialTimeout("tcp", addr.String(), 3*time.Second)
	if err != nil {
		l.t.Fatalf("dial %s: %v", addr, err)
	}
	l.t.Cleanup(func() { c.Close() })
	if ln != nil {
		select {
		case s, ok := <-accepted:
			if !ok {
				l.t.Fatalf("accept on %s failed", ln.Addr())
			}
			l.t.Cleanup(func() { s.Close() })
		case <-time.After(3 * time.Second):
			l.t.Fatalf("accept on %s: timeout", ln.Addr())
		}
	}
	return Tuple{
		Src: c.LocalAddr().(*net.TCPAddr).AddrPort(),
		Dst: c.RemoteAddr().(*net.TCPAddr).AddrPort(),
	}, c
}

// master creates a control connection to ip:port (a listener on it is opened) and returns its
// original tuple.
func (l *lab) master(ip netip.Addr, port uint16) Tuple {
	l.t.Helper()
	addr := netip.AddrPortFrom(ip, port)
	ln, ok := l.listeners[addr]
	if !ok {
		ln = l.listen(addr)
		l.listeners[addr] = ln
	}
	tu, _ := l.connect(ln, addr)
	return unmapTuple(tu)
}

func unmapTuple(t Tuple) Tuple { return t.unmap() }

// freePort returns a port nothing listens on in the lab.
func (l *lab) freePort(ip netip.Addr) uint16 {
	l.t.Helper()
	ln := l.listen(netip.AddrPortFrom(ip, 0))
	p := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ln.Close()
	return p
}

func (l *lab) listExpect() []Expectation {
	l.t.Helper()
	got, err := l.c.ListExpect()
	if err != nil {
		l.t.Fatalf("ListExpect: %v", err)
	}
	return got
}

var (
	lo4 = netip.MustParseAddr("127.0.0.1")
	lo6 = netip.MustParseAddr("::1")
)

// errIs is a helper for table tests: nil want means no error.
func errIs(err, want error) error {
	switch {
	case want == nil && err != nil:
		return fmt.Errorf("unexpected error: %w", err)
	case want != nil && !errors.Is(err, want):
		return fmt.Errorf("error %v, want one wrapping %v", err, want)
	}
	return nil
}
