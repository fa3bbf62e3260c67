package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/nat"
)

// decide carries out one engine decision for a packet whose (possibly joined) payload covers
// the original stream range [first, end).
func (w *worker) decide(c *pass, s *session, d *alg.Decision, first, end uint32) {
	switch d.Action {
	case alg.ActOpen:
		// The engine counts every ActOpen as a pending pinhole; when none is opened after
		// all, it must hear so, or the session soon refuses everything as over its limit.
		if reason, err := w.tryOpen(c, s, d, first, end); reason != "" {
			s.eng.Release()
			w.refuse(c, s, d, reason, err, first, end)
		}
	case alg.ActReject:
		if d.Reason == alg.ReasonBounce && d.Dir == alg.FromClient && w.fxp != nil &&
			w.fxp.match(fxpClient{s.key.zone, s.key.client.Addr()}, d.Endpoint, c.now) {
			// FXP: the client hands one server the endpoint another server announced to
			// it. The data connection runs between the two servers: nothing to open, the
			// command passes as it is.
			w.m.fxp.Inc()
			w.logEvent(evFXP, s.key, slog.String("cmd", d.Cmd.String()), slog.String("announced", d.Endpoint.String()))
			return
		}
		reason := d.Reason.String()
		w.m.rejections.WithLabelValues(reason).Inc()
		if d.Reason == alg.ReasonNotFTP {
			defer w.stopQueueing(c, s, "not_ftp")
		}
		attrs := []slog.Attr{slog.String("cmd", d.Cmd.String()), slog.String("reason", reason)}
		if d.Endpoint.IsValid() {
			attrs = append(attrs, slog.String("announced", d.Endpoint.String()))
		}
		if d.Neutral.Len > 0 {
			attrs = append(attrs, slog.String("action", w.neutralise(c, d, first, end)))
		}
		// A flood of refused commands is counted in full but logged at a bounded rate; the
		// next line that gets through says how many were left out. not_ftp comes once per
		// session and is always logged.
		if d.Reason == alg.ReasonNotFTP || s.rejLog.allow(c.now, maxRejectLogs) {
			if n := s.rejLog.takeDropped(); n > 0 {
				attrs = append(attrs, slog.Int("suppressed", n))
			}
			w.logEvent(evRejected, s.key, attrs...)
		}
	case alg.ActRefused:
		if w.pins.refused(s.key) {
			s.eng.Release()
		}
	case alg.ActTLS:
		w.logEvent(evTLS, s.key, slog.String("cmd", d.Cmd.String()))
		w.stopQueueing(c, s, "tls")
	case alg.ActNote:
		reason := d.Reason.String()
		w.m.notes.WithLabelValues(reason).Inc()
		if w.warn.allow(c.now, maxWarnLogs) {
			w.logEvent(evNote, s.key, slog.String("reason", reason), slog.String("dir", d.Dir.String()))
		}
	}
}

// neutralArg is the same-length replacement of an argument that must not reach the peer.
var neutralArg = bytes.Repeat([]byte("X"), 512)

// neutralise makes a refused command or reply harmless in the packet whose payload covers
// [first, end): its verb or reply code is overwritten (the peer answers 500, or sees 425). When
// the verb left in an earlier packet (a command split after its verb, released so that Nagle
// lets the rest go), its argument is overwritten instead: the peer cannot parse it. It returns
// the action for the log.
func (w *worker) neutralise(c *pass, d *alg.Decision, first, end uint32) string {
	switch {
	case inRange(d.Neutral, first, end):
		c.edits = append(c.edits, nat.Edit{Seq: d.Neutral.Seq, Len: d.Neutral.Len, New: []byte(d.NeutralWith)})
		return "neutralized"
	case d.Text.Len > 0 && d.Text.Len <= len(neutralArg) && inRange(d.Text, first, end):
		c.edits = append(c.edits, nat.Edit{Seq: d.Text.Seq, Len: d.Text.Len, New: neutralArg[:d.Text.Len]})
		return "neutralized"
	}
	return "passed_split"
}

