package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
	"github.com/ftpalg/ftpalg/conntrack/rules"
	"github.com/ftpalg/ftpalg/nat"
)

// kernel is what a worker needs from the connection tracker; *conntrack.Conn implements it and
// tests use a fake.
type kernel interface {
	LookupIn(seen conntrack.Tuple, zone uint16) (conntrack.Flow, error)
	Discover(seen conntrack.Tuple) ([]conntrack.Flow, error)
	SetSeqAdj(f conntrack.Flow, d conntrack.Dir, a conntrack.SeqAdj, verify bool) error
	CreateExpect(e conntrack.Expectation) error
	DeleteExpect(e conntrack.Expectation) error
	SetLabel(f conntrack.Flow, bit int, on bool) error
}

// verdicter releases or drops queued packets; *queue.Queue implements it.
type verdicter interface {
	Accept(id uint32, altered []byte) error
	Drop(id uint32) error
}

const (
	holdTimeout       = 250 * time.Millisecond // how long a segment ending mid-command waits for the next
	maxHoldTotal      = time.Second            // how long a command dribbled over many segments is held
	closedLinger      = 10 * time.Second       // a closed session keeps re-altering late retransmissions
	idleCheck         = 10 * time.Minute       // a session silent this long is looked up in conntrack
	maxIdleChecks     = 256                    // lookups per sweep (every 5 s), bounding the sweep's cost
	maxSessions       = 1 << 17                // per worker
	maxPerClient      = 256                    // sessions per client address (IPv6: per /64), per worker
	maxShakes         = 1 << 15                // connections seen only in their handshake, per worker
	shakeTimeout      = 30 * time.Second       // how long a handshake may wait for data
	maxOpenLogs       = 200                    // session_open lines a worker may log per second
	lookupRetry       = time.Second            // a session whose entry was not found looks again after this
	maxDiscoveryShare = 0.02                   // share of a worker's time table-walking look-ups may take
	maxPortTries      = 16                     // other ports tried when an expectation collides
	maxPinholeBurst   = 2000                   // pinholes a session may open back to back
	maxPinholeRate    = 200                    // then per second
	maxRejectLogs     = 10                     // rejected lines a session may log per second
	maxWarnLogs       = 10                     // warnings and notes a worker may log per second
	maxPacket         = 65535
	defaultMaxLen     = 1500
	mtuCacheRefresh   = time.Minute
)

var errJoinTooLarge = errors.New("join held segment: larger than the egress MTU")

// sessKey identifies a control connection by its endpoints as seen at the queue point and its
// conntrack zone (zones with overlapping address spaces may hold the same endpoints).
type sessKey struct {
	client, server netip.AddrPort
	zone           uint16
	// ifc is the client-side interface while its zone is not known yet: two connections with
	// the same endpoints on two interfaces (tenants in two zones) must not share a session
	// before ftpalg learns their zones. 0 once the zone is known.
	ifc uint32
}

// origKey identifies a conntrack entry: its original tuple in its zone.
type origKey struct {
	orig conntrack.Tuple
	zone uint16
}

func (k sessKey) attrs() []slog.Attr {
	a := []slog.Attr{slog.String("client", k.client.String()), slog.String("server", k.server.String())}
	if k.zone != 0 {
		a = append(a, slog.Int("zone", int(k.zone)))
	}
	return a
}

type held struct {
	outDev uint32 // its egress interface (its MTU bounds what may be joined to it)
	id     uint32
	bytes  []byte    // the packet to release: possibly several segments joined
	since  time.Time // when its last piece arrived
	first  time.Time // when its first piece arrived
}

// heldSince is when the held packet's first piece arrived (now if there is none).
func heldSince(h *held, now time.Time) time.Time {
	if h == nil {
		return now
	}
	return h.first
}

// session is one control connection: the engine, the rewriting state and what the worker
// learned from the kernel.
type session struct {
	key      sessKey
	eng      *alg.Session
	nat      nat.Conn
	flow     conntrack.Flow
	haveFlow bool
	// adj is the kernel's sequence adjustment of each direction (by alg.Dir), as registered
	// by this run or read from the conntrack entry; adjProven is set once the entry is known
	// to carry it (read back after the first registration, or found set).
	adj       [2]conntrack.SeqAdj
	adjProven bool
	midStream bool   // first seen without its SYN (a restart, a failover): rebuilt from conntrack
	isn       uint32 // the client's initial sequence number, when its SYN was seen (haveISN)
	haveISN   bool
	resumed   [2]bool // mid-stream: the first payload of the direction was seen
	// verbLine and verbEnd: the partial line whose verb alone was released (see verbOnly),
	// and where its argument starts.
	verbLine, verbEnd [2]uint32
	verbSpace         [2]bool
	// readjust is set when the conntrack entry of a resized session went while the connection
	// may live on (conntrack -F): the kernel picks it up again with a fresh entry, which
	// lacks the adjustment; ftpalg registers it there from its cache before the next packet
	// leaves.
	readjust bool
	// lookupMiss is when the last look-up of the session's entry failed.
	lookupMiss time.Time
	lastSeen   time.Time
	closedAt   time.Time
	held       [2]*held

	closeLogged bool
	counted     bool   // counted in perClient
	pinRate     bucket // pinholes opened
	rejLog      gate   // rejected events logged per second (all are counted)
	rewrites    int
	pinholes    int
}

type ctlKind uint8

const (
	ctlRelease  ctlKind = iota + 1 // a pinhole of the session is gone
	ctlFlowGone                    // the session's conntrack entry was destroyed
)

type ctlMsg struct {
	kind ctlKind
	key  sessKey
	orig conntrack.Tuple
	zone uint16
	id   uint32 // the conntrack entry's ID (0: unknown)
}

