package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/conntrack/rules"
)

// The lab: a client namespace and a server namespace joined by veth, the ftpalg table
// installed in the server namespace, so the server namespace queues the original
// direction of a port-21 connection at its input hook and the reply at its output hook.
//
//	cli 192.0.2.1/24 veth0 ── veth1 192.0.2.2/24 srv (table inet ftpalg, queue, server :21)
const (
	cliAddr  = "192.0.2.1"
	srvAddr  = "192.0.2.2"
	ctrlPort = 21
	qnum     = 5
)

type lab struct {
	cli, srv *testNS
}

func newLab(t testing.TB, rcfg rules.Config) *lab {
	t.Helper()
	requireRoot(t)
	l := &lab{cli: newNS(t, "cli"), srv: newNS(t, "srv")}
	vethPair(t, l.cli, cliAddr+"/24", l.srv, srvAddr+"/24")
	if err := l.srv.Do(func() error { return rules.Install(rcfg) }); err != nil {
		t.Fatalf("rules.Install: %v", err)
	}
	return l
}

// open opens a queue in the server namespace, closed at the end of the test.
func (l *lab) open(t testing.TB, cfg Config) *Queue {
	t.Helper()
	var q *Queue
	if err := l.srv.Do(func() (err error) { q, err = Open(cfg); return err }); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// run runs q until the end of the test and checks that Run then returns nil.
func run(t testing.TB, q *Queue, fn func(Packet)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- q.Run(ctx, fn, func(err error) { t.Errorf("onErr: %v", err) })
	}()
	select {
	case <-q.Bound():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("queue not bound after 5s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after cancel = %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// server listens on the server's control port and hands over the first connection.
func (l *lab) server(t testing.TB) <-chan net.Conn {
	t.Helper()
	var ln net.Listener
	if err := l.srv.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(srvAddr, fmt.Sprint(ctrlPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		conns <- c
	}()
	return conns
}

func (l *lab) dial(t testing.TB, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := l.cli.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", net.JoinHostPort(srvAddr, fmt.Sprint(ctrlPort)), timeout)
		return err
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// connect dials the server and returns both ends.
func (l *lab) connect(t testing.TB) (client, server net.Conn) {
	t.Helper()
	conns := l.server(t)
	client, err := l.dial(t, 3*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	select {
	case server = <-conns:
	case <-time.After(3 * time.Second):
		t.Fatal("server accepted no connection")
	}
	return client, server
}

func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, s)
	}
	return s
}

func write(t testing.TB, c net.Conn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
}

// segment is what a test learns of a queued packet, decoded with gopacket.
type segment struct {
	SrcPort, DstPort uint16
	Payload          string
}

func decode(t testing.TB, b []byte) (*layers.IPv4, *layers.TCP) {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Errorf("queued packet is not IPv4/TCP: %v", p)
		return nil, nil
	}
	return ip, tcp
}

func segmentOf(t testing.TB, b []byte) segment {
	t.Helper()
	_, tcp := decode(t, b)
	if tcp == nil {
		return segment{}
	}
	return segment{uint16(tcp.SrcPort), uint16(tcp.DstPort), string(tcp.Payload)}
}

// rewrite replaces old by new (same length) in the TCP payload and recomputes the
// checksums with gopacket.
func rewrite(t testing.TB, b []byte, old, new string) []byte {
	t.Helper()
	ip, tcp := decode(t, b)
	if tcp == nil {
		return nil
	}
	payload := bytes.Replace(tcp.Payload, []byte(old), []byte(new), 1)
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

func TestBothDirections(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	var (
		mu   sync.Mutex
		segs []segment
		pkts []Packet
	)
	run(t, q, func(p Packet) {
		mu.Lock()
		segs = append(segs, segmentOf(t, p.Payload))
		pkts = append(pkts, p)
		mu.Unlock()
		if err := q.Accept(p.ID, nil); err != nil {
			t.Error(err)
		}
	})
	client, server := l.connect(t)
	write(t, server, "220 ready\r\n")
	if got := readLine(t, client); got != "220 ready\r\n" {
		t.Errorf("client read %q", got)
	}
	write(t, client, "USER ftp\r\n")
	if got := readLine(t, server); got != "USER ftp\r\n" {
		t.Errorf("server read %q", got)
	}

	mu.Lock()
	defer mu.Unlock()
	var withData []segment
	for _, s := range segs {
		if s.Payload != "" {
			withData = append(withData, s)
		}
	}
	want := []segment{
		{SrcPort: ctrlPort, DstPort: 0, Payload: "220 ready\r\n"}, // reply direction, output hook
		{SrcPort: 0, DstPort: ctrlPort, Payload: "USER ftp\r\n"},  // original direction, input hook
	}
	for i := range withData { // hide the client's ephemeral port
		for _, p := range []*uint16{&withData[i].SrcPort, &withData[i].DstPort} {
			if *p != ctrlPort {
				*p = 0
			}
		}
	}
	if diff := cmp.Diff(want, withData); diff != "" {
		t.Errorf("queued segments with data mismatch (-want +got):\n%s", diff)
	}
	if len(segs) < 4 { // SYN, SYN-ACK and the two data segments at least (pure ACKs pass)
		t.Errorf("queued %d packets, want at least 4", len(segs))
	}
	for _, p := range pkts {
		if p.HWProto != 0x0800 {
			t.Errorf("packet %d: HWProto = %#04x, want 0x0800", p.ID, p.HWProto)
		}
		if p.InDev == 0 && p.OutDev == 0 {
			t.Errorf("packet %d: neither InDev nor OutDev set", p.ID)
		}
	}
}

func TestAcceptAltered(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	run(t, q, func(p Packet) {
		var altered []byte
		if bytes.Contains(p.Payload, []byte("hello")) {
			altered = rewrite(t, p.Payload, "hello", "jello")
		}
		if err := q.Accept(p.ID, altered); err != nil {
			t.Error(err)
		}
	})
	client, server := l.connect(t)
	write(t, client, "hello world\r\n")
	if got, want := readLine(t, server), "jello world\r\n"; got != want {
		t.Errorf("server read %q, want %q", got, want)
	}
}

func TestDrop(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	var (
		mu     sync.Mutex
		copies int
	)
	run(t, q, func(p Packet) {
		if bytes.Contains(p.Payload, []byte("DROPME")) {
			mu.Lock()
			copies++
			first := copies == 1
			mu.Unlock()
			if first {
				if err := q.Drop(p.ID); err != nil {
					t.Error(err)
				}
				return
			}
		}
		if err := q.Accept(p.ID, nil); err != nil {
			t.Error(err)
		}
	})
	client, server := l.connect(t)
	start := time.Now()
	write(t, client, "DROPME\r\n")
	if got := readLine(t, server); got != "DROPME\r\n" {
		t.Errorf("server read %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	// The dropped segment arrives only as TCP's retransmission, a second queued copy.
	if copies < 2 {
		t.Errorf("queued %d copies of the segment, want ≥2 (the first dropped)", copies)
	}
	t.Logf("dropped segment delivered by retransmission after %v", time.Since(start).Round(time.Millisecond))
}

func TestHeldPacket(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	const hold = 150 * time.Millisecond // below TCP's 200 ms minimum RTO: no retransmission
	held := make(chan Packet, 16)
	run(t, q, func(p Packet) {
		if bytes.Contains(p.Payload, []byte("HOLD")) {
			// The payload is valid only until the callback returns: keep a copy.
			p.Payload = bytes.Clone(p.Payload)
			held <- p // verdict later, from another goroutine
			return
		}
		if err := q.Accept(p.ID, nil); err != nil {
			t.Error(err)
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for p := range held {
			time.Sleep(hold)
			// The held copy is the receiver's: alter it.
			altered := rewrite(t, p.Payload, "HOLD", "DONE")
			if err := q.Accept(p.ID, altered); err != nil {
				t.Error(err)
			}
		}
	}()
	// Registered after run's cleanup, so it runs before the queue closes: every verdict is
	// given (and reported) while the test is still running.
	t.Cleanup(func() { close(held); <-done })
	client, server := l.connect(t)
	start := time.Now()
	write(t, client, "HOLD\r\n")
	if got, want := readLine(t, server), "DONE\r\n"; got != want {
		t.Errorf("server read %q, want %q", got, want)
	}
	if d := time.Since(start); d < hold {
		t.Errorf("held segment delivered after %v, want ≥ %v", d, hold)
	}
}

// TestNoReader checks the rules' bypass flag: without a program bound to the queue the
// connection passes only with FailOpen.
func TestNoReader(t *testing.T) {
	tests := []struct {
		name     string
		failOpen bool
		wantConn bool
	}{
		{name: "bypass", failOpen: true, wantConn: true},
		{name: "no bypass", failOpen: false, wantConn: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, FailOpen: tc.failOpen})
			conns := l.server(t)
			client, err := l.dial(t, time.Second)
			if got := err == nil; got != tc.wantConn {
				t.Fatalf("connected = %v (err %v), want %v", got, err, tc.wantConn)
			}
			if !tc.wantConn {
				return
			}
			server := <-conns
			write(t, client, "NOOP\r\n")
			if got := readLine(t, server); got != "NOOP\r\n" {
				t.Errorf("server read %q", got)
			}
		})
	}
}

// TestBalance opens two queues behind a 2-queue balance and checks that every
// connection, from several client addresses, has both directions on one queue.
func TestBalance(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, Queues: 2})
	var (
		mu     sync.Mutex
		queues = map[uint16]map[uint16]bool{} // client port → queue numbers seen
	)
	for _, n := range []uint16{qnum, qnum + 1} {
		q := l.open(t, Config{Num: n})
		run(t, q, func(p Packet) {
			s := segmentOf(t, p.Payload)
			port := s.SrcPort
			if port == ctrlPort {
				port = s.DstPort
			}
			mu.Lock()
			if queues[port] == nil {
				queues[port] = map[uint16]bool{}
			}
			queues[port][n] = true
			mu.Unlock()
			if err := q.Accept(p.ID, nil); err != nil {
				t.Error(err)
			}
		})
	}
	var ln net.Listener
	if err := l.srv.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(srvAddr, fmt.Sprint(ctrlPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("220 ready\r\n"))
				bufio.NewReader(c).ReadString('\n')
			}()
		}
	}()
	const clients = 8
	for i := range clients {
		addr := fmt.Sprintf("192.0.2.%d", 10+i)
		l.cli.MustExec(t, "ip", "addr", "add", addr+"/24", "dev", "veth0")
		var c net.Conn
		err := l.cli.Do(func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}, Timeout: 3 * time.Second}
			c, err = d.Dial("tcp4", net.JoinHostPort(srvAddr, fmt.Sprint(ctrlPort)))
			return err
		})
		if err != nil {
			t.Fatalf("dial from %s: %v", addr, err)
		}
		readLine(t, c)
		write(t, c, "QUIT\r\n")
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	perQueue := map[uint16]int{}
	for port, qs := range queues {
		if len(qs) != 1 {
			t.Errorf("connection from port %d used queues %v, want one", port, qs)
		}
		for n := range qs {
			perQueue[n]++
		}
	}
	if len(queues) < clients {
		t.Errorf("saw %d connections, want %d", len(queues), clients)
	}
	t.Logf("connections per queue: %v", perQueue)
}

