package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// topo is where the client and the server sit.
type topo string

const (
	snat       topo = "snat"       // inside client behind SNAT → outside server
	dnat       topo = "dnat"       // outside client → router:21 port-forward → inside server
	ipv6       topo = "ipv6"       // inside client → outside server over IPv6, no NAT
	routerHost topo = "routerhost" // outside client → FTP server on the router itself (INPUT)
)

// mcase is one cell of the matrix. curl and lftp talk to vsftpd; goftp (github.com/secsy/goftp)
// talks to the ftpserverlib server, so both Go peers are covered by the goftp cases.
type mcase struct {
	topo   topo
	mode   lab.Mode
	tool   lab.Tool
	shrink bool // also run in the shrink addressing plan (the rewrite makes the packet shorter)
	// helperFails, when set, is why the kernel FTP helper is known to fail this case: the
	// reference run then asserts failure instead of success.
	helperFails string
}

func (c mcase) name() string { return fmt.Sprintf("%s/%s/%s", c.topo, c.mode, c.tool) }

func (c mcase) ops() []lab.Op {
	if c.tool == lab.Curl {
		return []lab.Op{lab.Get, lab.Put, lab.List, lab.Nlst}
	}
	// lftp's nlist and goftp's ReadDir each need their own data connection too, but goftp
	// has no NLST: one listing is enough for those two.
	return []lab.Op{lab.Get, lab.Put, lab.List}
}

var matrix = []mcase{
	{topo: snat, mode: lab.PASV, tool: lab.Curl},
	{topo: snat, mode: lab.EPSV, tool: lab.Curl},
	{topo: snat, mode: lab.PORT, tool: lab.Curl, shrink: true},
	{topo: snat, mode: lab.EPRT, tool: lab.Curl, shrink: true},
	{topo: snat, mode: lab.PASV, tool: lab.Lftp},
	{topo: snat, mode: lab.PORT, tool: lab.Lftp, shrink: true},
	{topo: snat, mode: lab.EPSV, tool: lab.GoFTP},
	{topo: snat, mode: lab.PORT, tool: lab.GoFTP, shrink: true},
	{topo: dnat, mode: lab.PASV, tool: lab.Curl, shrink: true},
	{topo: dnat, mode: lab.EPSV, tool: lab.Curl},
	{topo: dnat, mode: lab.PORT, tool: lab.Curl},
	{topo: dnat, mode: lab.PASV, tool: lab.Lftp, shrink: true},
	{topo: dnat, mode: lab.PASV, tool: lab.GoFTP, shrink: true},
	{topo: dnat, mode: lab.PORT, tool: lab.GoFTP},
	{topo: ipv6, mode: lab.EPSV, tool: lab.Curl},
	{topo: ipv6, mode: lab.EPRT, tool: lab.Curl},
	{topo: ipv6, mode: lab.EPSV, tool: lab.Lftp},
	{topo: ipv6, mode: lab.EPRT, tool: lab.Lftp},
	{topo: ipv6, mode: lab.EPRT, tool: lab.GoFTP},
	{topo: routerHost, mode: lab.PASV, tool: lab.Curl},
	{topo: routerHost, mode: lab.EPSV, tool: lab.Curl},
	{topo: routerHost, mode: lab.PASV, tool: lab.Lftp},
}

// env is a lab with every server of the matrix running.
type env struct {
	l    *lab.Lab
	d    *lab.Daemon // nil without ftpalg
	srvs map[string]*lab.FTPServer
	seq  atomic.Int32
}

