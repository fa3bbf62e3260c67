package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
	"github.com/ftpalg/ftpalg/conntrack/rules"
)

// fakeKernel stands in for ctnetlink: it knows one master flow and records expectations.
type fakeKernel struct {
	mu      sync.Mutex
	flows   map[conntrack.Tuple]conntrack.Flow
	expects []conntrack.Expectation
	deleted []conntrack.Expectation
	adjs    []adjCall
	// discoverDelay is how long a discovery (a table walk in the kernel) takes.
	discoverDelay time.Duration
	discoveries   int
	labels        []int                                // SetLabel calls (bits)
	zoned         map[conntrack.Tuple][]conntrack.Flow // entries of the same endpoints in other zones
	lookups       int
	noSeqAdj      bool                    // the entry lacks the seqadj extension (no NAT after the helper)
	busyPort      map[netip.AddrPort]bool // expectation destinations that collide
	refuse        int                     // CreateExpect calls still to refuse (no carrier helper)
}

func (k *fakeKernel) LookupIn(seen conntrack.Tuple, zone uint16) (conntrack.Flow, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lookups++
	if f, ok := k.flows[seen]; ok && f.Zone == zone {
		return f, nil
	}
	for _, f := range k.zoned[seen] {
		if f.Zone == zone {
			return f, nil
		}
	}
	return conntrack.Flow{}, conntrack.ErrNotFound
}

func (k *fakeKernel) Discover(seen conntrack.Tuple) ([]conntrack.Flow, error) {
	time.Sleep(k.discoverDelay)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lookups++
	k.discoveries++
	var out []conntrack.Flow
	if f, ok := k.flows[seen]; ok {
		out = append(out, f)
	}
	out = append(out, k.zoned[seen]...)
	if len(out) == 0 {
		return nil, conntrack.ErrNotFound
	}
	return out, nil
}

func (k *fakeKernel) SetLabel(f conntrack.Flow, bit int, on bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.labels = append(k.labels, bit)
	return nil
}

type adjCall struct {
	dir    conntrack.Dir
	adj    conntrack.SeqAdj
	verify bool
}

func (k *fakeKernel) SetSeqAdj(f conntrack.Flow, d conntrack.Dir, a conntrack.SeqAdj, verify bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.adjs = append(k.adjs, adjCall{d, a, verify})
	for key, fl := range k.flows {
		if fl.Orig != f.Orig || fl.Zone != f.Zone {
			continue
		}
		if k.noSeqAdj {
			if verify {
				return conntrack.ErrNoSeqAdj
			}
			return nil
		}
		fl.SeqAdj[d], fl.Adjusting = a, true
		k.flows[key] = fl
		return nil
	}
	for key, fs := range k.zoned {
		for i := range fs {
			if fs[i].Orig == f.Orig && fs[i].Zone == f.Zone {
				fs[i].SeqAdj[d], fs[i].Adjusting = a, true
				k.zoned[key] = fs
				return nil
			}
		}
	}
	return conntrack.ErrNotFound
}

func (k *fakeKernel) CreateExpect(e conntrack.Expectation) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.busyPort[e.Dst] {
		return conntrack.ErrExist
	}
	if k.refuse > 0 {
		k.refuse--
		return conntrack.ErrNoHelper
	}
	k.expects = append(k.expects, e)
	return nil
}

func (k *fakeKernel) DeleteExpect(e conntrack.Expectation) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, x := range k.expects {
		if x == e {
			k.expects = append(k.expects[:i], k.expects[i+1:]...)
			k.deleted = append(k.deleted, e)
			return nil
		}
	}
	return conntrack.ErrNotFound
}

type verdict struct {
	id      uint32
	accept  bool
	altered []byte
}

type fakeQueue struct {
	mu       sync.Mutex
	verdicts []verdict
}

func (q *fakeQueue) Accept(id uint32, altered []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.verdicts = append(q.verdicts, verdict{id: id, accept: true, altered: append([]byte(nil), altered...)})
	return nil
}

func (q *fakeQueue) Drop(id uint32) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.verdicts = append(q.verdicts, verdict{id: id})
	return nil
}

func (q *fakeQueue) take() []verdict {
	q.mu.Lock()
	defer q.mu.Unlock()
	v := q.verdicts
	q.verdicts = nil
	return v
}

var (
	client    = netip.MustParseAddrPort("192.0.2.10:40000")
	server    = netip.MustParseAddrPort("198.51.100.20:21")
	public    = netip.MustParseAddrPort("198.51.100.1:40000")
	snatFlow  = conntrack.Flow{Orig: conntrack.Tuple{Src: client, Dst: server}, Reply: conntrack.Tuple{Src: server, Dst: public}, Helper: "ftpalg-carrier"}
	clientISN = uint32(0xfffffff0) // wraps during the test
	serverISN = uint32(1000)
)

// tcpPacket builds an IPv4/TCP packet with gopacket (an independent oracle for lengths and
// checksums).
func tcpPacket(t testing.TB, src, dst netip.AddrPort, seq, ack uint32, syn, fin bool, payload string) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
		SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, SYN: syn, FIN: fin, ACK: !syn || ack != 0, PSH: payload != "", Window: 64240}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decoded re-decodes a released packet with gopacket and verifies its checksums independently.
func decoded(t *testing.T, b []byte) (*layers.IPv4, *layers.TCP) {
	t.Helper()
	p := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if ip == nil || tcp == nil {
		t.Fatalf("released packet does not decode: %v", p.ErrorLayer())
	}
	// Recompute the checksums over a copy with gopacket and compare.
	ip2, tcp2 := *ip, *tcp
	if err := tcp2.SetNetworkLayerForChecksum(&ip2); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&ip2, &tcp2, gopacket.Payload(tcp.Payload)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), b) {
		t.Fatalf("released packet has wrong lengths or checksums:\n got %x\nwant %x", b, buf.Bytes())
	}
	return ip, tcp
}

type harness struct {
	t    *testing.T
	k    *fakeKernel
	q    *fakeQueue
	w    *worker
	pins *pinholes
	logs *bytes.Buffer
	id   uint32
	now  time.Time
	dev  uint32 // output interface of the packets sent (0: local delivery)
	// inDev is the input interface; tenant, when set, is the client-side interface (input of
	// the client's packets, output of the server's).
	inDev, tenant uint32
	// next sequence numbers in each direction's original numbering
	cseq, sseq uint32
}

func newHarness(t *testing.T, cfg *Config) *harness {
	if cfg == nil {
		cfg = &Config{Ports: []uint16{21}, Queues: 1, PinholeTimeout: 30 * time.Second}
	}
	k := &fakeKernel{flows: map[conntrack.Tuple]conntrack.Flow{{Src: client, Dst: server}: snatFlow}}
	q := &fakeQueue{}
	logs := &bytes.Buffer{}
	log := NewLogger(logs, "json")
	m := newMetrics("test")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pins := newPinholes(ctx, k, log, m, cfg.PinholeTimeout)
	w := newWorker(0, cfg, k, q, pins, log, m)
	return &harness{t: t, k: k, q: q, w: w, pins: pins, logs: logs, now: time.Unix(1e9, 0), cseq: clientISN, sseq: serverISN}
}