// pass is the packet being handled and what the worker learns of it on the way.
type pass struct {
	now    time.Time
	outDev uint32 // egress interface (0: local delivery): its MTU bounds a rewrite
	ifc    uint32 // the client-side interface (input of client packets, output of server ones)
	pkt    nat.Packet
	dec    []alg.Decision // the engine's decisions for it
	edits  []nat.Edit     // the rewrites and neutralisations to apply to it
	text   []byte         // the replacement texts the edits refer to
	// adjDirty: the packet registered a sequence adjustment; adjBefore is what its direction
	// had before, to undo should the packet not be released rewritten.
	adjDirty  bool
	adjBefore conntrack.SeqAdj
}

// worker owns the sessions of one queue: everything on the packet path runs on its goroutine,
// so nothing there takes a lock.
type worker struct {
	id    int
	cfg   *Config
	ports []uint16
	eng   alg.Config
	k     kernel
	q     verdicter
	pins  *pinholes
	fxp   *fxpBook // shared by the workers; nil: FXP is refused as a bounce
	log   *slog.Logger
	m     *metrics
	ctl   chan ctlMsg

	mu sync.Mutex // the packet path (enqueue) and the timer/event loop (run)

	sessions map[sessKey]*session
	byOrig   map[origKey]*session
	// zoneOf is the conntrack zone of the connections whose client side is an interface, as
	// learned from their entries (the queue does not carry the zone).
	zoneOf    map[uint32]uint16
	perClient map[netip.Addr]int // by clientKey
	// shakes holds the connections seen only in their handshake; shakeQ their keys, oldest
	// first (some already gone).
	shakes    map[sessKey]shake
	shakeQ    []sessKey
	openLog   gate   // session_open lines, maxOpenLogs a second
	discovery budget // table-walking look-ups (see lookup)
	holding   map[*session]struct{}

	// cur is the packet being handled, handed to every step as an argument (one, reused, so
	// that a packet allocates nothing); hpkt, out, joined and shifted are scratch buffers.
	cur     pass
	hpkt    nat.Packet // a held packet being released
	out     []byte
	joined  []byte
	shifted []byte
	mtus    map[uint32]int
	mtuAt   time.Time
	warn    gate // per-packet warnings and notes, maxWarnLogs a second
}

func newWorker(id int, cfg *Config, k kernel, q verdicter, pins *pinholes, log *slog.Logger, m *metrics) *worker {
	return &worker{
		id:    id,
		cfg:   cfg,
		ports: cfg.Ports,
		eng: alg.Config{
			AllowLowPorts: cfg.AllowLowPorts,
			Loose:         cfg.Loose,
		},
		k:         k,
		q:         q,
		pins:      pins,
		log:       log,
		m:         m,
		ctl:       make(chan ctlMsg, 1024),
		sessions:  make(map[sessKey]*session),
		byOrig:    make(map[origKey]*session),
		zoneOf:    make(map[uint32]uint16),
		shakes:    make(map[sessKey]shake),
		perClient: make(map[netip.Addr]int),
		holding:   make(map[*session]struct{}),
		cur:       pass{dec: make([]alg.Decision, 0, 8), edits: make([]nat.Edit, 0, 8), text: make([]byte, 0, 256)},
		out:       make([]byte, 0, maxPacket),
		joined:    make([]byte, 0, maxPacket),
		shifted:   make([]byte, 0, maxPacket),
		mtus:      make(map[uint32]int),
	}
}

// enqueue is the queue's callback. It handles the packet right there, on the queue's reader
// goroutine: a hand-off to another goroutine cost a wake-up per packet (about a fifth of the
// daemon's CPU and most of its added latency, measured with perf). While it runs the kernel
// keeps further packets in its queue (fail-open: accepted past --queue's length). The mutex is
// the worker's own: it is shared only with this worker's timer and event loop (run), so it is
// uncontended on the packet path.
func (w *worker) enqueue(p queue.Packet) {
	now := time.Now()
	w.mu.Lock()
	w.handle(p, now)
	w.mu.Unlock()
}

// send delivers a control message to the worker unless it has stopped.
func (w *worker) send(ctx context.Context, m ctlMsg) {
	select {
	case w.ctl <- m:
	case <-ctx.Done():
	}
}

func (w *worker) run(ctx context.Context) error {
	tick := time.NewTicker(holdTimeout / 5)
	defer tick.Stop()
	lastSweep := time.Now()
	for {
		select {
		case m := <-w.ctl:
			w.mu.Lock()
			w.control(m, time.Now())
			w.mu.Unlock()
		case now := <-tick.C:
			w.mu.Lock()
			w.releaseHeld(now, false)
			if now.Sub(lastSweep) >= 5*time.Second {
				w.sweep(now)
				lastSweep = now
			}
			w.mu.Unlock()
		case <-ctx.Done():
			w.mu.Lock()
			w.drain()
			w.mu.Unlock()
			return nil
		}
	}
}

// drain gives every held packet a verdict before the queue closes and forgets the sessions:
// their truth (the sequence adjustment) is in the kernel, where the next run finds it.
func (w *worker) drain() {
	w.releaseHeld(time.Now(), true)
	for _, s := range w.sessions {
		w.removeSession(s, "shutdown")
	}
}

func (w *worker) isPort(p uint16) bool {
	for _, x := range w.ports {
		if x == p {
			return true
		}
	}
	return false
}