// waitBound waits until queue n is bound in the server namespace.
func (l *lab) waitBound(t testing.TB, n uint16) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, err := l.srv.Exec("cat", "/proc/net/netfilter/nfnetlink_queue")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == fmt.Sprint(n) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("queue %d not bound after 5s", n)
}

func TestRunLifecycle(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, FailOpen: true})
	q := l.open(t, Config{Num: qnum})
	done := make(chan error, 1)
	go func() { done <- q.Run(context.Background(), func(p Packet) { q.Accept(p.ID, nil) }, nil) }()
	l.waitBound(t, qnum)
	if err := q.Run(context.Background(), nil, nil); !errors.Is(err, errRunning) {
		t.Errorf("second Run = %v, want %v", err, errRunning)
	}
	if err := q.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Run after Close = %v, want %v", err, ErrClosed)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if n, err := q.ReadBuffer(); err == nil {
		t.Errorf("ReadBuffer after Close = %d, want an error", n)
	}
}

func TestReadBuffer(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	got, err := q.ReadBuffer()
	if err != nil {
		t.Fatal(err)
	}
	if got < DefaultReadBuf { // the kernel reports twice what was set
		t.Errorf("receive buffer = %d, want ≥ %d", got, DefaultReadBuf)
	}
}

// BenchmarkRoundTrip measures a request/response over the control connection, both
// segments queued and accepted by the Run callback, with each read loop ("lean",
// "nfqueue"), against the same exchange with the connection bypassing the queue ("direct":
// no reader, bypass on). The difference to direct, halved, is the cost of one traversal.
func BenchmarkRoundTrip(b *testing.B) {
	for _, tc := range []struct {
		name   string
		queued bool
		loop   Loop
	}{
		{name: "lean", queued: true, loop: LoopLean},
		{name: "nfqueue", queued: true, loop: LoopNfqueue},
		{name: "direct"},
	} {
		b.Run(tc.name, func(b *testing.B) { benchRoundTrip(b, tc.queued, tc.loop) })
	}
}