// send hands one packet to the worker and returns the verdicts given since the last call.
func (h *harness) send(b []byte) []verdict {
	h.id++
	in, out := h.inDev, h.dev
	fromServer := len(b) > 21 && b[20] == 0 && b[21] == 21 // sport 21
	switch {
	case h.tenant != 0 && fromServer: // leaving to the tenant
		in, out = 0, h.tenant
	case h.tenant != 0:
		in = h.tenant
	case h.dev != 0 && fromServer: // forwarded back out of the client's side (interface 8)
		in, out = h.dev, 8
	case h.dev != 0:
		in = 8
	}
	h.w.handle(queue.Packet{ID: h.id, Payload: b, InDev: in, OutDev: out}, h.now)
	return h.q.take()
}

func (h *harness) handshake() {
	h.t.Helper()
	h.send(tcpPacket(h.t, client, server, h.cseq, 0, true, false, ""))
	h.send(tcpPacket(h.t, server, client, h.sseq, h.cseq+1, true, false, ""))
	h.cseq++
	h.sseq++
	h.send(tcpPacket(h.t, client, server, h.cseq, h.sseq, false, false, ""))
}

func (h *harness) fromServer(text string) []verdict {
	v := h.send(tcpPacket(h.t, server, client, h.sseq, h.cseq, false, false, text))
	h.sseq += uint32(len(text))
	return v
}

func (h *harness) fromClient(text string) []verdict {
	v := h.send(tcpPacket(h.t, client, server, h.cseq, h.sseq, false, false, text))
	h.cseq += uint32(len(text))
	return v
}

// events returns the log lines with the given event name.
func (h *harness) events(name string) []map[string]any {
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(h.logs.Bytes()))
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			h.t.Fatalf("log is not JSON lines: %v\n%s", err, h.logs)
		}
		if m["event"] == name {
			out = append(out, m)
		}
	}
}

func onlyVerdict(t *testing.T, v []verdict) verdict {
	t.Helper()
	if len(v) != 1 {
		t.Fatalf("got %d verdicts, want 1: %+v", len(v), v)
	}
	return v[0]
}

func TestActiveModeBehindSNAT(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	if v := onlyVerdict(t, h.fromServer("220 ready\r\n")); !v.accept || v.altered != nil {
		t.Fatalf("greeting: got %+v, want accepted unchanged", v)
	}
	portSeq := h.cseq
	v := onlyVerdict(t, h.fromClient("PORT 192,0,2,10,4,1\r\n"))
	if !v.accept || v.altered == nil {
		t.Fatalf("PORT: got %+v, want accepted with a rewrite", v)
	}
	_, tcp := decoded(t, v.altered)
	if got, want := string(tcp.Payload), "PORT 198,51,100,1,4,1\r\n"; got != want {
		t.Errorf("rewritten PORT = %q, want %q", got, want)
	}
	if tcp.Seq != portSeq {
		t.Errorf("seq of the rewriting packet = %d, want %d", tcp.Seq, portSeq)
	}
	want := []conntrack.Expectation{{
		Master: snatFlow.Orig, Src: server.Addr(), Dst: netip.MustParseAddrPort("198.51.100.1:1025"),
		NAT: true, NATDir: conntrack.Reply, NATTo: netip.MustParseAddrPort("192.0.2.10:1025"), Timeout: 30 * time.Second,
	}}
	if diff := cmp.Diff(want, h.k.expects, equateNetip); diff != "" {
		t.Errorf("expectations (-want +got):\n%s", diff)
	}
	// The kernel carries the resize: registered before the release, read back once.
	wantAdj := []adjCall{{conntrack.Original, conntrack.SeqAdj{Pos: portSeq, Before: 0, After: 2}, true}}
	if diff := cmp.Diff(wantAdj, h.k.adjs, cmp.AllowUnexported(adjCall{})); diff != "" {
		t.Errorf("SetSeqAdj calls (-want +got):\n%s", diff)
	}

	// Later packets of both directions pass as they are: the kernel shifts their numbers.
	growth := uint32(len("198,51,100,1,4,1") - len("192,0,2,10,4,1"))
	sv := onlyVerdict(t, h.send(tcpPacket(t, server, client, h.sseq, h.cseq+growth, false, false, "200 PORT ok\r\n")))
	h.sseq += uint32(len("200 PORT ok\r\n"))
	if sv.altered != nil {
		t.Errorf("server's reply altered: the kernel maps its ack")
	}
	if cv := onlyVerdict(t, h.fromClient("RETR f\r\n")); cv.altered != nil {
		t.Errorf("client's next command altered: the kernel shifts its seq")
	}
	// A retransmission of the rewritten segment goes out rewritten the same way.
	rv := onlyVerdict(t, h.send(tcpPacket(t, client, server, portSeq, h.sseq, false, false, "PORT 192,0,2,10,4,1\r\n")))
	if _, tcp := decoded(t, rv.altered); string(tcp.Payload) != "PORT 198,51,100,1,4,1\r\n" || tcp.Seq != portSeq {
		t.Errorf("retransmission released as %q at %d", tcp.Payload, tcp.Seq)
	}
	if len(h.k.adjs) != 1 {
		t.Errorf("the retransmission registered another adjustment: %+v", h.k.adjs)
	}

	ph := h.events(evPinholeOpen)
	if len(ph) != 1 {
		t.Fatalf("got %d pinhole_open events, want 1\n%s", len(ph), h.logs)
	}
	for k, want := range map[string]string{
		"client": client.String(), "server": server.String(), "cmd": "PORT",
		"from": "198.51.100.20", "to": "198.51.100.1:1025", "nat_to": "192.0.2.10:1025",
	} {
		if ph[0][k] != want {
			t.Errorf("pinhole_open %s = %v, want %s", k, ph[0][k], want)
		}
	}
	if len(h.events(evRewrite)) != 1 {
		t.Errorf("want one rewrite event\n%s", h.logs)
	}

	// The data connection shows up as a new conntrack entry with a master.
	h.pins.used(conntrack.Flow{Orig: conntrack.Tuple{Src: netip.MustParseAddrPort("198.51.100.20:20"), Dst: netip.MustParseAddrPort("198.51.100.1:1025")}, Master: &snatFlow.Orig})
	if got := h.events(evPinholeUsed); len(got) != 1 {
		t.Errorf("got %d pinhole_used events, want 1\n%s", len(got), h.logs)
	}
}

func TestSplitPortIsJoinedAndRewritten(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	first := h.cseq
	if v := h.fromClient("PORT 192,0,"); len(v) != 0 {
		t.Fatalf("first half: got verdicts %+v, want the packet held", v)
	}
	v := h.fromClient("2,10,4,1\r\n")
	if len(v) != 2 || v[0].accept || !v[1].accept {
		t.Fatalf("second half: got %+v, want the held packet dropped and this one accepted", v)
	}
	_, tcp := decoded(t, v[1].altered)
	if got, want := string(tcp.Payload), "PORT 198,51,100,1,4,1\r\n"; got != want || tcp.Seq != first {
		t.Errorf("joined packet = %q at seq %d, want %q at seq %d", got, tcp.Seq, want, first)
	}
	if len(h.k.expects) != 1 {
		t.Errorf("got %d expectations, want 1", len(h.k.expects))
	}
}

func TestHeldPacketIsReleasedAfterTimeout(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	if v := h.fromClient("PORT 192,0,"); len(v) != 0 {
		t.Fatalf("got verdicts %+v, want the packet held", v)
	}
	h.w.releaseHeld(h.now.Add(holdTimeout/2), false)
	if v := h.q.take(); len(v) != 0 {
		t.Fatalf("released before the hold timeout: %+v", v)
	}
	h.w.releaseHeld(h.now.Add(holdTimeout), false)
	v := onlyVerdict(t, h.q.take())
	if !v.accept {
		t.Fatalf("held packet: got %+v, want accepted", v)
	}
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "PORT 192,0," {
		t.Errorf("held packet released as %q", tcp.Payload)
	}
}