// handle is the per-packet path.
func (w *worker) handle(p queue.Packet, now time.Time) {
	defer func() { w.m.packetSeconds.Observe(time.Since(now).Seconds()) }()
	// Control messages waiting (a pinhole used or gone, an entry destroyed) are taken first:
	// the packet path holds the worker's mutex most of the time under load, and a session that
	// fetches file after file would otherwise run into its pending-pinhole limit while the
	// releases of pinholes already used wait their turn.
	for drained := false; !drained; {
		select {
		case m := <-w.ctl:
			w.control(m, now)
		default:
			drained = true
		}
	}
	c := &w.cur
	c.now, c.outDev, c.adjDirty = now, p.OutDev, false
	c.edits, c.text = c.edits[:0], c.text[:0]
	if err := c.pkt.Decode(p.Payload); err != nil {
		w.accept(p.ID, nil, w.m.pBypass)
		return
	}
	src, dst := c.pkt.Src(), c.pkt.Dst()
	var dir alg.Dir
	var key sessKey
	switch {
	case w.isPort(dst.Port()):
		c.ifc = p.InDev
		dir, key = alg.FromClient, sessKey{client: src, server: dst}
	case w.isPort(src.Port()):
		c.ifc = p.OutDev
		dir, key = alg.FromServer, sessKey{client: dst, server: src}
	default:
		w.accept(p.ID, nil, w.m.pBypass)
		return
	}
	if z, known := w.zoneOf[c.ifc]; known {
		key.zone = z
	} else {
		key.ifc = c.ifc
	}
	s := w.sessions[key]
	if s != nil && c.pkt.SYN() && !c.pkt.ACK() && dir == alg.FromClient {
		// A client SYN on a known 4-tuple is a new connection unless it is the session's own
		// SYN again (a retransmission or a late duplicate: the same initial sequence number).
		// The old one closed and lingers, or ended in a way ftpalg did not see (an RST it
		// judged blind, its end not yet reported by conntrack); either way conntrack
		// accepted the SYN, so its entry is new: the old session's state (its sequence
		// adjustment above all) must not be applied to it.
		if !s.closedAt.IsZero() || !s.haveISN || s.isn != c.pkt.Seq() {
			reason := "closed"
			if s.closedAt.IsZero() {
				reason = "reopened"
			}
			w.removeSession(s, reason)
			s = nil
		}
	}
	if s == nil {
		if c.pkt.RST() {
			delete(w.shakes, key)
			w.accept(p.ID, nil, w.m.pBypass)
			return
		}
		hs, inShake := w.shakes[key]
		if c.pkt.SYN() || (inShake && len(c.pkt.Payload()) == 0) {
			// A handshake costs a small entry, not a session: the session begins when data
			// flows (a SYN flood, spoofed or not, leaves only these, capped and short-lived).
			w.handshake(c, key, hs, inShake, dir)
			w.accept(p.ID, nil, w.m.pBypass)
			return
		}
		if s = w.newSession(c, key, inShake); s == nil {
			w.accept(p.ID, nil, w.m.pBypass)
			return
		}
		if inShake {
			delete(w.shakes, key)
			if hs.haveC {
				s.eng.Sync(alg.FromClient, hs.cISN)
				s.isn, s.haveISN = hs.cISN, true
			}
			if hs.haveS {
				s.eng.Sync(alg.FromServer, hs.sISN)
			}
		}
	}
	if c.pkt.RST() {
		// RFC 5961: only an RST carrying exactly the next expected sequence number ends the
		// connection; a blind one (an off-path attacker who guessed the 4-tuple) is answered
		// by the endpoint with a challenge ACK, and must not make ftpalg forget the session.
		// A real end also shows as the conntrack entry's destruction.
		if next, ok := s.eng.Next(dir); ok && next != c.pkt.Seq() {
			w.m.notes.WithLabelValues("rst_out_of_window").Inc()
			w.accept(p.ID, nil, w.m.pAccept)
			return
		}
	}
	s.lastSeen = now
	if !s.haveFlow && (len(c.pkt.Payload()) > 0 || s.readjust) && (s.readjust || now.Sub(s.lookupMiss) >= lookupRetry) {
		w.lookupFlow(c, s)
	}

	seq := c.pkt.Seq()
	plen := uint32(len(c.pkt.Payload()))
	h := s.held[dir]
	if h != nil {
		hseq, hend := w.heldRange(h)
		switch {
		case plen == 0 && !c.pkt.FIN() && !c.pkt.RST():
			// A pure ACK leaves the held bytes alone.
		case plen > 0 && seqLE(hseq, seq) && seqLE(seq+plen, hend) && !c.pkt.FIN() && !c.pkt.RST():
			// A retransmission of bytes already held (a tail loss probe: the held bytes are not
			// acknowledged): the held packet carries them.
			w.drop(p.ID)
			return
		case seq == hend:
			// The next segment: it may complete the held line; decided after Feed.
		case seqLE(seq, hseq) && seqLE(hend, seq+plen):
			// A retransmission covering all the held bytes supersedes the held packet.
			w.dropHeld(s, dir)
			h = nil
		default:
			w.releaseOne(s, dir)
			h = nil
		}
	}

	if s.midStream && plen > 0 && !s.resumed[dir] {
		// The first bytes of a direction met mid-stream: FTP peers send a command or a
		// reply per segment, so one that starts like a line and ends one is taken as a line
		// start (a PORT sent first after a restart or a failover is inspected). A wrong
		// guess costs that line only (the engine skips a line it cannot read).
		s.resumed[dir] = true
		if looksLikeLine(dir, c.pkt.Payload()) {
			s.eng.Resume(dir, seq)
		}
	}

	c.dec = s.eng.Feed(alg.Segment{
		Dir:     dir,
		Seq:     seq,
		SYN:     c.pkt.SYN(),
		FIN:     c.pkt.FIN(),
		RST:     c.pkt.RST(),
		Payload: c.pkt.Payload(),
	}, c.dec[:0])

	// Where this packet's bytes start once joined with a held predecessor.
	first := seq
	joinedHeld := false
	if h != nil && w.needsHeld(c, seq) {
		if err := w.join(c, s, dir, h, &p); err == nil {
			first, _ = w.heldRange(h)
			joinedHeld = true
		}
	}

	end := seq + plen
	for i := range c.dec {
		w.decide(c, s, &c.dec[i], first, end)
	}

	// Hold this packet back if it ends inside a line that may become a command needing a
	// rewrite, so that the segment completing it can be joined to it.
	if len(c.edits) == 0 && plen > 0 && !c.pkt.FIN() && !c.pkt.RST() {
		holdFrom := first
		if h != nil && !joinedHeld {
			holdFrom, _ = w.heldRange(h) // a line dribbled over more segments joins the held one
		}
		start, n, cand := s.eng.Partial(dir)
		// The line started here (or in the held packet), or only its verb was released
		// earlier and the rest starts here.
		cont := s.verbLine[dir] == start && s.verbEnd[dir] == holdFrom
		here := seqLE(holdFrom, start) || cont
		if cand && n > 0 && here && h == nil {
			p, sawSpace := c.pkt.Payload(), false
			if cont {
				sawSpace = s.verbSpace[dir]
			} else if off := int(int32(start - seq)); off >= 0 && off <= len(p) {
				p = p[off:]
			}
			if ok, space := verbOnly(p, sawSpace); ok {
				s.verbLine[dir], s.verbEnd[dir], s.verbSpace[dir] = start, seq+plen, space
				here = false
			}
		}
		if cand && n > 0 && here && now.Sub(heldSince(h, now)) < maxHoldTotal {
			if h != nil && !joinedHeld {
				if err := w.join(c, s, dir, h, &p); err != nil {
					w.releaseOne(s, dir)
					h = nil
				} else {
					joinedHeld = true
				}
			}
			if joinedHeld {
				s.held[dir].id = p.ID
				s.held[dir].bytes = append(s.held[dir].bytes[:0], c.pkt.Bytes()...)
				s.held[dir].since = now // each new piece restarts the wait, up to maxHoldTotal
			} else {
				s.held[dir] = &held{outDev: c.outDev, id: p.ID, bytes: append([]byte(nil), c.pkt.Bytes()...), since: now, first: now}
			}
			w.holding[s] = struct{}{}
			w.m.pHold.Inc()
			return
		}
	}
	if joinedHeld {
		// The held packet's bytes travel in this one now.
		s.held[dir] = nil
		w.unholdIfDone(s)
	} else if h != nil && plen > 0 {
		// Keep the byte order: the held predecessor goes first, as it is.
		w.releaseOne(s, dir)
	}
	w.applyAndRelease(c, s, dir, p.ID)
	if s.closedAt.IsZero() && s.eng.Closed() {
		// Logged now; the state lingers to adjust retransmitted FINs and the last ACKs.
		s.closedAt = now
		w.logClose(s, closeReason(c.pkt.RST()))
		w.uncountClient(s) // a closed session lingers, but no longer counts against its client
	}
}