func benchRoundTrip(b *testing.B, queued bool, loop Loop) {
	l := newLab(b, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum, FailOpen: !queued})
	var packets atomic.Int64
	if queued {
		q := l.open(b, Config{Num: qnum, Loop: loop})
		run(b, q, func(p Packet) {
			packets.Add(1)
			if err := q.Accept(p.ID, nil); err != nil {
				b.Error(err)
			}
		})
	}
	client, server := l.connect(b)
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := server.Read(buf)
			if err != nil {
				return
			}
			server.Write(buf[:n])
		}
	}()
	req, resp := []byte("NOOP\r\n"), make([]byte, 6)
	b.ReportAllocs()
	b.ResetTimer()
	packets.Store(0)
	for range b.N {
		if _, err := client.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, resp); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(packets.Load())/float64(b.N), "queued/op")
}

// TestBindBusy: a second socket cannot bind a queue another one holds; Run says so at
// once instead of running without packets.
func TestBindBusy(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	first := l.open(t, Config{Num: qnum})
	run(t, first, func(p Packet) { first.Accept(p.ID, nil) })
	l.waitBound(t, qnum)
	second := l.open(t, Config{Num: qnum})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := second.Run(ctx, func(Packet) {}, nil)
	if err == nil {
		t.Fatal("Run on a queue bound by another socket = nil, want an error")
	}
	t.Logf("second bind: %v", err)
}

