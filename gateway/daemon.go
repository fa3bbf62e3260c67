package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/queue"
	"github.com/ftpalg/ftpalg/conntrack/rules"
)

// Daemon is ftpalg's packet path: the queues, one worker per queue, the pinholes, the
// conntrack events, metrics and health. New makes one; Run serves until its context ends.
type Daemon struct {
	cfg     *Config
	log     *slog.Logger
	m       *metrics
	healthy atomic.Bool
}

// New returns a daemon for cfg that logs to log (one event per line).
func New(cfg *Config, log *slog.Logger) (*Daemon, error) {
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	d := &Daemon{cfg: cfg, log: log, m: newMetrics(cfg.Version)}
	d.m.reg.MustRegister(newQueueCollector(cfg.Queue, cfg.Queues))
	return d, nil
}

// Register adds a collector to the daemon's metrics (cmd/ftpalg registers the log queue's).
func (d *Daemon) Register(c prometheus.Collector) { d.m.reg.MustRegister(c) }

// Run installs the ruleset, serves the queues until ctx ends, then shuts down in order: let the
// workers give a verdict to every packet they hold, close the queues, close the conntrack
// sockets. The ruleset stays (DESIGN.md): a control connection opened while ftpalg restarts
// still gets its carrier helper, and with --fail-open=false its packets wait in the kernel
// instead of passing uninspected. The sessions' sequence adjustments and the pinholes stay in
// the kernel too; the next run finds them there. `ftpalg cleanup` removes everything.
func (d *Daemon) Run(ctx context.Context) error {
	rcfg := d.cfg.Rules()
	ct, err := conntrack.Dial()
	if err != nil {
		return fmt.Errorf("conntrack: %w", err)
	}
	defer ct.Close()
	// Subscribe before the rules exist: the kernel reports the end of a connection only to
	// listeners that were there when it began.
	// Only the events of ftpalg's own connections: a socket filter in the kernel drops those
	// of the router's other traffic before they cost a wake-up.
	events, err := ct.SubscribeFiltered(conntrack.EventFilter{Ports: d.cfg.Ports, NewExpectations: true})
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	defer events.Close()

	// A table left by an earlier run stays until Install replaces it in one batch: with
	// --fail-open=false its rules keep holding control packets back (nobody reads the
	// queues) instead of letting them through uninspected for a moment.

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	pins := newPinholes(runCtx, ct, d.log, d.m, d.cfg.PinholeTimeout)
	// Pinholes an earlier run opened are still in the kernel: ftpalg's timeout applies to
	// them too.
	if exps, err := ct.ListExpect(); err != nil {
		d.log.Warn(evError, "op", "list_expect", "err", err.Error())
	} else {
		pins.adopt(exps)
	}

	var queues []*queue.Queue
	defer func() {
		for _, q := range queues {
			q.Close()
		}
	}()
	workers := make([]*worker, d.cfg.Queues)
	fxp := newFXPBook(d.cfg.PinholeTimeout)
	for i := range workers {
		// A ctnetlink socket per worker: look-ups, expectations and adjustments of one
		// queue never wait behind another's (a netlink socket serialises its requests).
		wct, err := conntrack.Dial()
		if err != nil {
			return fmt.Errorf("conntrack for worker %d: %w", i, err)
		}
		defer wct.Close()
		workers[i] = newWorker(i, d.cfg, wct, nil, pins, d.log, d.m)
		workers[i].fxp = fxp
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

	if err := rules.Install(rcfg); err != nil {
		if srv != nil {
			srv.Close()
		}
		stopRun()
		g.Wait()
		return fmt.Errorf("install nftables table %q: %w", rcfg.Table, err)
	}

	d.healthy.Store(true)
	d.log.Info(evReady, "ports", d.cfg.Ports, "queue", d.cfg.Queue, "queues", d.cfg.Queues,
		"fail_open", d.cfg.FailOpen, "pinhole_timeout", d.cfg.PinholeTimeout.String(), "version", d.cfg.Version)

	var runErr error
	select {
	case <-ctx.Done():
	case <-gctx.Done():
		runErr = g.Wait()
	}
	d.healthy.Store(false)
	d.log.Info(evShutdown, "table", "inet "+rcfg.Table, "table_kept", true,
		"note", "the nftables table stays so that new control connections keep their carrier helper"+
			" (and, with --fail-open=false, their packets wait); 'ftpalg cleanup' removes it")
	stopRun()
	if err := g.Wait(); err != nil && runErr == nil {
		runErr = err
	}
	pins.stopAll()
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

// bindQueue opens queue num for worker w and runs it until ctx ends; done reports how Run
// ended. Binding sends several configuration requests and reads each reply on the socket the
// packets arrive on: when a stale table already queues packets, one can be read in place of a
// reply and the bind fails. It is then retried on a fresh socket (the packets meanwhile are
// let through or held back as --fail-open says). EPERM (another program holds the queue) is
// final.
func (d *Daemon) bindQueue(ctx context.Context, num uint16, w *worker) (*queue.Queue, <-chan error, error) {
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

func (d *Daemon) metricsServer() *http.Server {
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
func (d *Daemon) onEvent(ctx context.Context, ev conntrack.Event, pins *pinholes, workers []*worker) {
	switch ev.Kind {
	case conntrack.FlowNew:
		if ev.Flow.Master != nil {
			pins.used(ev.Flow)
		}
	case conntrack.ExpectNew:
		pins.repair(ev.Expect)
	case conntrack.EventsLost:
		d.m.kernelErrors.WithLabelValues("events_lost").Inc()
		d.log.Warn(evError, "op", "conntrack_events", "err", "kernel dropped events: pinhole_used or session ends may be missing")
	case conntrack.FlowDestroy:
		if !d.isControl(ev.Flow) {
			return
		}
		for _, w := range workers {
			w.send(ctx, ctlMsg{kind: ctlFlowGone, orig: ev.Flow.Orig, zone: ev.Flow.Zone, id: ev.Flow.ID})
		}
	}
}

// isControl reports whether f may be a control connection (cheap filter before fan-out).
func (d *Daemon) isControl(f conntrack.Flow) bool {
	for _, p := range d.cfg.Ports {
		if f.Orig.Dst.Port() == p || f.Reply.Src.Port() == p {
			return true
		}
	}
	return false
}