func TestBounceIsNeutralizedWithoutPinhole(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	v := onlyVerdict(t, h.fromClient("PORT 203,0,113,5,4,1\r\n"))
	if len(h.k.expects) != 0 {
		t.Fatalf("bounce opened a pinhole: %+v", h.k.expects)
	}
	if v.altered == nil {
		t.Fatal("bounce PORT released unchanged: a server allowing FXP would connect to the third party")
	}
	if _, tcp := decoded(t, v.altered); strings.HasPrefix(string(tcp.Payload), "PORT") {
		t.Errorf("bounce PORT still reads %q", tcp.Payload)
	}
	rej := h.events(evRejected)
	if len(rej) != 1 || rej[0]["reason"] != "bounce" {
		t.Errorf("rejected events = %v, want one with reason bounce", rej)
	}
}

func TestPassiveBehindSNATNoRewrite(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PASV\r\n")
	v := onlyVerdict(t, h.fromServer("227 Entering Passive Mode (198,51,100,20,195,80).\r\n"))
	if v.altered != nil {
		t.Errorf("227 from a public server was rewritten: %x", v.altered)
	}
	want := []conntrack.Expectation{{
		Master: snatFlow.Orig, Src: client.Addr(), Dst: netip.MustParseAddrPort("198.51.100.20:50000"), Timeout: 30 * time.Second,
	}}
	if diff := cmp.Diff(want, h.k.expects, equateNetip); diff != "" {
		t.Errorf("expectations (-want +got):\n%s", diff)
	}
	if len(h.k.adjs) != 0 {
		t.Errorf("SetSeqAdj called without a length change: %+v", h.k.adjs)
	}
}