func startServers(t *testing.T, l *lab.Lab, d *lab.Daemon) *env {
	t.Helper()
	x := l.Addrs
	ctx := ctxT(t, 60*time.Second)
	e := &env{l: l, d: d, srvs: map[string]*lab.FTPServer{}}
	type spec struct {
		key  string
		role lab.Role
		addr netip.Addr
		goSv bool
	}
	specs := []spec{
		{"osrv4", lab.OutsideServer, x.OutsideServer, false},
		{"osrv6", lab.OutsideServer, x.OutsideServer6, false},
		{"ogo4", lab.OutsideGo, x.OutsideGo, true},
		{"ogo6", lab.OutsideGo, x.OutsideGo6, true},
		{"isrv", lab.InsideServer, x.InsideServer, false},
		{"igo", lab.InsideGo, x.InsideGoServer, true},
		{"router", lab.Router, x.RouterHost, false},
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, s := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := filepath.Join(t.TempDir(), s.key)
			var srv *lab.FTPServer
			var err error
			if s.goSv {
				srv, err = l.StartGoServer(ctx, ftppeerBin, s.role, s.addr, dir, lab.GoServerOptions{})
			} else {
				srv, err = l.StartVsftpd(ctx, s.role, s.addr, dir, lab.VsftpdOptions{})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			e.srvs[s.key] = srv
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("servers: %v", err)
	}
	return e
}

// target is how a case reaches its server.
type target struct {
	role    lab.Role   // the client's namespace
	connect netip.Addr // the address the client dials
	srv     *lab.FTPServer
	// Where the data connection may legitimately go, as ftpalg's pinhole "to" address: for
	// passive modes the server (real or public address), for active modes the client (real
	// or public address).
	pinholeTo []netip.Addr
}

func (e *env) target(c mcase) target {
	x := e.l.Addrs
	var tg target
	key := func(vs, gs string) string {
		if c.tool == lab.GoFTP {
			return gs
		}
		return vs
	}
	var clientAddrs []netip.Addr
	switch c.topo {
	case snat:
		tg = target{role: lab.Client, srv: e.srvs[key("osrv4", "ogo4")]}
		tg.connect = tg.srv.Addr
		clientAddrs = []netip.Addr{x.Client, x.RouterPublic}
	case dnat:
		tg = target{role: lab.OutsideClient, srv: e.srvs[key("isrv", "igo")], connect: x.RouterPublic}
		if c.tool == lab.GoFTP {
			tg.connect = x.RouterGo
		}
		clientAddrs = []netip.Addr{x.OutsideClient}
	case ipv6:
		tg = target{role: lab.Client, srv: e.srvs[key("osrv6", "ogo6")]}
		tg.connect = tg.srv.Addr
		clientAddrs = []netip.Addr{x.Client6}
	case routerHost:
		tg = target{role: lab.OutsideClient, srv: e.srvs["router"], connect: x.RouterHost}
		clientAddrs = []netip.Addr{x.OutsideClient}
	}
	if c.mode.Active() {
		tg.pinholeTo = clientAddrs
	} else {
		tg.pinholeTo = []netip.Addr{tg.connect, tg.srv.Addr}
	}
	return tg
}

// opOutcome is one client run and the verification of what it transferred.
type opOutcome struct {
	op     lab.Op
	res    lab.Result
	verify error // nil when the content arrived intact
}

func (o opOutcome) ok() bool { return o.res.Err == nil && o.verify == nil }

func (o opOutcome) String() string {
	return fmt.Sprintf("%s: exit %d (%v) in %v, verify: %v\nstderr: %s", o.op, o.res.ExitCode, o.res.Err, o.res.Duration.Round(time.Millisecond), o.verify, tail(o.res.Stderr, 1500))
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (e *env) runOp(t *testing.T, c mcase, tg target, op lab.Op, timeout time.Duration) opOutcome {
	dir := t.TempDir()
	local := filepath.Join(dir, string(op)+".local")
	remote := fmt.Sprintf("%s-%s-%s-%d.bin", e.l.Addrs.Name, strings.ReplaceAll(c.name(), "/", "-"), op, e.seq.Add(1))
	var putSHA string
	if op == lab.Put {
		var err error
		if putSHA, err = lab.RandomFile(local, lab.FileSize); err != nil {
			t.Fatal(err)
		}
	}
	tr := lab.Transfer{Op: op, Mode: c.mode, Server: lab.URL(tg.connect, ""), Local: local, Remote: remote, Timeout: timeout}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	o := opOutcome{op: op, res: e.l.RunClient(ctx, tg.role, c.tool, ftppeerBin, tr)}
	switch op {
	case lab.Get:
		o.verify = sameFile(local, tg.srv.SHA)
	case lab.Put:
		o.verify = sameFile(tg.srv.Incoming(remote), putSHA)
	case lab.List, lab.Nlst:
		b, err := os.ReadFile(local)
		switch {
		case err != nil:
			o.verify = err
		case !strings.Contains(string(b), lab.FileName):
			o.verify = fmt.Errorf("listing lacks %s: %q", lab.FileName, tail(b, 300))
		}
	}
	return o
}

func sameFile(path, want string) error {
	got, n, err := lab.FileSHA(path)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("sha256 mismatch: %s has %d bytes, sha256 %s, want %s", path, n, got[:12], want[:12])
	}
	return nil
}

type setup struct {
	name   string
	ftpalg bool
	helper bool
}

// TestMatrix runs every case three ways: with ftpalg on the router (must pass, with a
// pinhole_open line per data connection), with nothing (the negative control: must fail),
// and with the kernel FTP helper attached (the reference: must pass, except documented cases).
func TestMatrix(t *testing.T) {
	requireLab(t)
	for _, s := range []setup{{name: "ftpalg", ftpalg: true}, {name: "none"}, {name: "kernel-helper", helper: true}} {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			if s.ftpalg {
				requireFtpalg(t)
			}
			for _, plan := range []lab.Addrs{lab.Grow(), lab.Shrink()} {
				t.Run(plan.Name, func(t *testing.T) { runMatrix(t, s, plan) })
			}
		})
	}
}

