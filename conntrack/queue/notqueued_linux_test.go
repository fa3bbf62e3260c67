package queue

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/rules"
)

// queuedKind is what TestNotQueued learns of a queued segment.
type queuedKind struct {
	syn, fin, rst bool
	payload       int
}

func (k queuedKind) pureACK() bool { return k.payload == 0 && !k.syn && !k.fin && !k.rst }

// recorder runs a queue that accepts everything and records each segment's kind.
type recorder struct {
	mu   sync.Mutex
	segs []queuedKind
}

func (r *recorder) run(t *testing.T, l *lab) {
	q := l.open(t, Config{Num: qnum})
	run(t, q, func(p Packet) {
		_, tcp := decode(t, p.Payload)
		if tcp != nil {
			r.mu.Lock()
			r.segs = append(r.segs, queuedKind{syn: tcp.SYN, fin: tcp.FIN, rst: tcp.RST, payload: len(tcp.Payload)})
			r.mu.Unlock()
		}
		if err := q.Accept(p.ID, nil); err != nil {
			t.Error(err)
		}
	})
}

func (r *recorder) snapshot() []queuedKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]queuedKind(nil), r.segs...)
}

// waitFor polls until ok holds for the recorded segments (a packet's verdict and the next
// one's queueing race the test), at most 5 s.
func (r *recorder) waitFor(ok func([]queuedKind) bool) []queuedKind {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := r.snapshot()
		if ok(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func count(segs []queuedKind, f func(queuedKind) bool) int {
	n := 0
	for _, s := range segs {
		if f(s) {
			n++
		}
	}
	return n
}

// TestNotQueued checks the table's control chain in the kernel: pure ACKs of a control
// connection pass without a queue traversal (and the connection works), while a 1-byte
// segment, SYN, FIN and RST are queued; with QueuePureACKs the pure ACKs are queued too.
func TestNotQueued(t *testing.T) {
	for _, queueACKs := range []bool{false, true} {
		t.Run(fmt.Sprintf("QueuePureACKs=%v", queueACKs), func(t *testing.T) {
			l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, QueuePureACKs: queueACKs})
			var r recorder
			r.run(t, l)
			client, server := l.connect(t)
			write(t, server, "2")
			buf := make([]byte, 1)
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := client.Read(buf); err != nil || buf[0] != '2' {
				t.Fatalf("client read %q, %v", buf, err)
			}
			write(t, client, "x")
			server.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := server.Read(buf); err != nil || buf[0] != 'x' {
				t.Fatalf("server read %q, %v", buf, err)
			}
			client.Close() // FIN
			// Wait for the FIN at the server, then the server ends with an RST (linger 0).
			if n, err := server.Read(buf); n != 0 || err == nil {
				t.Fatalf("server read after FIN: %d, %v", n, err)
			}
			server.(*net.TCPConn).SetLinger(0)
			server.Close()

			segs := r.waitFor(func(s []queuedKind) bool {
				return count(s, func(k queuedKind) bool { return k.rst }) > 0 &&
					count(s, func(k queuedKind) bool { return k.fin }) > 0
			})
			for name, f := range map[string]func(queuedKind) bool{
				"SYN":            func(k queuedKind) bool { return k.syn },
				"FIN":            func(k queuedKind) bool { return k.fin },
				"RST":            func(k queuedKind) bool { return k.rst },
				"1-byte segment": func(k queuedKind) bool { return k.payload == 1 },
			} {
				if count(segs, f) == 0 {
					t.Errorf("no %s queued; queued %+v", name, segs)
				}
			}
			pure := count(segs, queuedKind.pureACK)
			if queueACKs && pure == 0 {
				t.Errorf("QueuePureACKs: no pure ACK queued; queued %+v", segs)
			}
			if !queueACKs && pure != 0 {
				t.Errorf("%d pure ACKs queued, want 0; queued %+v", pure, segs)
			}
			t.Logf("queued %d segments, %d of them pure ACKs", len(segs), pure)
		})
	}
}

// TestSkipLabel: once the daemon sets the skip label on a connection (conntrack SetLabel,
// rules.DefaultSkipLabel), its segments pass without being queued, in both directions.
func TestSkipLabel(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, QueuePureACKs: true})
	var r recorder
	r.run(t, l)
	client, server := l.connect(t)
	write(t, server, "220 ready\r\n")
	readLine(t, client)
	before := len(r.waitFor(func(s []queuedKind) bool {
		return count(s, func(k queuedKind) bool { return k.payload > 0 }) > 0
	}))

	var ct *conntrack.Conn
	if err := l.srv.Do(func() (err error) { ct, err = conntrack.Dial(); return err }); err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	orig := conntrack.Tuple{
		Src: client.LocalAddr().(*net.TCPAddr).AddrPort(),
		Dst: netip.MustParseAddrPort(net.JoinHostPort(srvAddr, fmt.Sprint(ctrlPort))),
	}
	f, err := ct.Lookup(orig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ct.SetLabel(f, rules.DefaultSkipLabel, true); err != nil {
		t.Fatalf("SetLabel: %v", err)
	}
	write(t, client, "AUTH TLS\r\n")
	if got := readLine(t, server); got != "AUTH TLS\r\n" {
		t.Errorf("server read %q", got)
	}
	write(t, server, "234 go\r\n")
	if got := readLine(t, client); got != "234 go\r\n" {
		t.Errorf("client read %q", got)
	}
	// A queued segment is recorded before its verdict, so before its data can be read: the
	// two data segments, had they been queued, are recorded by now.
	// (A pure ACK of the greeting may still be on its way when the label is set: only the
	// data segments count.)
	if after := r.snapshot(); count(after[before:], func(k queuedKind) bool { return k.payload > 0 }) != 0 {
		t.Errorf("data segments queued after the label was set, want none: %+v", after[before:])
	}
	// Clearing the bit queues the connection again.
	if err := ct.SetLabel(f, rules.DefaultSkipLabel, false); err != nil {
		t.Fatal(err)
	}
	write(t, client, "NOOP\r\n")
	readLine(t, server)
	if got := r.waitFor(func(s []queuedKind) bool { return len(s) > before }); len(got) == before {
		t.Error("nothing queued after the label was cleared")
	}
}