// TestLoopbackOnce: over loopback a packet crosses output and input; the table queues
// it once (at output, both directions), not twice.
func TestLoopbackOnce(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum})
	var (
		mu     sync.Mutex
		copies = map[string]int{}
	)
	run(t, q, func(p Packet) {
		if s := segmentOf(t, p.Payload); s.Payload != "" {
			mu.Lock()
			copies[s.Payload]++
			mu.Unlock()
		}
		if err := q.Accept(p.ID, nil); err != nil {
			t.Error(err)
		}
	})
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(ctrlPort))
	var client, server net.Conn
	err := l.srv.Do(func() error {
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		if client, err = net.DialTimeout("tcp4", addr, 3*time.Second); err != nil {
			return err
		}
		server, err = ln.Accept()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()
	write(t, server, "220 ready\r\n")
	readLine(t, client)
	write(t, client, "NOOP\r\n")
	readLine(t, server)
	mu.Lock()
	defer mu.Unlock()
	want := map[string]int{"220 ready\r\n": 1, "NOOP\r\n": 1}
	if diff := cmp.Diff(want, copies); diff != "" {
		t.Errorf("queued copies per segment mismatch (-want +got):\n%s", diff)
	}
}

// TestNfqueueLoop runs go-nfqueue's loop (LoopNfqueue), kept for comparison: an altered
// packet and an unaltered one.
func TestNfqueueLoop(t *testing.T) {
	l := newLab(t, rules.Config{Ports: []uint16{ctrlPort}, Queue: qnum})
	q := l.open(t, Config{Num: qnum, Loop: LoopNfqueue})
	run(t, q, func(p Packet) {
		var altered []byte
		if bytes.Contains(p.Payload, []byte("hello")) {
			altered = rewrite(t, p.Payload, "hello", "jello")
		}
		if err := q.Accept(p.ID, altered); err != nil {
			t.Error(err)
		}
	})
	client, server := l.connect(t)
	write(t, client, "hello world\r\n")
	if got, want := readLine(t, server), "jello world\r\n"; got != want {
		t.Errorf("server read %q, want %q", got, want)
	}
	write(t, server, "220 ok\r\n")
	if got := readLine(t, client); got != "220 ok\r\n" {
		t.Errorf("client read %q", got)
	}
}