func TestCollisionTakesAnotherPort(t *testing.T) {
	h := newHarness(t, nil)
	h.k.busyPort = map[netip.AddrPort]bool{netip.MustParseAddrPort("198.51.100.1:1025"): true}
	h.handshake()
	h.fromServer("220 ready\r\n")
	v := onlyVerdict(t, h.fromClient("PORT 192,0,2,10,4,1\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "PORT 198,51,100,1,4,2\r\n" {
		t.Errorf("rewritten = %q, want the next port", tcp.Payload)
	}
	if len(h.k.expects) != 1 || h.k.expects[0].NATTo != netip.MustParseAddrPort("192.0.2.10:1025") {
		t.Errorf("expectations = %+v, want one landing on the announced port", h.k.expects)
	}
}

func TestPinholeExpiresAtTimeout(t *testing.T) {
	h := newHarness(t, &Config{Ports: []uint16{21}, Queues: 1, PinholeTimeout: 20 * time.Millisecond})
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	select {
	case m := <-h.w.ctl:
		if m.kind != ctlRelease || m.key != (sessKey{client, server, 0, 0}) {
			t.Errorf("control message = %+v, want a release for the session", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no release after the pinhole timeout")
	}
	if len(h.k.deleted) != 1 || len(h.k.expects) != 0 {
		t.Errorf("expectation not deleted at timeout: left %+v, deleted %+v", h.k.expects, h.k.deleted)
	}
	if got := h.events(evPinholeExpired); len(got) != 1 {
		t.Errorf("got %d pinhole_expired events, want 1", len(got))
	}
}

func TestNonCommandPacketAllocatesNothing(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	b := tcpPacket(t, server, client, h.sseq, h.cseq, false, false, "150 Opening BINARY mode data connection\r\n")
	p := queue.Packet{ID: 1, Payload: b}
	q := &nopQueue{}
	h.w.q = q
	allocs := testing.AllocsPerRun(100, func() {
		h.w.handle(p, h.now) // a retransmission after the first run: same path, no command
	})
	if allocs != 0 {
		t.Errorf("a packet without a command allocates %.1f times, want 0", allocs)
	}
}

var equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{})

type nopQueue struct{}

func (nopQueue) Accept(uint32, []byte) error { return nil }
func (nopQueue) Drop(uint32) error           { return nil }

// TestRestartRebuildsFromConntrack: kill -9 after a resize; the next run meets the connection
// mid-stream and takes what it needs from the conntrack entry: the kernel keeps shifting (no
// packet is altered), and the next resize builds on the adjustment the kernel has.
func TestRestartRebuildsFromConntrack(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n") // +2, registered in the kernel
	h.fromServer("200 ok\r\n")

	h2 := newHarness(t, nil)
	h2.k = h.k
	h2.w.k, h2.pins.k = h.k, h.k
	h2.cseq, h2.sseq = h.cseq, h.sseq
	if v := onlyVerdict(t, h2.fromClient("NOOP\r\n")); v.altered != nil {
		t.Error("after the restart a packet was altered: the kernel shifts it")
	}
	if ev := h2.events(evSessionOpen); len(ev) != 1 || ev[0]["restored"] != true || ev[0]["adjusting"] != true {
		t.Errorf("session_open after restart = %v, want restored and adjusting", ev)
	}
	h2.fromServer("200 ok\r\n")
	seq := h2.cseq
	v := onlyVerdict(t, h2.fromClient("PORT 192,0,2,10,4,2\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "PORT 198,51,100,1,4,2\r\n" {
		t.Errorf("PORT after restart released as %q", tcp.Payload)
	}
	want := adjCall{conntrack.Original, conntrack.SeqAdj{Pos: seq, Before: 2, After: 4}, false}
	if got := h.k.adjs[len(h.k.adjs)-1]; got != want {
		t.Errorf("adjustment after restart = %+v, want %+v (building on the kernel's)", got, want)
	}
}

// TestIdleSessionIsKeptWhileTracked: a resized session silent for hours (its transfer runs)
// outlives every sweep while conntrack tracks it, and goes when conntrack no longer does.
func TestIdleSessionIsKeptWhileTracked(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	for _, after := range []time.Duration{idleCheck, 2 * time.Hour, 3 * time.Hour, 5 * 24 * time.Hour} {
		h.w.sweep(h.now.Add(after))
		if len(h.w.sessions) != 1 {
			t.Fatalf("the session was forgotten %v later while conntrack still tracks it", after)
		}
	}
	// Its retransmission is still re-altered: nothing of it was dropped.
	if s := h.w.sessions[sessKey{client, server, 0, 0}]; !s.nat.Active() || !s.adjProven {
		t.Error("the idle session lost its rewriting state")
	}
	delete(h.k.flows, conntrack.Tuple{Src: client, Dst: server})
	h.w.sweep(h.now.Add(6 * 24 * time.Hour))
	if len(h.w.sessions) != 0 {
		t.Error("a session whose conntrack entry is gone survived the sweep")
	}
	if ev := h.events(evSessionClose); len(ev) != 1 || ev[0]["reason"] != "conntrack_gone" {
		t.Errorf("session_close = %v, want reason conntrack_gone", ev)
	}
}

// TestNoSeqAdjRefusesTheResize: an entry without the sequence adjustment extension (no NAT
// after the carrier) is never resized: no pinhole, the PORT neutralised, the reason logged.
func TestNoSeqAdjRefusesTheResize(t *testing.T) {
	h := newHarness(t, nil)
	h.k.noSeqAdj = true
	h.handshake()
	h.fromServer("220 ready\r\n")
	v := onlyVerdict(t, h.fromClient("PORT 192,0,2,10,4,1\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "XXXX 192,0,2,10,4,1\r\n" {
		t.Errorf("PORT released as %q, want it neutralised", tcp.Payload)
	}
	if len(h.k.expects) != 0 {
		t.Errorf("pinhole left open: %+v", h.k.expects)
	}
	if rej := h.events(evRejected); len(rej) != 1 || rej[0]["reason"] != "no_seqadj" || rej[0]["action"] != "neutralized" {
		t.Errorf("rejected = %v, want one no_seqadj, neutralized", rej)
	}
}

func TestSplitTooLargeToJoinIsNotMerged(t *testing.T) {
	h := newHarness(t, nil)
	h.dev = 7 // forwarded out of an interface with a 1500-byte MTU
	h.w.mtus[h.dev], h.w.mtuAt = 1500, h.now
	h.handshake()
	h.fromServer("220 ready\r\n")
	if v := h.fromClient("PORT 192,0,"); len(v) != 0 {
		t.Fatalf("got verdicts %+v, want the packet held", v)
	}
	// The completing segment is nearly full: joined, the two would pass the 1500-byte MTU.
	// 40 header bytes + 11 held + 1455 here = 1506 joined; each alone fits.
	rest := "2,10,4,1\r\n" + "NOOP" + strings.Repeat(" ", 1439) + "\r\n"
	v := h.fromClient(rest)
	if len(v) != 2 || !v[0].accept || !v[1].accept {
		t.Fatalf("got %+v, want the held packet released, then this one", v)
	}
	for _, x := range v {
		if x.altered != nil && len(x.altered) > 1500 {
			t.Errorf("released a %d-byte packet over the MTU", len(x.altered))
		}
	}
	if len(h.k.expects) != 0 {
		t.Errorf("a pinhole was opened for a PORT that could not be rewritten: %+v", h.k.expects)
	}
	if rej := h.events(evRejected); len(rej) != 1 || rej[0]["reason"] != "unrewritable" {
		t.Errorf("rejected events = %v, want one unrewritable", rej)
	}
}

func TestPortDribbledBytePerSegment(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	first := h.cseq
	line := "PORT 192,0,2,10,4,1\r\n"
	var last []verdict
	for i := 0; i < len(line); i++ {
		h.now = h.now.Add(5 * time.Millisecond)
		last = h.fromClient(line[i : i+1])
		switch {
		case i < len("PORT "):
			// The verb and the space: nothing a rewrite changes, released at once.
			if v := onlyVerdict(t, last); !v.accept || v.altered != nil {
				t.Fatalf("byte %d of the verb: %+v, want released as it is", i, v)
			}
		case i < len(line)-1:
			// Every argument piece is held: the earlier ones are superseded (dropped) as
			// they are joined into the newest.
			for _, v := range last {
				if v.accept {
					t.Fatalf("byte %d: a piece was released before the line completed: %+v", i, last)
				}
			}
		}
	}
	var got verdict
	for _, v := range last {
		if v.accept {
			got = v
		}
	}
	if got.altered == nil {
		t.Fatalf("last byte: no rewritten packet released: %+v", last)
	}
	if _, tcp := decoded(t, got.altered); string(tcp.Payload) != "198,51,100,1,4,1\r\n" || tcp.Seq != first+5 {
		t.Errorf("released %q at seq %d, want the rewritten argument at %d", tcp.Payload, tcp.Seq, first+5)
	}
}

// TestNagleVerbReleased: a client with Nagle on writes "PORT " then its argument; the verb
// segment is released at once (so the server acknowledges it and Nagle lets the rest go), the
// argument is rewritten in its own segment. A refused one has its argument neutralised.
func TestNagleVerbReleased(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	if v := onlyVerdict(t, h.fromClient("PORT ")); !v.accept || v.altered != nil {
		t.Fatalf("verb segment: %+v, want released as it is", v)
	}
	seq := h.cseq
	v := onlyVerdict(t, h.fromClient("192,0,2,10,4,1\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "198,51,100,1,4,1\r\n" || tcp.Seq != seq {
		t.Errorf("argument released as %q at %d, want rewritten at %d", tcp.Payload, tcp.Seq, seq)
	}
	if want := (adjCall{conntrack.Original, conntrack.SeqAdj{Pos: seq, After: 2}, true}); len(h.k.adjs) != 1 || h.k.adjs[0] != want {
		t.Errorf("adjustments %+v, want %+v", h.k.adjs, want)
	}
	h.fromServer("200 ok\r\n")
	h.fromClient("PORT ")
	v = onlyVerdict(t, h.fromClient("203,0,113,5,4,1\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "XXXXXXXXXXXXXXX\r\n" {
		t.Errorf("bounce argument released as %q, want it neutralised", tcp.Payload)
	}
}

// TestConntrackGoneKeepsAResizedSession: the entry of a resized session is destroyed
// (conntrack -F) while the connection lives on; the kernel makes a new entry from its next
// packet, without the adjustment, and ftpalg registers it there before that packet leaves. An
// unresized session simply ends with its entry.
func TestConntrackGoneKeepsAResizedSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	seq := h.cseq
	h.fromClient("PORT 192,0,2,10,4,1\r\n") // +2
	h.w.control(ctlMsg{kind: ctlFlowGone, orig: snatFlow.Orig}, h.now)
	if len(h.w.sessions) != 1 {
		t.Fatal("a resized session was forgotten when its entry went")
	}
	// The connection's next packet makes the kernel create a new entry, not yet confirmed
	// (not found) when ftpalg sees the packet: ftpalg shifts that one packet itself.
	delete(h.k.flows, conntrack.Tuple{Src: client, Dst: server})
	nv := onlyVerdict(t, h.fromClient("NOOP\r\n"))
	if nv.altered == nil {
		t.Fatal("the first packet after the entry went was not shifted")
	}
	if _, tcp := decoded(t, nv.altered); tcp.Seq != h.cseq-6+2 {
		t.Errorf("first packet's seq = %d, want %d (+2)", tcp.Seq, h.cseq-6+2)
	}
	// The kernel's new entry for the same connection, confirmed, without the adjustment.
	fresh := snatFlow
	h.k.flows[conntrack.Tuple{Src: client, Dst: server}] = fresh
	n := len(h.k.adjs)
	h.fromServer("200 ok\r\n")
	want := adjCall{conntrack.Original, conntrack.SeqAdj{Pos: seq, After: 2}, true}
	if len(h.k.adjs) != n+1 || h.k.adjs[n] != want {
		t.Errorf("adjustment registered on the new entry = %+v, want %+v", h.k.adjs[n:], want)
	}
	if f := h.k.flows[conntrack.Tuple{Src: client, Dst: server}]; !f.Adjusting || f.SeqAdj[conntrack.Original] != want.adj {
		t.Errorf("new entry = %+v, want it adjusting by %+v", f, want.adj)
	}

	h2 := newHarness(t, nil)
	h2.handshake()
	h2.fromServer("220 ready\r\n")
	h2.w.control(ctlMsg{kind: ctlFlowGone, orig: snatFlow.Orig}, h2.now)
	if len(h2.w.sessions) != 0 {
		t.Error("an unresized session outlived its conntrack entry")
	}
}

func TestRejectionFloodIsLoggedAtABoundedRate(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	for i := 0; i < 200; i++ {
		h.fromClient("PORT 203,0,113,5,4,1\r\n")
	}
	if n := len(h.events(evRejected)); n != maxRejectLogs {
		t.Errorf("%d rejected lines for 200 bounces in one second, want %d", n, maxRejectLogs)
	}
	h.now = h.now.Add(time.Second)
	h.fromClient("PORT 203,0,113,5,4,1\r\n")
	ev := h.events(evRejected)
	if last := ev[len(ev)-1]; last["suppressed"] != float64(200-maxRejectLogs) {
		t.Errorf("next line's suppressed = %v, want %d", last["suppressed"], 200-maxRejectLogs)
	}

	if got := testutilCount(t, h.w.m.rejections.WithLabelValues("bounce")); got != 201 {
		t.Errorf("rejections counted %v, want 201", got)
	}
}

func TestPinholeRateIsLimitedPerSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	for i := 0; i < maxPinholeBurst+50; i++ {
		h.fromClient("PORT 192,0,2,10,4,1\r\n")
		h.w.control(ctlMsg{kind: ctlRelease, key: sessKey{client, server, 0, 0}}, h.now) // as when used
	}
	if got := testutilCount(t, h.w.m.pinholesOpened); got != maxPinholeBurst {
		t.Errorf("%v pinholes opened back to back, want the burst %d", got, maxPinholeBurst)
	}
	if got := testutilCount(t, h.w.m.rejections.WithLabelValues("rate_limit")); got != 50 {
		t.Errorf("%v rate_limit rejections, want 50", got)
	}
	// A second later the bucket has refilled by the rate.
	h.now = h.now.Add(time.Second)
	before := testutilCount(t, h.w.m.pinholesOpened)
	for i := 0; i < maxPinholeRate+10; i++ {
		h.fromClient("PORT 192,0,2,10,4,1\r\n")
		h.w.control(ctlMsg{kind: ctlRelease, key: sessKey{client, server, 0, 0}}, h.now)
	}
	if got := testutilCount(t, h.w.m.pinholesOpened) - before; got != maxPinholeRate {
		t.Errorf("%v pinholes in the next second, want %d", got, maxPinholeRate)
	}
}

func TestRetransmissionInsideHeldBytesIsDropped(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	first := h.cseq
	h.fromClient("PORT 1")
	h.fromClient("92,0,")
	// A tail loss probe retransmits the newest held bytes.
	v := onlyVerdict(t, h.send(tcpPacket(t, client, server, h.cseq-5, h.sseq, false, false, "92,0,")))
	if v.accept {
		t.Fatalf("the retransmission of held bytes was released: %+v", v)
	}
	got := h.fromClient("2,10,4,1\r\n")
	var rel verdict
	for _, x := range got {
		if x.accept {
			rel = x
		}
	}
	if rel.altered == nil {
		t.Fatalf("no rewritten packet: %+v", got)
	}
	if _, tcp := decoded(t, rel.altered); string(tcp.Payload) != "PORT 198,51,100,1,4,1\r\n" || tcp.Seq != first {
		t.Errorf("released %q at %d, want the whole rewritten line at %d", tcp.Payload, tcp.Seq, first)
	}
}

func TestNewConnectionOnALingeringTupleGetsAFreshSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n") // the old connection's stream is resized
	h.send(tcpPacket(t, client, server, h.cseq, h.sseq, false, true, ""))
	h.send(tcpPacket(t, server, client, h.sseq, h.cseq+1, false, true, ""))
	old := h.w.sessions[sessKey{client, server, 0, 0}]
	if old == nil || old.closedAt.IsZero() {
		t.Fatal("the first connection is not closed")
	}
	if got := h.w.perClient[client.Addr()]; got != 0 {
		t.Errorf("a closed session still counts against its client: %d", got)
	}
	// The same 4-tuple again, with a new ISN.
	h2 := newHarness(t, nil)
	h2.w, h2.q, h2.k, h2.logs = h.w, h.q, h.k, h.logs
	h2.cseq, h2.sseq = 5000, 9000
	h2.handshake()
	if s := h.w.sessions[sessKey{client, server, 0, 0}]; s == old {
		t.Fatal("the new connection reuses the closed one's session")
	}
	if v := onlyVerdict(t, h2.fromServer("220 ready\r\n")); v.altered != nil {
		t.Error("the new connection's packets are altered with the old one's edits")
	}
	if s := h.w.sessions[sessKey{client, server, 0, 0}]; s == nil || s == old || s.nat.Active() {
		t.Fatal("the new connection has no fresh session")
	}
}

func TestDeclinedOpensDoNotExhaustTheSessionLimit(t *testing.T) {
	h := newHarness(t, nil)
	h.k.refuse = 8 // e.g. a session that started before ftpalg: its master has no carrier
	h.handshake()
	h.fromServer("220 ready\r\n")
	for i := 0; i < 8; i++ {
		h.fromClient("PORT 192,0,2,10,4,1\r\n")
	}
	if len(h.k.expects) != 0 {
		t.Fatalf("expectations created while the kernel refused: %+v", h.k.expects)
	}
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	if len(h.k.expects) != 1 {
		t.Errorf("after 8 refused pinholes the session opens none: %v\n%s", h.k.expects, h.logs)
	}
	// Each refused one reached the server neutralised (never with the private address).
	rej := h.events(evRejected)
	if len(rej) != 8 {
		t.Fatalf("got %d rejected lines, want 8", len(rej))
	}
	for _, r := range rej {
		if r["reason"] != "pinhole_failed" || r["action"] != "neutralized" {
			t.Errorf("rejected = %v, want pinhole_failed, neutralized", r)
		}
	}
}

// TestStrayPacketLeavesNoState: a packet of no known connection (no SYN, no conntrack entry
// from before it) creates no session.
func TestStrayPacketLeavesNoState(t *testing.T) {
	h := newHarness(t, nil)
	stray := netip.MustParseAddrPort("192.0.2.99:5555")
	for i := 0; i < 100; i++ {
		v := onlyVerdict(t, h.send(tcpPacket(t, stray, server, 1000, 1, false, false, "PORT 192,0,2,99,4,1\r\n")))
		if !v.accept || v.altered != nil {
			t.Fatalf("stray packet: %+v, want accepted as it is", v)
		}
	}
	if len(h.w.sessions) != 0 {
		t.Errorf("%d sessions after stray packets, want 0", len(h.w.sessions))
	}
	if len(h.k.expects) != 0 {
		t.Errorf("a stray PORT opened a pinhole: %+v", h.k.expects)
	}
}

// TestBlindRSTDoesNotEndTheSession: an RST whose sequence number is not exactly the next
// expected one (RFC 5961) leaves the session, resized stream and all; the exact one ends it.
func TestBlindRSTDoesNotEndTheSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	rst := func(seq uint32) []byte {
		b := tcpPacket(t, server, client, seq, h.cseq, false, false, "")
		b[33] |= 0x04 // RST (flags byte of the TCP header after a 20-byte IPv4 header)
		// gopacket computed the checksum without RST: fix it by rebuilding.
		ip, tcp := &layers.IPv4{}, &layers.TCP{}
		p := gopacket.NewPacket(b, layers.LayerTypeIPv4, gopacket.Default)
		*ip = *p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		*tcp = *p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		tcp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp)
		return buf.Bytes()
	}
	h.send(rst(h.sseq + 1000))
	s := h.w.sessions[sessKey{client, server, 0, 0}]
	if s == nil || s.eng.Closed() || !s.closedAt.IsZero() {
		t.Fatal("a blind RST ended the session")
	}
	h.send(rst(h.sseq))
	if s.closedAt.IsZero() {
		t.Error("the exact RST did not end the session")
	}
}

// TestHandshakesAreCheapCappedAndShortLived: SYNs that get no data cost a handshake entry, not
// a session; the table is capped (the oldest make room) and forgotten after shakeTimeout; a
// connection whose data flows becomes a session with its initial sequence numbers.
func TestHandshakesAreCheapCappedAndShortLived(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	if len(h.w.sessions) != 0 || len(h.w.shakes) != 1 {
		t.Fatalf("after a handshake: %d sessions, %d handshakes; want 0 and 1", len(h.w.sessions), len(h.w.shakes))
	}
	h.fromServer("220 ready\r\n")
	if len(h.w.sessions) != 1 || len(h.w.shakes) != 0 {
		t.Fatalf("after the greeting: %d sessions, %d handshakes; want 1 and 0", len(h.w.sessions), len(h.w.shakes))
	}
	if s := h.w.sessions[sessKey{client, server, 0, 0}]; s.midStream {
		t.Error("a session seen from its handshake counts as met mid-stream")
	}
	for i := 0; i < maxShakes+100; i++ {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}), uint16(1024+i%60000))
		h.send(tcpPacket(t, src, server, uint32(i), 0, true, false, ""))
	}
	if len(h.w.shakes) != maxShakes {
		t.Errorf("%d handshakes, want the cap %d", len(h.w.shakes), maxShakes)
	}
	if len(h.w.sessions) != 1 {
		t.Errorf("%d sessions after a SYN flood, want the one real session", len(h.w.sessions))
	}
	// The newest SYNs took the places of the oldest.
	first := sessKey{netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 0, 0}), 1024), server, 0, 0}
	if _, ok := h.w.shakes[first]; ok {
		t.Error("the oldest handshake was not evicted")
	}
	h.w.sweep(h.now.Add(shakeTimeout))
	if len(h.w.shakes) != 0 || len(h.w.shakeQ) != 0 {
		t.Errorf("after shakeTimeout: %d handshakes (%d queued), want none", len(h.w.shakes), len(h.w.shakeQ))
	}
}