// needsHeld reports whether a decision of this packet refers to bytes before seq, i.e. in the
// held predecessor.
func (w *worker) needsHeld(c *pass, seq uint32) bool {
	for i := range c.dec {
		d := &c.dec[i]
		if d.Text.Len > 0 && seqLT(d.Text.Seq, seq) {
			return true
		}
		if d.Neutral.Len > 0 && seqLT(d.Neutral.Seq, seq) {
			return true
		}
	}
	return false
}

// join rewrites c.pkt (already decoded from p) into one packet carrying the held packet's
// payload followed by its own, drops the held packet and makes p carry both.
func (w *worker) join(c *pass, s *session, dir alg.Dir, h *held, p *queue.Packet) error {
	if err := w.hpkt.Decode(h.bytes); err != nil {
		return err
	}
	b, err := nat.Extend(&c.pkt, w.hpkt.Payload(), w.joined[:0])
	if err != nil || len(b) > w.maxLen(c) {
		// Joined, the two would not fit the egress MTU: they stay apart (the held one is
		// released first, as it is).
		return errJoinTooLarge
	}
	if err := c.pkt.Decode(b); err != nil {
		return err
	}
	w.joined = b
	if err := w.q.Drop(h.id); err != nil {
		w.m.queueErrors.Inc()
	}
	w.m.pDrop.Inc()
	// h now stands for the joined packet (p's ID) until a verdict is given.
	h.id = p.ID
	return nil
}

func (w *worker) heldRange(h *held) (uint32, uint32) {
	if err := w.hpkt.Decode(h.bytes); err != nil {
		return 0, 0
	}
	return w.hpkt.Seq(), w.hpkt.Seq() + uint32(len(w.hpkt.Payload()))
}

func (w *worker) applyAndRelease(c *pass, s *session, dir alg.Dir, id uint32) {
	d := nat.Original
	if dir == alg.FromServer {
		d = nat.Reply
	}
	out, changed, err := s.nat.Apply(&c.pkt, d, c.edits, w.maxLen(c), w.out[:0])
	if err != nil {
		w.logWarn(s.key, "rewrite", err)
		if c.adjDirty {
			// The kernel already shifts for a resize this packet will not carry: undo that
			// and drop the packet (TCP retransmits it; its command is lost, never wedged).
			w.restoreAdj(c, s, dir)
			w.drop(id)
			return
		}
		w.accept(id, nil, w.m.pAccept)
		return
	}
	if s.readjust && s.haveFlow == false && !s.eng.Closed() {
		// The connection's entry is new and not yet confirmed, so the kernel cannot carry the
		// adjustment for this packet: shift it here, once. The next packet finds the entry.
		if !changed {
			out = c.pkt.Bytes()
		}
		if b, err := nat.Shift(&c.pkt, out, s.adj[dir].SeqOffset(c.pkt.Seq()), -s.adj[1-dir].AckOffset(c.pkt.Ack()), w.shifted[:0]); err == nil {
			w.shifted = b
			out, changed = b, true
		}
	}
	if changed {
		w.accept(id, out, w.m.pModified)
	} else {
		w.accept(id, nil, w.m.pAccept)
	}
}

