package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
)

// pinKey identifies a pinhole the way the data connection that uses it shows up: its source
// address and its (pre-NAT) destination.
type pinKey struct {
	src netip.Addr
	dst netip.AddrPort
}

type pinhole struct {
	key     pinKey
	exp     conntrack.Expectation
	w       *worker
	sess    sessKey
	cmd     string
	opened  time.Time
	expires time.Time
	timer   *time.Timer
}

// pinholes tracks the expectations ftpalg created: it deletes each at --pinhole-timeout (the
// kernel's own timeout, the carrier's policy, is only the backstop if ftpalg dies), reports
// their use from conntrack events, and tells the owning worker when one is gone. It is called
// per command and per event, never per packet, so a mutex is fine.
type pinholes struct {
	ctx     context.Context
	k       kernel
	log     *slog.Logger
	m       *metrics
	timeout time.Duration
	now     func() time.Time

	mu     sync.Mutex
	byKey  map[pinKey]*pinhole
	bySess map[sessKey]*pinhole // the pending one per session: the carrier allows one
}

func newPinholes(ctx context.Context, k kernel, log *slog.Logger, m *metrics, timeout time.Duration) *pinholes {
	return &pinholes{
		ctx: ctx, k: k, log: log, m: m, timeout: timeout, now: time.Now,
		byKey:  make(map[pinKey]*pinhole),
		bySess: make(map[sessKey]*pinhole),
	}
}

func (p *pinholes) attrs(ph *pinhole, extra ...slog.Attr) []slog.Attr {
	a := append(ph.sess.attrs(),
		slog.String("cmd", ph.cmd),
		slog.String("from", ph.exp.Src.String()),
		slog.String("to", ph.exp.Dst.String()))
	if ph.exp.NAT {
		a = append(a, slog.String("nat_to", ph.exp.NATTo.String()))
	}
	return append(a, extra...)
}

// open records a pinhole just created by worker w for session sess. It reports whether an
// earlier pending pinhole of the same session was replaced (the kernel evicts it: the carrier
// policy allows one pending expectation per master); the caller releases it in its engine.
func (p *pinholes) open(w *worker, sess sessKey, exp conntrack.Expectation, cmd string, loose bool) (replaced bool) {
	now := p.now()
	ph := &pinhole{
		key: pinKey{src: exp.Src, dst: exp.Dst}, exp: exp, w: w, sess: sess, cmd: cmd,
		opened: now, expires: now.Add(p.timeout),
	}
	p.mu.Lock()
	old := p.bySess[sess]
	if old != nil {
		p.removeLocked(old)
	}
	prev := p.byKey[ph.key]
	if prev != nil {
		// The kernel refused a duplicate tuple, so the earlier one is gone (used or expired
		// with its event still on the way): its session must hear it.
		p.removeLocked(prev)
	}
	p.byKey[ph.key] = ph
	p.bySess[sess] = ph
	ph.timer = time.AfterFunc(p.timeout, func() { p.expire(ph) })
	p.mu.Unlock()
	if prev != nil && prev != old {
		prev.release(p.ctx)
	}

	if old != nil {
		p.m.pinholesClosed.WithLabelValues("replaced").Inc()
		p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeClosed, p.attrs(old, slog.String("reason", "replaced"))...)
	}
	p.m.pinholesOpened.Inc()
	extra := []slog.Attr{slog.String("expires", ph.expires.UTC().Format(time.RFC3339Nano))}
	if loose {
		extra = append(extra, slog.Bool("loose", true))
	}
	p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeOpen, p.attrs(ph, extra...)...)
	return old != nil
}

func (p *pinholes) removeLocked(ph *pinhole) {
	ph.timer.Stop()
	if p.byKey[ph.key] == ph {
		delete(p.byKey, ph.key)
	}
	if p.bySess[ph.sess] == ph {
		delete(p.bySess, ph.sess)
	}
}