func TestClientKeyCountsIPv6By64(t *testing.T) {
	a := clientKey(netip.MustParseAddr("2001:db8:1:2:aaaa::1"))
	b := clientKey(netip.MustParseAddr("2001:db8:1:2:bbbb::2"))
	c := clientKey(netip.MustParseAddr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Errorf("clientKey: %s %s %s; want the first two equal, the third apart", a, b, c)
	}
	if v4 := clientKey(netip.MustParseAddr("::ffff:192.0.2.1")); v4 != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("clientKey(mapped) = %s", v4)
	}
}

// TestFirstCommandAfterRestartIsRewritten: after a restart (or a failover) the first segment
// of a resized session is a PORT: ftpalg takes it as a line start and rewrites it, building
// on the kernel's adjustment.
func TestFirstCommandAfterRestartIsRewritten(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	h.fromServer("200 ok\r\n")

	h2 := newHarness(t, nil)
	h2.k = h.k
	h2.w.k, h2.pins.k = h.k, h.k
	h2.cseq, h2.sseq = h.cseq, h.sseq
	seq := h2.cseq
	v := onlyVerdict(t, h2.fromClient("PORT 192,0,2,10,4,2\r\n"))
	if v.altered == nil {
		t.Fatal("the first command after the restart was not rewritten")
	}
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "PORT 198,51,100,1,4,2\r\n" {
		t.Errorf("released %q", tcp.Payload)
	}
	want := adjCall{conntrack.Original, conntrack.SeqAdj{Pos: seq, Before: 2, After: 4}, false}
	if got := h.k.adjs[len(h.k.adjs)-1]; got != want {
		t.Errorf("adjustment = %+v, want %+v", got, want)
	}
}

