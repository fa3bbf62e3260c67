package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Event is one JSON log line of ftpalg.
type Event map[string]any

// Name is the "event" key.
func (e Event) Name() string { return e.Str("event") }

// Str returns a key as a string ("" when absent or not a string).
func (e Event) Str(k string) string {
	s, _ := e[k].(string)
	return s
}

// AddrPort parses a key holding "addr:port" (zero value when absent or unparsable).
func (e Event) AddrPort(k string) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(e.Str(k))
	return ap
}

// Addr parses a key holding an address, or the address of an "addr:port".
func (e Event) Addr(k string) netip.Addr {
	s := e.Str(k)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr()
	}
	a, _ := netip.ParseAddr(s)
	return a
}

// String returns the line as JSON.
func (e Event) String() string {
	b, _ := json.Marshal(map[string]any(e))
	return string(b)
}

// Daemon is a running `ftpalg run` in a router namespace.
type Daemon struct {
	Args   []string
	Proc   *Proc
	Stderr *SyncBuffer
	Role   Role // the router it runs on
	lab    *Lab

	mu     sync.Mutex
	events []Event
	lines  []string // every stdout line, also non-JSON ones
	notify chan struct{}
}

// DefaultFtpalgArgs are the flags of the contract: `run --ports 21 --pinhole-timeout 30s
// --log-format json`.
func DefaultFtpalgArgs() []string {
	return []string{"run", "--ports", "21", "--pinhole-timeout", "30s", "--log-format", "json"}
}

// StartFtpalg runs the daemon binary in the router namespace with args (DefaultFtpalgArgs when
// nil) and waits until it is ready: a line with "event":"ready". (The table's presence is no
// sign: after a kill -9 the old table stays until the new run replaces it.)
func (l *Lab) StartFtpalg(ctx context.Context, bin string, args []string) (*Daemon, error) {
	return l.StartFtpalgIn(ctx, Router, bin, args)
}

// StartFtpalgIn is StartFtpalg on router r (a router of the HA lab: Router1, Router2). Each
// router has its own restart-state directory.
func (l *Lab) StartFtpalgIn(ctx context.Context, r Role, bin string, args []string) (*Daemon, error) {
	if args == nil {
		args = DefaultFtpalgArgs()
	}
	d := &Daemon{Args: args, Stderr: &SyncBuffer{}, Role: r, lab: l, notify: make(chan struct{})}
	pr, pw := io.Pipe()
	name, argv, err := l.ftpalgCommand(r, bin, args)
	if err != nil {
		return nil, err
	}
	p, err := l.Start(r, pw, d.Stderr, name, argv...)
	if err != nil {
		return nil, err
	}
	d.Proc = p
	go d.read(pr)
	go func() {
		<-p.Done()
		pw.Close()
	}()
	return d, d.afterStart(ctx)
}

// FtpalgCommand returns the command line that runs ftpalg in this lab: the binary with args,
// its RUNTIME_DIRECTORY (restart state) set to a directory of the lab's own, the same for every
// run in the lab (a restarted ftpalg takes the sessions over) and removed by Close, so that
// nothing is left under the host's /run/ftpalg.
func (l *Lab) FtpalgCommand(bin string, args []string) (string, []string, error) {
	return l.ftpalgCommand(Router, bin, args)
}

func (l *Lab) ftpalgCommand(r Role, bin string, args []string) (string, []string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dir := l.stateDir
	if r != Router {
		dir = l.roleState[r]
	}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "ftpalg-state-"); err != nil {
			return "", nil, err
		}
		if r == Router {
			l.stateDir = dir
		} else {
			if l.roleState == nil {
				l.roleState = map[Role]string{}
			}
			l.roleState[r] = dir
		}
	}
	return "env", append([]string{"RUNTIME_DIRECTORY=" + dir, bin}, args...), nil
}

func (d *Daemon) afterStart(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		if len(d.Find("ready", nil)) > 0 {
			return nil
		}
		select {
		case <-d.Proc.Done():
			return fmt.Errorf("ftpalg exited before ready: %v; stderr %q; stdout %q", d.Proc.Err(), d.Stderr.String(), strings.Join(d.Lines(), "\n"))
		case <-ctx.Done():
			return fmt.Errorf("ftpalg not ready: %w; stderr %q", ctx.Err(), d.Stderr.String())
		case <-d.changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *Daemon) changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.notify
}