// take removes and returns the pinhole if it is still tracked.
func (p *pinholes) take(match func() *pinhole) *pinhole {
	p.mu.Lock()
	defer p.mu.Unlock()
	ph := match()
	if ph != nil {
		p.removeLocked(ph)
	}
	return ph
}

// expire deletes an unused pinhole at --pinhole-timeout.
func (p *pinholes) expire(ph *pinhole) {
	got := p.take(func() *pinhole {
		if p.byKey[ph.key] == ph {
			return ph
		}
		return nil
	})
	if got == nil {
		return
	}
	err := p.k.DeleteExpect(ph.exp)
	switch {
	case err == nil:
		p.m.pinholesExp.Inc()
		p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeExpired, p.attrs(ph)...)
	case errors.Is(err, conntrack.ErrNotFound):
		// Used (its conntrack event may still be on the way) or gone with its master.
	default:
		p.m.kernelErrors.WithLabelValues("delete_expect").Inc()
		p.log.LogAttrs(p.ctx, slog.LevelWarn, evError, p.attrs(ph, slog.String("op", "delete_expect"), slog.String("err", err.Error()))...)
	}
	ph.release(p.ctx)
}

// release tells the owning worker that the pinhole is gone (adopted pinholes have none).
func (ph *pinhole) release(ctx context.Context) {
	if ph.w != nil {
		ph.w.send(ctx, ctlMsg{kind: ctlRelease, key: ph.sess})
	}
}

// used handles a new conntrack entry that has a master: a data connection through a pinhole.
func (p *pinholes) used(f conntrack.Flow) {
	key := pinKey{src: f.Orig.Src.Addr(), dst: f.Orig.Dst}
	ph := p.take(func() *pinhole { return p.byKey[key] })
	if ph == nil {
		return
	}
	p.m.pinholesUsed.Inc()
	p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeUsed, p.attrs(ph, slog.String("data", f.Orig.Src.String()+" -> "+f.Orig.Dst.String()))...)
	ph.release(p.ctx)
}

// refused closes the session's pending pinhole at once when the server refused (4xx/5xx) the
// PORT/EPRT that opened it: nothing will use it. It reports whether one was closed.
func (p *pinholes) refused(sess sessKey) bool {
	ph := p.take(func() *pinhole {
		if ph := p.bySess[sess]; ph != nil && (ph.cmd == "PORT" || ph.cmd == "EPRT") {
			return ph
		}
		return nil
	})
	if ph == nil {
		return false
	}
	if err := p.k.DeleteExpect(ph.exp); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
		p.m.kernelErrors.WithLabelValues("delete_expect").Inc()
	}
	p.m.pinholesClosed.WithLabelValues("refused").Inc()
	p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeClosed, p.attrs(ph, slog.String("reason", "refused"))...)
	return true
}

// sessionGone forgets the session's pending pinhole: the kernel removes a master's
// expectations with it.
func (p *pinholes) sessionGone(sess sessKey) {
	ph := p.take(func() *pinhole { return p.bySess[sess] })
	if ph == nil {
		return
	}
	p.m.pinholesClosed.WithLabelValues("session_closed").Inc()
	p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeClosed, p.attrs(ph, slog.String("reason", "session_closed"))...)
}

// carrierTimeout is the kernel's own timeout of a pinhole: the carrier helper's policy.
const carrierTimeout = 300 * time.Second

// adopt takes over pinholes an earlier run left in the kernel (a restart, or conntrackd's
// expectation sync on a backup router): each is deleted at --pinhole-timeout after it was
// opened, its age known from the time the kernel has left on it.
func (p *pinholes) adopt(exps []conntrack.Expectation) {
	now := p.now()
	for _, e := range exps {
		if !e.NAT {
			p.repair(e) // adopts it once repaired (or needing no NAT, below)
		}
		age := carrierTimeout - e.Timeout
		left := max(p.timeout-age, 0)
		sess := sessKey{client: e.Master.Src, server: e.Master.Dst, zone: e.Zone}
		ph := &pinhole{key: pinKey{src: e.Src, dst: e.Dst}, exp: e, sess: sess, cmd: "adopted",
			opened: now.Add(-age), expires: now.Add(left)}
		p.mu.Lock()
		if p.byKey[ph.key] != nil {
			p.mu.Unlock()
			continue
		}
		p.byKey[ph.key] = ph
		ph.timer = time.AfterFunc(left, func() { p.expire(ph) })
		p.mu.Unlock()
		p.log.LogAttrs(p.ctx, slog.LevelInfo, evPinholeOpen, p.attrs(ph,
			slog.String("expires", ph.expires.UTC().Format(time.RFC3339Nano)), slog.Bool("adopted", true))...)
	}
}