// TestUnprovenMidStreamPORTIsNeutralised: a connection met mid-stream whose entry proves
// nothing (never resized) gets no pinhole for a PORT before a valid exchange; after one it
// does.
func TestUnprovenMidStreamPORTIsNeutralised(t *testing.T) {
	h := newHarness(t, nil)
	h.cseq, h.sseq = 5000, 9000
	v := onlyVerdict(t, h.fromClient("PORT 192,0,2,10,4,1\r\n"))
	if _, tcp := decoded(t, v.altered); !strings.HasPrefix(string(tcp.Payload), "XXXX") {
		t.Errorf("unproven PORT released as %q, want it neutralised", tcp.Payload)
	}
	if len(h.k.expects) != 0 {
		t.Fatalf("pinhole for an unproven session: %+v", h.k.expects)
	}
	h.fromServer("500 Unknown command.\r\n")
	h.fromClient("NOOP\r\n")
	h.fromServer("200 NOOP ok.\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	if len(h.k.expects) != 1 {
		t.Errorf("after an exchange the PORT opened %d pinholes, want 1\n%s", len(h.k.expects), h.logs)
	}
}

// TestHTTPWithPortLineGetsNothing: NAT Slipstreaming: an HTTP request to a control port
// whose body holds a PORT line with the client's own address gets no pinhole and no rewrite;
// one rejected line says not_ftp; its bytes pass unharmed.
func TestHTTPWithPortLineGetsNothing(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	body := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\nPORT 192,0,2,10,12,234\r\n"
	v := onlyVerdict(t, h.fromClient(body))
	if v.altered != nil {
		t.Errorf("HTTP request altered")
	}
	h.fromServer("HTTP/1.1 400 Bad Request\r\n\r\n")
	h.fromClient("PORT 192,0,2,10,12,234\r\n")
	if len(h.k.expects) != 0 {
		t.Fatalf("pinhole for a non-FTP connection: %+v", h.k.expects)
	}
	if rej := h.events(evRejected); len(rej) != 1 || rej[0]["reason"] != "not_ftp" {
		t.Errorf("rejected = %v, want exactly one not_ftp", rej)
	}
	// Its entry is labelled: the queue rules let its packets pass without ftpalg.
	if len(h.k.labels) != 1 || h.k.labels[0] != rules.DefaultSkipLabel {
		t.Errorf("SetLabel calls %v, want one with bit %d", h.k.labels, rules.DefaultSkipLabel)
	}
}

// TestFailedLookupIsNotRetriedPerPacket: a session whose conntrack entry is not found (the
// master went, or never had the carrier) looks again after lookupRetry, not on every packet.
func TestFailedLookupIsNotRetriedPerPacket(t *testing.T) {
	h := newHarness(t, nil)
	delete(h.k.flows, conntrack.Tuple{Src: client, Dst: server})
	h.handshake()
	h.fromServer("220 ready\r\n")
	n := h.k.lookups
	for i := 0; i < 50; i++ {
		h.fromClient("NOOP\r\n")
	}
	if got := h.k.lookups - n; got != 0 {
		t.Errorf("%d look-ups for 50 packets within a second of the failed one, want 0", got)
	}
	h.now = h.now.Add(lookupRetry)
	h.fromClient("NOOP\r\n")
	if got := h.k.lookups - n; got < 1 || got > 2 {
		t.Errorf("after lookupRetry: %d look-ups, want one attempt (a hash look-up, then a discovery)", got)
	}
}