func runMatrix(t *testing.T, s setup, plan lab.Addrs) {
	l := newLab(t, lab.Config{Addrs: plan, KernelHelper: s.helper})
	var d *lab.Daemon
	if s.ftpalg {
		d = startFtpalg(t, l, nil)
	}
	e := startServers(t, l, d)
	var cases []mcase
	for _, c := range matrix {
		if plan.Name == "grow" || c.shrink {
			cases = append(cases, c)
		}
	}
	if s.name == "none" {
		// Negative control: every case must fail. The failures only wait for timeouts, so
		// they run concurrently first (t.Parallel would be capped at -parallel, GOMAXPROCS),
		// then each case reports under its own name.
		outs := make([]opOutcome, len(cases))
		var wg sync.WaitGroup
		for i, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i] = e.runOp(t, c, e.target(c), lab.Get, negativeOpTimeout)
			}()
		}
		wg.Wait()
		for i, c := range cases {
			t.Run(c.name(), func(t *testing.T) { checkFailure(t, c, outs[i]) })
		}
		return
	}
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			if s.helper && c.helperFails != "" {
				t.Logf("kernel helper known to fail: %s", c.helperFails)
				e.expectFailure(t, c)
				return
			}
			e.expectSuccess(t, c)
		})
	}
	if plan.Name == "grow" {
		t.Run("parallel/10-sessions", func(t *testing.T) { e.parallelSessions(t, 10) })
	}
}

