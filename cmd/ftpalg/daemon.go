package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
	"github.com/ftpalg/ftpalg/conntrack/rules"
)

type daemon struct {
	cfg     *config
	log     *slog.Logger
	m       *metrics
	healthy atomic.Bool
}

func newDaemon(cfg *config, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log, m: newMetrics()}
	d.m.reg.MustRegister(newQueueCollector(cfg.Queue, cfg.Queues))
	return d, nil
}

// Run installs the ruleset, serves the queues until ctx ends, then shuts down in order: remove
// the ruleset (no new packets are queued), let the workers give a verdict to every packet they
// hold, close the queues, delete the pinholes still open, close the conntrack sockets.
func (d *daemon) Run(ctx context.Context) error {
	rcfg := d.cfg.rules()
	ct, err := conntrack.Dial()
	if err != nil {
		return fmt.Errorf("conntrack: %w", err)
	}
	defer ct.Close()
	// Subscribe before the rules exist: the kernel reports the end of a connection only to
	// listeners that were there when it began.
	events, err := ct.Subscribe()
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	defer events.Close()

	// A table left by a crashed run stays until Install replaces it in one batch: with
	// --fail-open=false its rules keep holding control packets back (nobody reads the
	// queues) instead of letting them through uninspected for a moment.
	removed := false
	removeRules := func() {
		if removed {
			return
		}
		removed = true
		if err := rules.Remove(rcfg); err != nil {
			d.log.Error(evError, "op", "remove_ruleset", "err", err.Error())
		}
	}
	defer removeRules()

	// Workers and queues live in their own context so that the ruleset is removed before they
	// stop reading: a packet queued with nobody reading would be dropped.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	pins := newPinholes(runCtx, ct, d.log, d.m, d.cfg.PinholeTimeout)
	st := d.openState(ct)
	if st != nil {
		// File writes off the packet path, finished before Run returns (after the workers
		// saved their sessions at shutdown).
		st.ops = make(chan stateOp, 4096)
		written := make(chan struct{})
		go func() {
			st.writer(func(err error) { d.log.Warn(evError, "op", "save_state", "err", err.Error()) })
			close(written)
		}()
		defer func() { close(st.ops); <-written }()
	}

	var queues []*queue.Queue
	defer func() {
		for _, q := range queues {
			q.Close()
		}
	}()
	workers := make([]*worker, d.cfg.Queues)
	for i := range workers {
		workers[i] = newWorker(i, d.cfg, ct, nil, pins, d.log, d.m)
		workers[i].st = st
	}

	g, gctx := errgroup.WithContext(runCtx)
	for _, w := range workers {
		g.Go(func() error { return w.run(gctx) })
	}
	g.Go(func() error {
		err := events.Run(gctx, func(ev conntrack.Event) { d.onEvent(gctx, ev, pins, workers) })
		if err != nil && gctx.Err() == nil {
			return fmt.Errorf("conntrack events: %w", err)
		}
		return nil
	})
	// The rules go in only once every queue is bound.
	for _, w := range workers {
		num := d.cfg.Queue + uint16(w.id)
		q, done, err := d.bindQueue(gctx, num, w)
		if err != nil {
			stopRun()
			g.Wait()
			return err
		}
		queues = append(queues, q)
		g.Go(func() error {
			if err := <-done; err != nil && gctx.Err() == nil {
				return fmt.Errorf("queue %d: %w", num, err)
			}
			return nil
		})
	}
	if err := rules.Install(rcfg); err != nil {
		stopRun()
		g.Wait()
		return fmt.Errorf("install nftables table %q: %w", rcfg.Table, err)
	}

	var srv *http.Server
	if d.cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", d.cfg.MetricsListen)
		if err != nil {
			stopRun()
			g.Wait()
			return fmt.Errorf("metrics listener: %w", err)
		}
		srv = d.metricsServer()
		go srv.Serve(ln)
	}

	d.healthy.Store(true)
	d.log.Info(evReady, "ports", d.cfg.Ports, "queue", d.cfg.Queue, "queues", d.cfg.Queues,
		"fail_open", d.cfg.FailOpen, "pinhole_timeout", d.cfg.PinholeTimeout.String(), "version", version)

	var runErr error
	select {
	case <-ctx.Done():
	case <-gctx.Done():
		runErr = g.Wait()
	}
	d.healthy.Store(false)
	d.log.Info(evShutdown)
	removeRules()
	stopRun()
	if err := g.Wait(); err != nil && runErr == nil {
		runErr = err
	}
	pins.closeAll()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		srv.Shutdown(sctx)
		cancel()
	}
	if errors.Is(runErr, context.Canceled) {
		runErr = nil
	}
	return runErr
}