// TestRefusedPortClosesThePinhole: the server answers the PORT 500: its pinhole goes at once.
func TestRefusedPortClosesThePinhole(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	if len(h.k.expects) != 1 {
		t.Fatalf("no pinhole for the PORT")
	}
	h.fromServer("500 Illegal PORT command.\r\n")
	if len(h.k.expects) != 0 || len(h.k.deleted) != 1 {
		t.Errorf("pinhole of a refused PORT still open: %+v", h.k.expects)
	}
	if ev := h.events(evPinholeClosed); len(ev) != 1 || ev[0]["reason"] != "refused" {
		t.Errorf("pinhole_closed = %v, want reason refused", ev)
	}
	if got := h.w.sessions[sessKey{client, server, 0, 0}].eng.Pending(); got != 0 {
		t.Errorf("%d pinholes still pending in the engine", got)
	}
}

// TestFXP: the client hands server B the endpoint server A announced to it on another control
// connection: the PORT passes unchanged, no pinhole, an fxp line. Any other third-party
// address stays a bounce.
func TestFXP(t *testing.T) {
	h := newHarness(t, nil)
	h.w.fxp = newFXPBook(30 * time.Second)
	h.handshake()
	h.fromServer("220 A ready\r\n")
	h.fromClient("PASV\r\n")
	h.fromServer("227 Entering Passive Mode (198,51,100,20,195,80).\r\n")

	serverB := netip.MustParseAddrPort("198.51.100.21:21")
	clientB := netip.MustParseAddrPort("192.0.2.10:40001")
	h.k.flows[conntrack.Tuple{Src: clientB, Dst: serverB}] = conntrack.Flow{
		Orig:  conntrack.Tuple{Src: clientB, Dst: serverB},
		Reply: conntrack.Tuple{Src: serverB, Dst: netip.MustParseAddrPort("198.51.100.1:40001")}, Helper: "sane"}
	send := func(src, dst netip.AddrPort, seq, ack uint32, syn bool, text string) []verdict {
		return h.send(tcpPacket(t, src, dst, seq, ack, syn, false, text))
	}
	send(clientB, serverB, 100, 0, true, "")
	send(serverB, clientB, 700, 101, true, "")
	send(serverB, clientB, 701, 101, false, "220 B ready\r\n")
	n := len(h.k.expects)
	v := onlyVerdict(t, send(clientB, serverB, 101, 714, false, "PORT 198,51,100,20,195,80\r\n"))
	if v.altered != nil {
		t.Errorf("FXP PORT altered")
	}
	if len(h.k.expects) != n {
		t.Errorf("FXP opened a pinhole: %+v", h.k.expects[n:])
	}
	if ev := h.events(evFXP); len(ev) != 1 || ev[0]["announced"] != "198.51.100.20:50000" {
		t.Errorf("fxp events = %v, want one for 198.51.100.20:50000", ev)
	}
	send(serverB, clientB, 714, 128, false, "200 PORT ok.\r\n")
	v = onlyVerdict(t, send(clientB, serverB, 128, 728, false, "PORT 198,51,100,20,195,81\r\n"))
	if _, tcp := decoded(t, v.altered); !strings.HasPrefix(string(tcp.Payload), "XXXX") {
		t.Errorf("a PORT to an endpoint nobody announced passed as %q, want it neutralised (bounce)", tcp.Payload)
	}
	// Past the pinhole timeout the announcement no longer counts.
	h.now = h.now.Add(31 * time.Second)
	send(serverB, clientB, 728, 155, false, "500 no.\r\n")
	v = onlyVerdict(t, send(clientB, serverB, 155, 737, false, "PORT 198,51,100,20,195,80\r\n"))
	if _, tcp := decoded(t, v.altered); !strings.HasPrefix(string(tcp.Payload), "XXXX") {
		t.Errorf("an expired announcement still made FXP: %q", tcp.Payload)
	}
}

// TestZonesWithTheSameEndpoints: two tenants on two interfaces, conntrack zones 1 and 2, use
// the same endpoints at the same time. Each session finds its own entry (the first by
// discovery, the second because zone 1 is known to be the other interface's), and its pinhole
// goes into its zone, with its own NAT address.
func TestZonesWithTheSameEndpoints(t *testing.T) {
	pub2 := netip.MustParseAddrPort("203.0.113.1:40000")
	z1 := snatFlow
	z1.Zone = 1
	z2 := snatFlow
	z2.Zone, z2.Reply.Dst = 2, pub2
	h := newHarness(t, nil)
	delete(h.k.flows, conntrack.Tuple{Src: client, Dst: server})
	h.k.zoned = map[conntrack.Tuple][]conntrack.Flow{{Src: client, Dst: server}: {z1}}
	h.tenant = 3
	h.handshake()
	h.fromServer("220 A\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n")
	if len(h.k.expects) != 1 || h.k.expects[0].Zone != 1 || h.k.expects[0].Dst.Addr() != public.Addr() {
		t.Fatalf("tenant A's pinhole = %+v, want one in zone 1 to %s\n%s", h.k.expects, public.Addr(), h.logs)
	}
	// Tenant B, same endpoints, on interface 4, while A's entry exists.
	h.k.zoned[conntrack.Tuple{Src: client, Dst: server}] = []conntrack.Flow{z1, z2}
	hb := newHarness(t, nil)
	hb.w, hb.q, hb.k, hb.logs = h.w, h.q, h.k, h.logs
	hb.tenant = 4
	hb.cseq, hb.sseq = 7000, 8000
	hb.handshake()
	hb.fromServer("220 B\r\n")
	v := onlyVerdict(t, hb.fromClient("PORT 192,0,2,10,4,2\r\n"))
	if _, tcp := decoded(t, v.altered); string(tcp.Payload) != "PORT 203,0,113,1,4,2\r\n" {
		t.Errorf("tenant B's PORT released as %q, want its own NAT address", tcp.Payload)
	}
	if len(h.k.expects) != 2 || h.k.expects[1].Zone != 2 {
		t.Errorf("tenant B's pinhole = %+v, want one in zone 2", h.k.expects)
	}
	if len(h.w.sessions) != 2 {
		t.Errorf("%d sessions, want one per tenant", len(h.w.sessions))
	}
}