// restoreAdj registers again the adjustment direction dir had before this packet.
func (w *worker) restoreAdj(c *pass, s *session, dir alg.Dir) {
	c.adjDirty = false
	s.adj[dir] = c.adjBefore
	if err := w.k.SetSeqAdj(s.flow, w.ctDir(s, dir), c.adjBefore, false); err != nil {
		w.m.kernelErrors.WithLabelValues("set_seqadj").Inc()
		w.logWarn(s.key, "set_seqadj", err)
	}
}

// ctDir is the conntrack direction of the packets of direction dir: the client's are the
// original direction unless conntrack picked the connection up from a server packet (after a
// table flush).
func (w *worker) ctDir(s *session, dir alg.Dir) conntrack.Dir {
	clientOrig := !s.haveFlow || s.flow.Orig.Src == s.key.client || s.flow.Reply.Dst == s.key.client
	if (dir == alg.FromClient) == clientOrig {
		return conntrack.Original
	}
	return conntrack.Reply
}

func (w *worker) accept(id uint32, altered []byte, ctr interface{ Inc() }) {
	ctr.Inc()
	if err := w.q.Accept(id, altered); err != nil {
		w.m.queueErrors.Inc()
	}
}

func (w *worker) drop(id uint32) {
	w.m.pDrop.Inc()
	if err := w.q.Drop(id); err != nil {
		w.m.queueErrors.Inc()
	}
}

func (w *worker) dropHeld(s *session, dir alg.Dir) {
	h := s.held[dir]
	s.held[dir] = nil
	w.unholdIfDone(s)
	w.drop(h.id)
}

// releaseOne releases a held packet as it is (with the session's sequence adjustment).
func (w *worker) releaseOne(s *session, dir alg.Dir) {
	h := s.held[dir]
	s.held[dir] = nil
	w.unholdIfDone(s)
	// c.pkt may hold the packet being handled: use hpkt.
	if err := w.hpkt.Decode(h.bytes); err != nil {
		w.accept(h.id, nil, w.m.pAccept)
		return
	}
	d := nat.Original
	if dir == alg.FromServer {
		d = nat.Reply
	}
	out, changed, err := s.nat.Apply(&w.hpkt, d, nil, w.mtu(h.outDev, time.Now()), w.out[:0])
	switch {
	case err != nil:
		w.accept(h.id, h.bytes, w.m.pAccept)
	case changed:
		w.accept(h.id, out, w.m.pModified)
	default:
		w.accept(h.id, h.bytes, w.m.pAccept)
	}
}

func (w *worker) unholdIfDone(s *session) {
	if s.held[0] == nil && s.held[1] == nil {
		delete(w.holding, s)
	}
}

// releaseHeld releases held packets older than holdTimeout (all of them when all is set).
func (w *worker) releaseHeld(now time.Time, all bool) {
	for s := range w.holding {
		for dir := range s.held {
			if h := s.held[dir]; h != nil && (all || now.Sub(h.since) >= holdTimeout || now.Sub(h.first) >= maxHoldTotal) {
				w.releaseOne(s, alg.Dir(dir))
			}
		}
	}
}

func (w *worker) newSession(c *pass, key sessKey, syn bool) *session {
	var flow conntrack.Flow
	if !syn {
		// Met mid-stream (ftpalg restarted, or took over from another router): a session is
		// rebuilt only from a conntrack entry that existed before this packet. A stray or
		// spoofed packet finds none (its own entry, if the kernel made one, is not confirmed
		// yet) and leaves no state. (No negative cache here: the next packet of a connection
		// the kernel picked up mid-stream finds its entry confirmed.)
		f, err := w.lookup(c, key)
		if err != nil {
			if !errors.Is(err, conntrack.ErrNotFound) {
				w.m.kernelErrors.WithLabelValues("lookup").Inc()
			}
			return nil
		}
		flow = f
	}
	if len(w.sessions) >= maxSessions || w.perClient[clientKey(key.client.Addr())] >= maxPerClient {
		w.m.rejections.WithLabelValues("session_limit").Inc()
		if w.warn.allow(c.now, maxWarnLogs) {
			w.logEvent(evRejected, key, slog.String("reason", "session_limit"))
		}
		// The connection passes uninspected for its whole life: label its entry so that
		// its packets stop being queued (one look-up c.now instead of a queue traversal per
		// packet). Its conntrack entry exists: the handshake or an earlier packet made it.
		if syn {
			if f, err := w.k.LookupIn(conntrack.Tuple{Src: key.client, Dst: key.server}, key.zone); err == nil {
				flow = f
			}
		}
		if flow.Orig.IsValid() {
			if err := w.k.SetLabel(flow, rules.DefaultSkipLabel, true); err == nil {
				w.m.notes.WithLabelValues("unqueued_session_limit").Inc()
			}
		}
		return nil
	}
	if !syn {
		if _, known := w.zoneOf[key.ifc]; key.ifc != 0 && known {
			key.zone, key.ifc = flow.Zone, 0
		}
		if w.sessions[key] != nil {
			return nil
		}
	}
	s := &session{key: key, eng: alg.NewSession(key.client, key.server, &w.eng), lastSeen: c.now, midStream: !syn}
	w.sessions[key] = s
	w.countClient(s)
	w.m.sessions.Inc()
	w.m.sessionsTotal.Inc()
	if !syn {
		w.adoptFlow(s, flow)
	}
	if w.openLog.allow(c.now, maxOpenLogs) {
		attrs := []slog.Attr{slog.Int("worker", w.id), slog.Bool("restored", !syn), slog.Bool("adjusting", s.adjProven)}
		if n := w.openLog.takeDropped(); n > 0 {
			attrs = append(attrs, slog.Int("suppressed", n))
		}
		w.logEvent(evSessionOpen, key, attrs...)
	}
	return s
}