func (e *env) expectSuccess(t *testing.T, c mcase) {
	tg := e.target(c)
	mark := 0
	if e.d != nil {
		mark = e.d.Mark()
	}
	ops := c.ops()
	for _, op := range ops {
		o := e.runOp(t, c, tg, op, defaultOpTimeout)
		if !o.ok() {
			t.Errorf("%v", o)
		} else {
			t.Logf("%s ok in %v", op, o.res.Duration.Round(time.Millisecond))
		}
	}
	if e.d == nil {
		return
	}
	// Every data connection crossed the firewall through a pinhole: one pinhole_open each,
	// to the side that listens.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	got, err := e.d.WaitFor(ctx, mark, len(ops), "pinhole_open", pinholeTo(tg.pinholeTo))
	all := e.d.Since(mark)
	if err != nil {
		t.Errorf("pinhole_open lines to %v: %v; events of the case:\n%s", tg.pinholeTo, err, eventLines(all))
	}
	for _, ev := range got {
		if cmd := ev.Str("cmd"); cmd != "" && cmd != c.mode.Command() {
			t.Errorf("pinhole_open cmd = %q, want %q: %v", cmd, c.mode.Command(), ev)
		}
	}
	// The embedded address is rewritten exactly when NAT hides the announcing side: the
	// inside client's PORT/EPRT, the inside server's 227. The text grows or shrinks as the
	// addressing plan says.
	rewrites := lab.Filter(all, "rewrite", nil)
	wantRewrite := (c.topo == snat && c.mode.Active()) || (c.topo == dnat && c.mode == lab.PASV)
	switch {
	case wantRewrite && len(rewrites) < len(ops):
		t.Errorf("%d rewrite lines, want one per data connection (%d)", len(rewrites), len(ops))
	case !wantRewrite && len(rewrites) > 0:
		t.Errorf("rewrite lines where nothing needs rewriting: %s", eventLines(rewrites))
	}
	for _, ev := range rewrites {
		delta, ok := ev["delta"].(float64)
		if !ok {
			continue
		}
		if (e.l.Addrs.Name == "grow") != (delta > 0) {
			t.Errorf("rewrite delta %v in the %s plan: %v", delta, e.l.Addrs.Name, ev)
		}
	}
	t.Logf("ftpalg events:\n%s", eventLines(lab.Filter(all, "", func(ev lab.Event) bool {
		return !strings.HasPrefix(ev.Name(), "session_")
	})))
}

func pinholeTo(addrs []netip.Addr) func(lab.Event) bool {
	return func(ev lab.Event) bool {
		to := ev.Addr("to")
		for _, a := range addrs {
			if to == a {
				return true
			}
		}
		return false
	}
}

func eventLines(evs []lab.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString("  " + ev.String() + "\n")
	}
	return b.String()
}

// expectFailure runs the download and asserts that it fails.
func (e *env) expectFailure(t *testing.T, c mcase) {
	checkFailure(t, c, e.runOp(t, c, e.target(c), lab.Get, negativeOpTimeout))
}

// checkFailure asserts that a download failed after the control connection worked (so the
// failure is the data connection's, not a broken lab).
func checkFailure(t *testing.T, c mcase, o opOutcome) {
	if o.ok() {
		t.Fatalf("transfer succeeded, want failure (nothing lets the data connection through): %v", o)
	}
	if c.tool == lab.Curl && !strings.Contains(string(o.res.Stderr), "< 230") {
		t.Errorf("control connection did not log in, the failure proves nothing: %v", o)
	}
	t.Logf("failed as expected: exit %d in %v", o.res.ExitCode, o.res.Duration.Round(time.Millisecond))
}

// parallelSessions runs n downloads at once from the inside client through SNAT, half passive
// and half active.
func (e *env) parallelSessions(t *testing.T, n int) {
	mark := 0
	if e.d != nil {
		mark = e.d.Mark()
	}
	var wg sync.WaitGroup
	outs := make([]opOutcome, n)
	for i := range n {
		c := mcase{topo: snat, mode: lab.PASV, tool: lab.Curl}
		if i%2 == 1 {
			c.mode = lab.PORT
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = e.runOp(t, c, e.target(c), lab.Get, defaultOpTimeout)
		}()
	}
	wg.Wait()
	for i, o := range outs {
		if !o.ok() {
			t.Errorf("session %d: %v", i, o)
		}
	}
	if e.d == nil {
		return
	}
	x := e.l.Addrs
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := e.d.WaitFor(ctx, mark, n, "pinhole_open", pinholeTo([]netip.Addr{x.OutsideServer, x.Client, x.RouterPublic})); err != nil {
		t.Errorf("pinhole_open lines: %v\n%s", err, eventLines(e.d.Since(mark)))
	}
}