// TestPinholeKeyCollisionReleasesTheOtherSession: a pinhole of session B lands on the same
// (source, destination) as one of session A that the kernel already let go (used or expired,
// its event not yet here): A's entry is replaced, and A hears that its pinhole is gone, so its
// pending count does not leak.
func TestPinholeKeyCollisionReleasesTheOtherSession(t *testing.T) {
	h := newHarness(t, nil)
	a := sessKey{client, server, 0, 0}
	b := sessKey{netip.MustParseAddrPort("192.0.2.11:40000"), server, 0, 0}
	e := conntrack.Expectation{Master: snatFlow.Orig, Src: server.Addr(), Dst: netip.MustParseAddrPort("198.51.100.1:5000")}
	h.pins.open(h.w, a, e, "PORT", false)
	eb := e
	eb.Master.Src = b.client
	h.pins.open(h.w, b, eb, "PORT", false)
	select {
	case m := <-h.w.ctl:
		if m.kind != ctlRelease || m.key != a {
			t.Errorf("control message %+v, want a release for session A", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("session A was not told its pinhole is gone")
	}
}

// TestZonesFirstContactSameEndpoints: two tenants' first connections, with the same
// endpoints, on two interfaces whose zones ftpalg has not learned, at the same time: each has
// a session of its own (keyed by interface until the zone is known), and since nothing tells
// which zone's entry is whose, each PORT is refused and neutralised: no private address leaks.
func TestZonesFirstContactSameEndpoints(t *testing.T) {
	z1 := snatFlow
	z1.Zone = 1
	z2 := snatFlow
	z2.Zone, z2.Reply.Dst = 2, netip.MustParseAddrPort("203.0.113.1:40000")
	h := newHarness(t, nil)
	delete(h.k.flows, conntrack.Tuple{Src: client, Dst: server})
	h.k.zoned = map[conntrack.Tuple][]conntrack.Flow{{Src: client, Dst: server}: {z1, z2}}
	hb := newHarness(t, nil)
	hb.w, hb.q, hb.k, hb.logs = h.w, h.q, h.k, h.logs
	h.tenant, hb.tenant = 3, 4
	hb.cseq, hb.sseq = 7000, 8000
	h.handshake()
	hb.handshake()
	h.fromServer("220 A\r\n")
	hb.fromServer("220 B\r\n")
	if len(h.w.sessions) != 2 {
		t.Fatalf("%d sessions, want one per tenant", len(h.w.sessions))
	}
	for i, x := range []*harness{h, hb} {
		v := onlyVerdict(t, x.fromClient("PORT 192,0,2,10,4,1\r\n"))
		if _, tcp := decoded(t, v.altered); !strings.HasPrefix(string(tcp.Payload), "XXXX") {
			t.Errorf("tenant %d's PORT released as %q, want it neutralised", i, tcp.Payload)
		}
	}
	if len(h.k.expects) != 0 {
		t.Errorf("pinholes opened while the zones were ambiguous: %+v", h.k.expects)
	}
}

// TestDiscoveriesAreRationed: stray packets that no hash look-up finds may not make a worker
// walk the conntrack table per packet: discoveries share a time budget.
func TestDiscoveriesAreRationed(t *testing.T) {
	h := newHarness(t, nil)
	h.k.discoverDelay = 20 * time.Millisecond
	for i := 0; i < 50; i++ {
		src := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), uint16(2000+i))
		h.send(tcpPacket(t, src, server, 1, 1, false, false, "PORT 203,0,113,7,4,1\r\n"))
	}
	// The burst (100 ms) allows about five 20 ms walks, not fifty.
	if h.k.discoveries > 7 {
		t.Errorf("%d discoveries for 50 stray packets in one instant, want at most about 5", h.k.discoveries)
	}
	if len(h.w.sessions) != 0 {
		t.Errorf("stray packets made %d sessions", len(h.w.sessions))
	}
}

// TestSessionsOverTheLimitAreUnqueued: a client over its session limit gets no session, and
// its connection's entry is labelled so that its packets stop being queued.
func TestSessionsOverTheLimitAreUnqueued(t *testing.T) {
	h := newHarness(t, nil)
	h.w.perClient[clientKey(client.Addr())] = maxPerClient
	h.handshake()
	h.fromServer("220 ready\r\n")
	if len(h.w.sessions) != 0 {
		t.Fatalf("a session over the client's limit")
	}
	if len(h.k.labels) != 1 || h.k.labels[0] != rules.DefaultSkipLabel {
		t.Errorf("SetLabel calls %v, want one with bit %d", h.k.labels, rules.DefaultSkipLabel)
	}
}

// TestReopenedTupleGetsAFreshSession: a connection ends in a way ftpalg does not see (here a
// blind-looking RST), and a new connection reuses the 4-tuple: its SYN replaces the old session,
// whose sequence adjustment must not be applied to the new connection's entry.
func TestReopenedTupleGetsAFreshSession(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.fromClient("PORT 192,0,2,10,4,1\r\n") // +2, registered
	old := h.w.sessions[sessKey{client, server, 0, 0}]
	// A retransmitted SYN of a live session changes nothing.
	h.send(tcpPacket(t, client, server, clientISN, 0, true, false, ""))
	if h.w.sessions[sessKey{client, server, 0, 0}] != old {
		t.Fatal("a retransmitted SYN of the old connection replaced its session")
	}
	// The same 4-tuple, a new ISN: a new connection (conntrack made a fresh entry).
	fresh := snatFlow
	h.k.flows[conntrack.Tuple{Src: client, Dst: server}] = fresh
	h2 := newHarness(t, nil)
	h2.w, h2.q, h2.k, h2.logs = h.w, h.q, h.k, h.logs
	h2.cseq, h2.sseq = 5000, 9000
	h2.handshake()
	if s := h.w.sessions[sessKey{client, server, 0, 0}]; s == old {
		t.Fatal("the new connection's SYN went to the old session")
	}
	h2.fromServer("220 ready\r\n")
	n := len(h.k.adjs)
	seq := h2.cseq
	h2.fromClient("PORT 192,0,2,10,4,1\r\n")
	want := adjCall{conntrack.Original, conntrack.SeqAdj{Pos: seq, After: 2}, true}
	if len(h.k.adjs) != n+1 || h.k.adjs[n] != want {
		t.Errorf("the new connection's first resize registered %+v, want %+v (not built on the old one's)", h.k.adjs[n:], want)
	}
}

// TestStaleDestroyEventIsIgnored: a new connection reuses a 4-tuple whose old conntrack entry
// the kernel kills (TIME_WAIT reopened); that entry's destroy event, arriving after the new
// session found its own entry, must not end the new session.
func TestStaleDestroyEventIsIgnored(t *testing.T) {
	h := newHarness(t, nil)
	f := snatFlow
	f.ID = 2
	h.k.flows[conntrack.Tuple{Src: client, Dst: server}] = f
	h.handshake()
	h.fromServer("220 ready\r\n")
	h.w.control(ctlMsg{kind: ctlFlowGone, orig: f.Orig, id: 1}, h.now) // the old entry's end
	if len(h.w.sessions) != 1 {
		t.Fatal("the old entry's destroy event ended the new session")
	}
	h.w.control(ctlMsg{kind: ctlFlowGone, orig: f.Orig, id: 2}, h.now)
	if len(h.w.sessions) != 0 {
		t.Error("the session's own entry's destroy event did not end it")
	}
}

// TestPendingReleasesAreTakenBeforeThePacket: pinhole releases waiting in the control channel
// are applied before the next packet, so a session fetching file after file does not hit its
// pending limit while the releases wait for the worker's run loop.
func TestPendingReleasesAreTakenBeforeThePacket(t *testing.T) {
	h := newHarness(t, nil)
	h.handshake()
	h.fromServer("220 ready\r\n")
	for i := 0; i < 20; i++ {
		h.fromClient("PASV\r\n")
		h.fromServer(fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).\r\n", 100+i/256, i%256))
		// The data connection uses the pinhole: the event goroutine forgets it and queues a
		// release for the worker.
		dst := netip.AddrPortFrom(server.Addr(), uint16((100+i/256)<<8|i%256))
		h.pins.used(conntrack.Flow{Orig: conntrack.Tuple{Src: netip.AddrPortFrom(client.Addr(), 50000), Dst: dst}, Master: &snatFlow.Orig})
	}
	if rej := h.events(evRejected); len(rej) != 0 {
		t.Errorf("rejected while every pinhole was used: %v", rej)
	}
	if got := len(h.events(evPinholeOpen)); got != 20 {
		t.Errorf("%d pinholes opened, want 20", got)
	}
}