// clientKey is what the per-client limit counts by: the address, or its /64 for IPv6 (one
// subscriber's prefix holds 2^64 addresses).
func clientKey(a netip.Addr) netip.Addr {
	if a.Is4() || a.Is4In6() {
		return a.Unmap()
	}
	p, _ := a.Prefix(64)
	return p.Addr()
}

// lookup finds the conntrack entry of the connection key names: by hash look-ups in the zone
// learned for the packet's client-side interface (zone 0 until one is learned; an entry found
// there teaches it), else by a discovery across zones (a filtered dump: hairpin NAT, a zone not
// yet learned). A dump walks the kernel's whole conntrack table, every namespace's entries
// included (tens of milliseconds under a flood), so discoveries share a time budget:
// maxDiscoveryShare of the worker's time, measured, so that stray packets cannot make the
// worker walk the table per packet.
func (w *worker) lookup(c *pass, key sessKey) (conntrack.Flow, error) {
	seen := conntrack.Tuple{Src: key.client, Dst: key.server}
	zone, known := w.zoneOf[c.ifc]
	f, err := w.k.LookupIn(seen, zone)
	if err == nil {
		if !known && !w.zoneClaimed(0, c.ifc) {
			w.zoneOf[c.ifc] = 0
		}
		return f, nil
	}
	if !errors.Is(err, conntrack.ErrNotFound) || !w.discovery.allow(c.now) {
		return f, err
	}
	start := time.Now()
	defer func() { w.discovery.charge(time.Since(start)) }()
	fs, err := w.k.Discover(seen)
	if len(fs) > 1 {
		// Zones another interface's connections are known to be in are not this one's.
		free := fs[:0:0]
		for _, f := range fs {
			if !w.zoneClaimed(f.Zone, c.ifc) {
				free = append(free, f)
			}
		}
		if len(free) > 0 {
			fs = free
		}
	}
	switch {
	case err != nil:
		return conntrack.Flow{}, err
	case len(fs) > 1:
		// The same endpoints in several zones, and nothing yet says which one this
		// interface's packets are in: refuse rather than guess.
		w.m.notes.WithLabelValues("zone_ambiguous").Inc()
		return conntrack.Flow{}, fmt.Errorf("lookup %s: %d zones hold it: %w", seen, len(fs), conntrack.ErrNotFound)
	}
	w.zoneOf[c.ifc] = fs[0].Zone
	return fs[0], nil
}

// zoneClaimed reports whether another interface than ifc is known to carry zone's connections.
func (w *worker) zoneClaimed(zone uint16, ifc uint32) bool {
	for i, z := range w.zoneOf {
		if z == zone && i != ifc {
			return true
		}
	}
	return false
}

func (w *worker) lookupFlow(c *pass, s *session) {
	f, err := w.lookup(c, s.key)
	if err != nil {
		// Remembered: the next look-up waits lookupRetry, not the next packet.
		s.lookupMiss = c.now
		w.m.kernelErrors.WithLabelValues("lookup").Inc()
		return
	}
	w.adoptFlow(s, f)
}

// adoptFlow records the session's conntrack entry and what it says of the session's past.
func (w *worker) adoptFlow(s *session, f conntrack.Flow) {
	s.flow, s.haveFlow = f, true
	if _, known := w.zoneOf[s.key.ifc]; s.key.ifc != 0 && known && w.sessions[s.key] == s {
		// The session was keyed before its zone was known (the first connection of its
		// interface): key it by its zone from now on, as the interface's packets will be.
		nk := s.key
		nk.zone, nk.ifc = f.Zone, 0
		if w.sessions[nk] == nil {
			delete(w.sessions, s.key)
			s.key = nk
			w.sessions[nk] = s
		}
	}
	w.byOrig[origKey{f.Orig, f.Zone}] = s
	if a := f.Orig.Dst.Addr(); a != s.key.server.Addr() && a != s.key.client.Addr() {
		s.eng.SetServerAlias(a)
	}
	if s.readjust {
		w.readjust(s, f)
		return
	}
	if f.Adjusting && !s.adjProven {
		// A stream resized before this run (or on the other router): the kernel carries the
		// adjustment; later resizes build on it.
		for _, dir := range []alg.Dir{alg.FromClient, alg.FromServer} {
			a := f.SeqAdj[w.ctDir(s, dir)]
			s.adj[dir] = a
			d := nat.Original
			if dir == alg.FromServer {
				d = nat.Reply
			}
			s.nat.Restore(d, a.After)
		}
		s.adjProven = true
		// Only ftpalg resizes a control stream: the entry proves the dialogue was FTP.
		s.eng.Vouch()
	}
}