// repair gives back its NAT to a pinhole that reached this router without it, as conntrackd
// replicates expectations from the other router of a pair (it keeps neither the NAT tuple nor
// the expectation function), and adopts it. The NAT follows the pinhole rule (DESIGN.md): a
// pinhole to the address the server sees the client as (the master's reply destination)
// lands on the client's own address; one to the address the client connected to (the
// master's original destination) lands on the server's; same port. Pinholes ftpalg created
// itself, and those that need no NAT, are left alone.
func (p *pinholes) repair(e conntrack.Expectation) {
	if e.NAT {
		return
	}
	p.mu.Lock()
	_, known := p.byKey[pinKey{src: e.Src, dst: e.Dst}]
	p.mu.Unlock()
	if known {
		return
	}
	f, err := p.k.LookupIn(e.Master, e.Zone)
	if err != nil || f.Helper != conntrack.CarrierHelper && f.Helper != "" {
		return
	}
	fixed := e
	switch a := e.Dst.Addr(); {
	case a == f.Reply.Dst.Addr() && a != f.Orig.Src.Addr():
		fixed.NAT, fixed.NATDir, fixed.NATTo = true, conntrack.Reply, netip.AddrPortFrom(f.Orig.Src.Addr(), e.Dst.Port())
	case a == f.Orig.Dst.Addr() && a != f.Reply.Src.Addr():
		fixed.NAT, fixed.NATDir, fixed.NATTo = true, conntrack.Original, netip.AddrPortFrom(f.Reply.Src.Addr(), e.Dst.Port())
	default:
		return
	}
	if err := p.k.DeleteExpect(e); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
		p.m.kernelErrors.WithLabelValues("delete_expect").Inc()
		return
	}
	fixed.Timeout = p.timeout
	if err := p.k.CreateExpect(fixed); err != nil {
		p.m.kernelErrors.WithLabelValues("create_expect").Inc()
		p.log.LogAttrs(p.ctx, slog.LevelWarn, evError, slog.String("op", "repair_pinhole"),
			slog.String("pinhole", e.String()), slog.String("err", err.Error()))
		return
	}
	fixed.Timeout = e.Timeout
	p.adopt([]conntrack.Expectation{fixed})
}

// stopAll stops the timers at shutdown and leaves the pinholes in the kernel: a data
// connection announced just before a restart still gets through, and the next run adopts
// what is left (the kernel's own timeout is the backstop meanwhile).
func (p *pinholes) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ph := range p.byKey {
		ph.timer.Stop()
	}
	clear(p.byKey)
	clear(p.bySess)
}

// closeAll deletes every pinhole ftpalg tracks (cleanup and tests).
func (p *pinholes) closeAll() {
	p.mu.Lock()
	all := make([]*pinhole, 0, len(p.byKey))
	for _, ph := range p.byKey {
		all = append(all, ph)
	}
	for _, ph := range all {
		p.removeLocked(ph)
	}
	p.mu.Unlock()
	for _, ph := range all {
		if err := p.k.DeleteExpect(ph.exp); err != nil && !errors.Is(err, conntrack.ErrNotFound) {
			p.m.kernelErrors.WithLabelValues("delete_expect").Inc()
		}
		p.m.pinholesClosed.WithLabelValues("shutdown").Inc()
		p.log.LogAttrs(context.Background(), slog.LevelInfo, evPinholeClosed, p.attrs(ph, slog.String("reason", "shutdown"))...)
	}
}