// openState loads the sessions an earlier run left (restart persistence, see state.go) and
// drops those whose control connection is gone. Without a usable directory ftpalg runs on,
// without persistence, and says so.
func (d *daemon) openState(ct *conntrack.Conn) *stateStore {
	dir, err := stateDir()
	var st *stateStore
	var n int
	if err == nil {
		st, n, err = openState(dir, time.Now())
	}
	if err != nil {
		d.log.Warn(evError, "op", "state", "err", err.Error(), "effect", "sessions rewritten before a restart will not survive it")
		return nil
	}
	gone := 0
	for k := range st.restore {
		if _, err := ct.Lookup(conntrack.Tuple{Src: k.client, Dst: k.server}); errors.Is(err, conntrack.ErrNotFound) {
			st.claim(k)
			st.remove(k)
			gone++
		}
	}
	if n > 0 {
		d.log.Info("state_loaded", "dir", dir, "sessions", n-gone, "gone", gone)
	}
	return st
}

// bindQueue opens queue num for worker w and runs it until ctx ends; done reports how Run
// ended. Binding sends several configuration requests and reads each reply on the socket the
// packets arrive on: when a stale table already queues packets, one can be read in place of a
// reply and the bind fails. It is then retried on a fresh socket (the packets meanwhile are
// let through or held back as --fail-open says). EPERM (another program holds the queue) is
// final.
func (d *daemon) bindQueue(ctx context.Context, num uint16, w *worker) (*queue.Queue, <-chan error, error) {
	const attempts = 5
	var err error
	for i := 1; i <= attempts; i++ {
		var q *queue.Queue
		if q, err = queue.Open(queue.Config{Num: num, FailOpen: d.cfg.FailOpen}); err != nil {
			return nil, nil, err
		}
		w.q = q // before Run: the worker sees packets only from this Run
		done := make(chan error, 1)
		go func() {
			done <- q.Run(ctx, w.enqueue, func(err error) {
				d.m.queueErrors.Inc()
				d.log.Warn(evError, "op", "queue_receive", "queue", num, "err", err.Error())
			})
		}()
		select {
		case <-q.Bound():
			return q, done, nil
		case err = <-done:
		case <-ctx.Done():
			q.Close()
			return nil, nil, ctx.Err()
		}
		q.Close()
		if err == nil || errors.Is(err, unix.EPERM) {
			break
		}
		d.log.Warn(evError, "op", "queue_bind", "queue", num, "attempt", i, "err", err.Error())
	}
	if err == nil {
		err = errors.New("not bound")
	}
	return nil, nil, fmt.Errorf("queue %d: %w", num, err)
}

func (d *daemon) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if !d.healthy.Load() {
			http.Error(w, "not running", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// onEvent routes conntrack events: a new connection with a master used a pinhole; a destroyed
// control connection ends its session in whichever worker owns it.
func (d *daemon) onEvent(ctx context.Context, ev conntrack.Event, pins *pinholes, workers []*worker) {
	switch ev.Kind {
	case conntrack.FlowNew:
		if ev.Flow.Master != nil {
			pins.used(ev.Flow)
		}
	case conntrack.EventsLost:
		d.m.kernelErrors.WithLabelValues("events_lost").Inc()
		d.log.Warn(evError, "op", "conntrack_events", "err", "kernel dropped events: pinhole_used or session ends may be missing")
	case conntrack.FlowDestroy:
		if !d.isControl(ev.Flow) {
			return
		}
		for _, w := range workers {
			w.send(ctx, ctlMsg{kind: ctlFlowGone, orig: ev.Flow.Orig})
		}
	}
}

// isControl reports whether f may be a control connection (cheap filter before fan-out).
func (d *daemon) isControl(f conntrack.Flow) bool {
	for _, p := range d.cfg.Ports {
		if f.Orig.Dst.Port() == p || f.Reply.Src.Port() == p {
			return true
		}
	}
	return false
}