// stopQueueing labels the session's conntrack entry so that ftpalg's queue rules let its
// packets pass without queueing them (rules.DefaultSkipLabel): it is encrypted (TLS) or not
// FTP, and nothing in it will ever need ftpalg. A resized session stays queued: should its
// entry be flushed, ftpalg must see its next packet to carry the adjustment over.
func (w *worker) stopQueueing(c *pass, s *session, why string) {
	if !s.adj[0].IsZero() || !s.adj[1].IsZero() {
		return
	}
	if !s.haveFlow {
		w.lookupFlow(c, s)
		if !s.haveFlow {
			return
		}
	}
	if err := w.k.SetLabel(s.flow, rules.DefaultSkipLabel, true); err != nil {
		w.m.kernelErrors.WithLabelValues("set_label").Inc()
		return
	}
	w.m.notes.WithLabelValues("unqueued_" + why).Inc()
}

// readjust registers the session's adjustment on f, the entry the kernel created for a
// connection whose earlier entry (and adjustment) went away, before the packet that made it
// is released.
func (w *worker) readjust(s *session, f conntrack.Flow) {
	s.readjust = false
	if f.Adjusting {
		return // someone (conntrackd) restored it already
	}
	for _, dir := range []alg.Dir{alg.FromClient, alg.FromServer} {
		if s.adj[dir].IsZero() {
			continue
		}
		if err := w.k.SetSeqAdj(f, w.ctDir(s, dir), s.adj[dir], true); err != nil {
			w.m.kernelErrors.WithLabelValues("set_seqadj").Inc()
			w.logEvent(evError, s.key, slog.String("op", "restore_seqadj"), slog.String("err", err.Error()))
			return
		}
	}
	w.logEvent(evNote, s.key, slog.String("reason", "seqadj_restored"))
}

func (w *worker) removeSession(s *session, reason string) {
	for dir := range s.held {
		if s.held[dir] != nil {
			w.releaseOne(s, alg.Dir(dir))
		}
	}
	delete(w.sessions, s.key)
	if ok := (origKey{s.flow.Orig, s.flow.Zone}); s.haveFlow && w.byOrig[ok] == s {
		delete(w.byOrig, ok)
	}
	w.uncountClient(s)
	if reason != "shutdown" {
		// At shutdown the pinholes stay in the kernel: the next run adopts them.
		w.pins.sessionGone(s.key)
	}
	w.m.sessions.Dec()
	if !s.closeLogged {
		w.logClose(s, reason)
	}
}

func (w *worker) logClose(s *session, reason string) {
	s.closeLogged = true
	w.logEvent(evSessionClose, s.key, slog.String("reason", reason),
		slog.Int("rewrites", s.rewrites), slog.Int("pinholes", s.pinholes))
}

func closeReason(rst bool) string {
	if rst {
		return "rst"
	}
	return "fin"
}

// shake is a connection seen only in its handshake: the initial sequence numbers the session
// will need, nothing else.
type shake struct {
	cISN, sISN   uint32
	haveC, haveS bool
	born         time.Time
}

// handshake records a handshake packet of key's connection. The table is capped: when full,
// the oldest entry makes room (a real handshake completes, and its data flows, within a round
// trip, long before maxShakes newer SYNs push it out); entries expire after shakeTimeout.
func (w *worker) handshake(c *pass, key sessKey, hs shake, known bool, dir alg.Dir) {
	if !known {
		if !c.pkt.SYN() {
			return
		}
		if len(w.shakes) >= maxShakes {
			w.evictShake()
		}
		hs.born = c.now
		w.shakeQ = append(w.shakeQ, key)
	}
	if c.pkt.SYN() {
		if dir == alg.FromClient && !c.pkt.ACK() {
			if hs.haveC && hs.cISN != c.pkt.Seq() {
				hs = shake{born: c.now} // a new connection on the tuple
			}
			hs.cISN, hs.haveC = c.pkt.Seq(), true
		} else if dir == alg.FromServer {
			hs.sISN, hs.haveS = c.pkt.Seq(), true
		}
	}
	w.shakes[key] = hs
}

// evictShake forgets the oldest handshake still in the table.
func (w *worker) evictShake() {
	for len(w.shakeQ) > 0 {
		k := w.shakeQ[0]
		w.shakeQ = w.shakeQ[1:]
		if _, ok := w.shakes[k]; ok {
			delete(w.shakes, k)
			w.m.notes.WithLabelValues("handshake_evicted").Inc()
			return
		}
	}
}

// expireShakes forgets handshakes older than shakeTimeout and compacts the queue.
func (w *worker) expireShakes(now time.Time) {
	q := w.shakeQ[:0]
	for _, k := range w.shakeQ {
		if hs, ok := w.shakes[k]; ok {
			if now.Sub(hs.born) >= shakeTimeout {
				delete(w.shakes, k)
				continue
			}
			q = append(q, k)
		}
	}
	clear(w.shakeQ[len(q):])
	w.shakeQ = q
}

func (w *worker) countClient(s *session) {
	if !s.counted {
		s.counted = true
		w.perClient[clientKey(s.key.client.Addr())]++
	}
}

func (w *worker) uncountClient(s *session) {
	if !s.counted {
		return
	}
	s.counted = false
	c := clientKey(s.key.client.Addr())
	if w.perClient[c]--; w.perClient[c] <= 0 {
		delete(w.perClient, c)
	}
}

