package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/nat"
)

// decide carries out one engine decision for a packet whose (possibly joined) payload covers
// the original stream range [first, end).
func (w *worker) decide(s *session, d *alg.Decision, first, end uint32, now time.Time) {
	switch d.Action {
	case alg.ActOpen:
		// The engine counts every ActOpen as a pending pinhole; when none is opened after
		// all, it must hear so, or the session soon refuses everything as over its limit.
		if !w.tryOpen(s, d, first, end, now) {
			s.eng.Release()
		}
	case alg.ActReject:
		reason := d.Reason.String()
		w.m.rejections.WithLabelValues(reason).Inc()
		attrs := []slog.Attr{slog.String("cmd", d.Cmd.String()), slog.String("reason", reason)}
		if d.Endpoint.IsValid() {
			attrs = append(attrs, slog.String("announced", d.Endpoint.String()))
		}
		if d.Neutral.Len > 0 {
			if inRange(d.Neutral, first, end) {
				w.edits = append(w.edits, nat.Edit{Seq: d.Neutral.Seq, Len: d.Neutral.Len, New: []byte(d.NeutralWith)})
				attrs = append(attrs, slog.String("action", "neutralized"))
			} else {
				attrs = append(attrs, slog.String("action", "passed_split"))
			}
		}
		// A flood of refused commands is counted in full but logged at a bounded rate; the
		// next line that gets through says how many were left out.
		if s.rejLog.allow(now, maxRejectLogs) {
			if n := s.rejLog.takeDropped(); n > 0 {
				attrs = append(attrs, slog.Int("suppressed", n))
			}
			w.logEvent(evRejected, s.key, attrs...)
		}
	case alg.ActTLS:
		w.logEvent(evTLS, s.key, slog.String("cmd", d.Cmd.String()))
	case alg.ActNote:
		reason := d.Reason.String()
		w.m.notes.WithLabelValues(reason).Inc()
		if w.warn.allow(now, maxWarnLogs) {
			w.logEvent(evNote, s.key, slog.String("reason", reason), slog.String("dir", dirName(d.Dir)))
		}
	}
}

func dirName(d alg.Dir) string {
	if d == alg.FromServer {
		return "server"
	}
	return "client"
}

func inRange(sp alg.Span, first, end uint32) bool {
	return seqLE(first, sp.Seq) && seqLE(sp.Seq+uint32(sp.Len), end)
}

// tryOpen opens the pinhole for an accepted endpoint unless the session is over its rate; it
// reports whether a pinhole was opened.
func (w *worker) tryOpen(s *session, d *alg.Decision, first, end uint32, now time.Time) bool {
	if !s.pinRate.take(now, maxPinholeRate, maxPinholeBurst) {
		// A client announcing endpoints faster than any transfer could use them.
		w.m.rejections.WithLabelValues("rate_limit").Inc()
		if s.rejLog.allow(now, maxRejectLogs) {
			w.logEvent(evRejected, s.key, slog.String("cmd", d.Cmd.String()), slog.String("reason", "rate_limit"),
				slog.Int("burst", maxPinholeBurst), slog.Int("per_second", maxPinholeRate), slog.Int("suppressed", s.rejLog.takeDropped()))
		}
		return false
	}
	return w.open(s, d, first, end)
}

// open applies the pinhole rule (DESIGN.md) to an accepted endpoint E announced by the sender:
// the peer is told how it sees the sender (E'), the expectation peer → E' is created before the
// packet is released, with NAT back to the sender's own address when E' differs from it, and
// the text is rewritten when E' differs from what was announced.
func (w *worker) open(s *session, d *alg.Decision, first, end uint32) bool {
	if !s.haveFlow {
		w.lookupFlow(s)
	}
	if !s.haveFlow {
		w.m.rejections.WithLabelValues("no_conntrack").Inc()
		w.logEvent(evRejected, s.key, slog.String("cmd", d.Cmd.String()), slog.String("reason", "no_conntrack"),
			slog.String("announced", d.Endpoint.String()))
		return false
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
	exp := conntrack.Expectation{Master: f.Orig, Src: from, Timeout: w.cfg.PinholeTimeout}
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
		w.m.rejections.WithLabelValues("pinhole_failed").Inc()
		w.logEvent(evRejected, s.key, slog.String("cmd", d.Cmd.String()), slog.String("reason", "pinhole_failed"),
			slog.String("announced", e.String()), slog.String("err", err.Error()))
		return false
	}

	// The text changes when what the peer must use differs from what was announced: the
	// address (PORT, EPRT, 227) or only the port (all four, after a collision).
	rewrite := to.Port() != e.Port() || (d.Cmd != alg.Cmd229 && to.Addr() != e.Addr())
	if rewrite {
		if !inRange(d.Text, first, end) {
			// The announcing text was released before the line completed (a split the hold
			// could not join): the peer would act on the untranslated endpoint.
			w.deleteExpect(exp)
			w.m.rejections.WithLabelValues("unrewritable").Inc()
			w.logEvent(evRejected, s.key, slog.String("cmd", d.Cmd.String()), slog.String("reason", "unrewritable"),
				slog.String("announced", e.String()))
			return false
		}
		start := len(w.text)
		w.text = alg.AppendEndpoint(w.text, d, to)
		repl := w.text[start:]
		if len(repl) != d.Text.Len && !s.liberal {
			// Conntrack's window tracking would mark the resized stream INVALID (DESIGN.md).
			if err := w.k.SetLiberal(f); err != nil {
				w.m.kernelErrors.WithLabelValues("set_liberal").Inc()
				w.logEvent(evError, s.key, slog.String("op", "set_liberal"), slog.String("err", err.Error()))
			} else {
				s.liberal = true
			}
		}
		w.edits = append(w.edits, nat.Edit{Seq: d.Text.Seq, Len: d.Text.Len, New: repl})
		s.rewrites++
		w.m.rewrites.WithLabelValues(d.Cmd.String()).Inc()
		w.logEvent(evRewrite, s.key, slog.String("cmd", d.Cmd.String()),
			slog.String("announced", e.String()), slog.String("to", to.String()),
			slog.Int("delta", len(repl)-d.Text.Len))
	}
	s.pinholes++
	if replaced := w.pins.open(w, s.key, exp, d.Cmd.String(), d.Loose); replaced {
		s.eng.Release()
	}
	return true
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