func (d *Daemon) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var e Event
		ok := json.Unmarshal([]byte(line), &e) == nil && e.Name() != ""
		d.mu.Lock()
		d.lines = append(d.lines, line)
		if ok {
			d.events = append(d.events, e)
		}
		close(d.notify)
		d.notify = make(chan struct{})
		d.mu.Unlock()
	}
}

// Lines returns every stdout line so far.
func (d *Daemon) Lines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.lines...)
}

// Mark returns a position in the event log; Since(mark) returns what came after it.
func (d *Daemon) Mark() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.events)
}

// Since returns the events logged after mark.
func (d *Daemon) Since(mark int) []Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	if mark > len(d.events) {
		mark = len(d.events)
	}
	return append([]Event(nil), d.events[mark:]...)
}

// Find returns the events named name (all when "") that satisfy keep (all when nil).
func (d *Daemon) Find(name string, keep func(Event) bool) []Event {
	return Filter(d.Since(0), name, keep)
}

// Filter returns the events named name (all when "") that satisfy keep (all when nil).
func Filter(evs []Event, name string, keep func(Event) bool) []Event {
	var out []Event
	for _, e := range evs {
		if (name == "" || e.Name() == name) && (keep == nil || keep(e)) {
			out = append(out, e)
		}
	}
	return out
}

// WaitFor waits until at least n events after mark match name and keep, and returns them.
func (d *Daemon) WaitFor(ctx context.Context, mark int, n int, name string, keep func(Event) bool) ([]Event, error) {
	for {
		ch := d.changed()
		got := Filter(d.Since(mark), name, keep)
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("want %d %q events, got %d: %w", n, name, len(got), ctx.Err())
		case <-ch:
		case <-d.Proc.Done():
			got = Filter(d.Since(mark), name, keep)
			if len(got) >= n {
				return got, nil
			}
			return got, fmt.Errorf("ftpalg exited (%v) with %d of %d %q events", d.Proc.Err(), len(got), n, name)
		}
	}
}

// ErrTableGone means ftpalg exited on SIGTERM and took its nftables table with it: the table
// must stay across restarts (a connection opened meanwhile keeps its carrier helper).
var ErrTableGone = errors.New("table inet ftpalg gone after a SIGTERM exit (it must stay until 'ftpalg cleanup')")

// Stop sends SIGTERM and checks the contract: exit status 0 within 5 seconds, the table inet
// ftpalg left in place.
func (d *Daemon) Stop() error {
	clean := d.Proc.Stop(syscall.SIGTERM, 5*time.Second)
	if !clean {
		return fmt.Errorf("ftpalg did not exit within 5s of SIGTERM (killed); stderr %q", d.Stderr.String())
	}
	if err := d.Proc.Err(); err != nil {
		return fmt.Errorf("ftpalg exit: %w; stderr %q", err, d.Stderr.String())
	}
	if !d.lab.ftpalgTableIn(d.Role) {
		return ErrTableGone
	}
	return nil
}

// FtpalgTable reports whether the router has ftpalg's table inet ftpalg.
func (l *Lab) FtpalgTable() bool { return l.ftpalgTableIn(Router) }

func (l *Lab) ftpalgTableIn(r Role) bool {
	return exec.Command("ip", "netns", "exec", l.ns[r], "nft", "list", "table", "inet", "ftpalg").Run() == nil
}

// FtpalgCleanup runs `ftpalg cleanup` on the router twice and checks the contract: exit 0
// both times (the second finds nothing to remove) and no table inet ftpalg afterwards.
func (l *Lab) FtpalgCleanup(ctx context.Context, bin string) error {
	for i := range 2 {
		res := l.Run(ctx, Router, bin, "cleanup")
		if res.Err != nil {
			return fmt.Errorf("ftpalg cleanup (call %d): %w: %s%s", i+1, res.Err, res.Stdout, res.Stderr)
		}
	}
	if l.FtpalgTable() {
		return errors.New("table inet ftpalg still present after ftpalg cleanup")
	}
	return nil
}