func (w *worker) control(m ctlMsg, now time.Time) {
	switch m.kind {
	case ctlRelease:
		if s := w.sessions[m.key]; s != nil {
			s.eng.Release()
		}
	case ctlFlowGone:
		s := w.byOrig[origKey{m.orig, m.zone}]
		if s == nil {
			return
		}
		if m.id != 0 && s.flow.ID != 0 && m.id != s.flow.ID {
			// The end of an earlier entry of the same 4-tuple (a TIME_WAIT entry the kernel
			// killed when a new connection reused the tuple): not this session's.
			return
		}
		if s.closedAt.IsZero() && s.adjProven && (!s.adj[0].IsZero() || !s.adj[1].IsZero()) {
			// The entry went (conntrack -F, table pressure) but the connection may live on,
			// its stream resized: keep what ftpalg knows of the adjustment for the entry the
			// kernel creates from the connection's next packet. If no packet comes, the sweep
			// finds no entry and forgets the session.
			delete(w.byOrig, origKey{m.orig, m.zone})
			s.haveFlow, s.readjust = false, true
			w.logEvent(evNote, s.key, slog.String("reason", "conntrack_gone_kept"))
			return
		}
		// The session's truth went with its entry. If the connection lives on, the kernel
		// picks it up from its next packet and so does ftpalg, as a session met mid-stream.
		w.removeSession(s, "conntrack_gone")
	}
}

// sweep forgets sessions that closed a while ago, and those whose conntrack entry is gone
// although no event said so (the kernel drops events when ftpalg's socket is full). A session
// is never forgotten on a timer while conntrack still tracks its connection: a control
// connection may stay silent for hours while its transfer runs, and its stream may be resized.
func (w *worker) sweep(now time.Time) {
	w.expireShakes(now)
	checks := 0
	for _, s := range w.sessions {
		switch {
		case !s.closedAt.IsZero() && now.Sub(s.closedAt) >= closedLinger:
			w.removeSession(s, "closed")
		case s.closedAt.IsZero() && now.Sub(s.lastSeen) >= idleCheck && checks < maxIdleChecks:
			checks++
			t := conntrack.Tuple{Src: s.key.client, Dst: s.key.server}
			if _, err := w.k.LookupIn(t, s.key.zone); errors.Is(err, conntrack.ErrNotFound) {
				w.removeSession(s, "conntrack_gone")
				continue
			}
			s.lastSeen = now // still tracked (or unknown): ask again after another idleCheck
		}
	}
}

// maxLen is the largest packet that may be released: the MTU of the output interface of the
// packet being handled (65535 for local delivery).
func (w *worker) maxLen(c *pass) int {
	return w.mtu(c.outDev, c.now)
}

// mtu returns the MTU of interface index i, cached.
func (w *worker) mtu(i uint32, now time.Time) int {
	if i == 0 {
		return maxPacket
	}
	if now.Sub(w.mtuAt) > mtuCacheRefresh {
		clear(w.mtus)
		w.mtuAt = now
	}
	if m, ok := w.mtus[i]; ok {
		return m
	}
	m := defaultMaxLen
	if ifc, err := net.InterfaceByIndex(int(i)); err == nil && ifc.MTU > 0 {
		m = ifc.MTU
	}
	w.mtus[i] = m
	return m
}

func (w *worker) logEvent(ev string, key sessKey, attrs ...slog.Attr) {
	w.log.LogAttrs(context.Background(), slog.LevelInfo, ev, append(key.attrs(), attrs...)...)
}

func (w *worker) logWarn(key sessKey, op string, err error) {
	if w.warn.allow(time.Now(), maxWarnLogs) {
		w.log.LogAttrs(context.Background(), slog.LevelWarn, evError,
			append(key.attrs(), slog.String("op", op), slog.String("err", err.Error()))...)
	}
}

// Sequence number comparisons that survive wrap-around at 2^32 (nat.Seq's).
func seqLT(a, b uint32) bool { return nat.Seq(a).LessThan(nat.Seq(b)) }
func seqLE(a, b uint32) bool { return nat.Seq(a).LessThanEq(nat.Seq(b)) }

// looksLikeLine reports whether a segment of direction d holds whole lines from its first
// byte: a command (a letter, or Telnet IAC before ABOR) or a reply (three digits), ending with
// LF.
func looksLikeLine(d alg.Dir, b []byte) bool {
	if len(b) < 4 || b[len(b)-1] != '\n' {
		return false
	}
	if d == alg.FromServer {
		return isDigit(b[0]) && isDigit(b[1]) && isDigit(b[2]) && (b[3] == ' ' || b[3] == '-')
	}
	c := b[0] | 0x20
	return ('a' <= c && c <= 'z') || b[0] == 0xff
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// verbOnly reports whether p, the (rest of the) partial line at the end of a segment, holds
// no argument byte: the verb or reply code and the spaces after it ("PORT ", "227 ");
// sawSpace says the verb already ended in an earlier segment. space reports whether the verb
// has ended. No rewrite can touch those bytes, so the segment need not be held: released, it
// is acknowledged at once and a sender with Nagle on sends the rest without waiting (holding
// it, ftpalg would wait for a segment that waits for it).
func verbOnly(p []byte, sawSpace bool) (ok, space bool) {
	i := 0
	if !sawSpace {
		for i < len(p) && p[i] != ' ' && p[i] != '\t' {
			i++
		}
	}
	space = sawSpace || i < len(p)
	for ; i < len(p); i++ {
		if p[i] != ' ' && p[i] != '\t' {
			return false, space
		}
	}
	return true, space
}

// budget is a time budget: it refills at maxDiscoveryShare of the wall clock, up to 100 ms, and
// allows work while it is positive; the work's measured duration is charged afterwards.
type budget struct {
	left time.Duration
	at   time.Time
}

const maxDiscoveryBurst = 100 * time.Millisecond

func (b *budget) allow(now time.Time) bool {
	if b.at.IsZero() {
		b.left, b.at = maxDiscoveryBurst, now
	}
	if d := now.Sub(b.at); d > 0 {
		b.left = min(b.left+time.Duration(float64(d)*maxDiscoveryShare), maxDiscoveryBurst)
		b.at = now
	}
	return b.left > 0
}

func (b *budget) charge(d time.Duration) { b.left -= d }