func inRange(sp alg.Span, first, end uint32) bool {
	return seqLE(first, sp.Seq) && seqLE(sp.Seq+uint32(sp.Len), end)
}

// refuse counts and logs an announced endpoint that ftpalg could not carry, and neutralises
// the announcing command or reply like a refused one: the peer must not act on an endpoint no
// pinhole leads to, nor see an untranslated private address.
func (w *worker) refuse(c *pass, s *session, d *alg.Decision, reason string, err error, first, end uint32) {
	w.m.rejections.WithLabelValues(reason).Inc()
	attrs := []slog.Attr{slog.String("cmd", d.Cmd.String()), slog.String("reason", reason),
		slog.String("announced", d.Endpoint.String())}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	if d.Neutral.Len > 0 {
		attrs = append(attrs, slog.String("action", w.neutralise(c, d, first, end)))
	}
	if s.rejLog.allow(c.now, maxRejectLogs) {
		if n := s.rejLog.takeDropped(); n > 0 {
			attrs = append(attrs, slog.Int("suppressed", n))
		}
		w.logEvent(evRejected, s.key, attrs...)
	}
}

// tryOpen opens the pinhole for an accepted endpoint unless the session is over its rate. It
// returns the reason ("" when a pinhole was opened) and the kernel's error, if any.
func (w *worker) tryOpen(c *pass, s *session, d *alg.Decision, first, end uint32) (string, error) {
	if !s.pinRate.take(c.now, maxPinholeRate, maxPinholeBurst) {
		// A client announcing endpoints faster than any transfer could use them.
		return "rate_limit", nil
	}
	return w.open(c, s, d, first, end)
}

// open applies the pinhole rule (DESIGN.md) to an accepted endpoint E announced by the sender:
// the peer is told how it sees the sender (E'), the expectation peer → E' is created before the
// packet is released, with NAT back to the sender's own address when E' differs from it, and
// the text is rewritten when E' differs from what was announced. A rewrite that changes the
// length is registered in the kernel's sequence adjustment first; when the kernel will not
// carry it, nothing is opened.
func (w *worker) open(c *pass, s *session, d *alg.Decision, first, end uint32) (string, error) {
	if !s.haveFlow {
		w.lookupFlow(c, s)
	}
	if !s.haveFlow {
		return "no_conntrack", nil
	}
	f := s.flow
	e := d.Endpoint
	var peerSees, from, sender netip.Addr
	var natDir conntrack.Dir
	if d.Dir == alg.FromClient {
		// The server sees the client as the reply tuple's destination; the server connects from
		// its own address; the connection is redirected like the master's reply direction.
		peerSees, from, sender, natDir = f.Reply.Dst.Addr(), f.Reply.Src.Addr(), f.Orig.Src.Addr(), conntrack.Reply
	} else {
		peerSees, from, sender, natDir = f.Orig.Dst.Addr(), f.Orig.Src.Addr(), f.Reply.Src.Addr(), conntrack.Original
	}
	if d.Loose {
		// The sender announced another address and --loose lets it through: the pinhole goes
		// where it said (no translation can be derived for a third party).
		peerSees, sender = e.Addr(), e.Addr()
	}
	landing := netip.AddrPortFrom(sender, e.Port())
	to := netip.AddrPortFrom(peerSees, e.Port())
	exp := conntrack.Expectation{Zone: f.Zone, Master: f.Orig, Src: from, Timeout: w.cfg.PinholeTimeout}
	var err error
	for try := 0; try < maxPortTries; try++ {
		exp.Dst = to
		exp.NAT = to != landing
		exp.NATDir, exp.NATTo = 0, netip.AddrPort{}
		if exp.NAT {
			exp.NATDir, exp.NATTo = natDir, landing
		}
		if err = w.k.CreateExpect(exp); err == nil || !errors.Is(err, conntrack.ErrExist) {
			break
		}
		to = netip.AddrPortFrom(peerSees, nextPort(to.Port(), w.cfg.AllowLowPorts))
	}
	if err != nil {
		w.m.kernelErrors.WithLabelValues("create_expect").Inc()
		return "pinhole_failed", err
	}

	// The text changes when what the peer must use differs from what was announced: the
	// address (PORT, EPRT, 227) or only the port (all four, after a collision).
	rewrite := to.Port() != e.Port() || (d.Cmd != alg.Cmd229 && to.Addr() != e.Addr())
	if rewrite {
		if !inRange(d.Text, first, end) {
			// The announcing text was released before the line completed (a split the hold
			// could not join): the peer would act on the untranslated endpoint.
			w.deleteExpect(exp)
			return "unrewritable", nil
		}
		start := len(c.text)
		c.text = alg.AppendEndpoint(c.text, d, to)
		repl := c.text[start:]
		if delta := len(repl) - d.Text.Len; delta != 0 {
			if reason, err := w.resize(c, s, d.Dir, first, int32(delta)); reason != "" {
				c.text = c.text[:start]
				w.deleteExpect(exp)
				return reason, err
			}
		}
		c.edits = append(c.edits, nat.Edit{Seq: d.Text.Seq, Len: d.Text.Len, New: repl})
		s.rewrites++
		w.m.rewrites.WithLabelValues(d.Cmd.String()).Inc()
		w.logEvent(evRewrite, s.key, slog.String("cmd", d.Cmd.String()),
			slog.String("announced", e.String()), slog.String("to", to.String()),
			slog.Int("delta", len(repl)-d.Text.Len))
	}
	s.pinholes++
	if d.Dir == alg.FromServer && w.fxp != nil {
		// What the client was told, as it would hand it to another server (FXP).
		w.fxp.announced(fxpClient{s.key.zone, s.key.client.Addr()}, netip.AddrPortFrom(f.Orig.Dst.Addr(), to.Port()), c.now)
	}
	if replaced := w.pins.open(w, s.key, exp, d.Cmd.String(), d.Loose); replaced {
		s.eng.Release()
	}
	return "", nil
}

// resize registers, before the packet is released, that the stream of direction dir grows by
// delta bytes in the segment starting at first (the packet being handled, joined or not): the
// kernel then shifts every later packet of both directions. The first time for a session it
// reads the entry back to prove the kernel keeps it; a stream whose entry lacks the sequence
// adjustment extension is never resized ("no_seqadj"). A packet that would outgrow the egress
// MTU is refused too ("too_big"): ftpalg never fragments.
func (w *worker) resize(c *pass, s *session, dir alg.Dir, first uint32, delta int32) (string, error) {
	grown := int(delta)
	for i := range c.edits {
		grown += len(c.edits[i].New) - c.edits[i].Len
	}
	if n := len(c.pkt.Bytes()) + grown; grown > 0 && n > w.maxLen(c) {
		return "too_big", fmt.Errorf("%d-byte packet would become %d bytes (egress MTU %d)", len(c.pkt.Bytes()), n, w.maxLen(c))
	}
	next := s.adj[dir].Next(first, delta)
	if err := w.k.SetSeqAdj(s.flow, w.ctDir(s, dir), next, !s.adjProven); err != nil {
		if errors.Is(err, conntrack.ErrNoSeqAdj) {
			return "no_seqadj", err
		}
		w.m.kernelErrors.WithLabelValues("set_seqadj").Inc()
		return "seqadj_failed", err
	}
	if !c.adjDirty {
		c.adjDirty, c.adjBefore = true, s.adj[dir]
	}
	s.adj[dir], s.adjProven = next, true
	return "", nil
}

func (w *worker) deleteExpect(e conntrack.Expectation) {
	if err := w.k.DeleteExpect(e); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
		w.m.kernelErrors.WithLabelValues("delete_expect").Inc()
	}
}

// nextPort picks the next candidate port after a collision, staying in the allowed range.
func nextPort(p uint16, allowLow bool) uint16 {
	p++
	if p == 0 || (!allowLow && p < 1024) {
		p = 1024
	}
	return p
}
