package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/e2e/lab"
)

// The reliability tests (issue "Reliability"): restarts, fail-open and fail-closed, faults and
// floods. Each keeps one FTP control connection open across the event and checks that it goes
// on working: replies still come, data transfers in every mode still deliver intact files.
//
// LEAD: tests whose failure reports a daemon or engine defect (not a lab problem) say so in a
// comment starting with "DAEMON-BUG:"; grep for it. (None are left: all were fixed.)

// ctl is a control connection driven step by step with error returns (rawFTP's helpers fail
// the test that created it, which is wrong from subtests).
type ctl struct {
	*rawFTP
	l    *lab.Lab
	role lab.Role   // the client's namespace
	self netip.Addr // the client's own address (what it announces in PORT/EPRT)
	srv  netip.Addr // the address the client dialled
	sha  string     // sha256 of the server's pub/data.bin
}

func openCtl(t *testing.T, l *lab.Lab, role lab.Role, self netip.Addr, srv *lab.FTPServer, dial netip.Addr) *ctl {
	t.Helper()
	f := dialRaw(t, l, role, netip.AddrPortFrom(dial, 21))
	f.login()
	return &ctl{rawFTP: f, l: l, role: role, self: self, srv: dial, sha: srv.SHA}
}

// cmd sends one command line (one segment) and reads its reply within d.
func (c *ctl) cmd(line string, d time.Duration) (int, string, error) {
	if _, err := c.c.Write([]byte(line + "\r\n")); err != nil {
		return 0, "", fmt.Errorf("write %q: %w", line, err)
	}
	return c.replyWithin(d)
}

func (c *ctl) want(line string, code int, d time.Duration) (string, error) {
	got, text, err := c.cmd(line, d)
	if err != nil {
		return text, fmt.Errorf("%s: %w (got %q)", line, err, text)
	}
	if got != code {
		return text, fmt.Errorf("%s: reply %d %q, want %d", line, got, strings.TrimSpace(text), code)
	}
	return text, nil
}

// retr downloads pub/data.bin over a data connection in the given mode and checks it.
func (c *ctl) retr(mode lab.Mode) error {
	if _, err := c.want("TYPE I", 200, 5*time.Second); err != nil {
		return err
	}
	return c.transfer(mode, nil, nil)
}

// retrAll runs retr in each mode in turn, up to the first failure.
func (c *ctl) retrAll(modes ...lab.Mode) error {
	for _, m := range modes {
		if err := c.retr(m); err != nil {
			return fmt.Errorf("%s: %w", m, err)
		}
	}
	return nil
}

// transfer opens a data connection in mode (PORT, EPRT, PASV or EPSV), downloads
// pub/data.bin over it and checks the file and the 226. control, when set, configures the
// client's data socket; mid, when set, runs once the first 32 KiB have arrived, with the
// rest still to come.
func (c *ctl) transfer(mode lab.Mode, control func(network, address string, rc syscall.RawConn) error, mid func() error) error {
	data, ln, err := c.openData(mode, control)
	if err != nil {
		return err
	}
	return c.fetchData(data, ln, mid)
}

// openData prepares a data connection in mode: for PORT and EPRT it returns the listener the
// server is told to connect to, for PASV and EPSV the connection already dialled.
func (c *ctl) openData(mode lab.Mode, control func(network, address string, rc syscall.RawConn) error) (net.Conn, *net.TCPListener, error) {
	switch mode {
	case lab.PORT, lab.EPRT:
		var ln net.Listener
		err := c.l.Do(c.role, func() error {
			var err error
			lc := net.ListenConfig{Control: control}
			ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(c.self, 0).String())
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		lp := netip.MustParseAddrPort(ln.Addr().String())
		var line string
		if mode == lab.PORT {
			line = "PORT " + portArg(lp)
		} else {
			line = string(alg.AppendEPRT([]byte("EPRT "), lp, '|'))
		}
		if _, err := c.want(line, 200, 5*time.Second); err != nil {
			ln.Close()
			return nil, nil, err
		}
		return nil, ln.(*net.TCPListener), nil
	case lab.PASV, lab.EPSV:
		var text string
		var ap netip.AddrPort
		var err error
		if mode == lab.PASV {
			if text, err = c.want("PASV", 227, 5*time.Second); err == nil {
				ap, err = endpointOf227(text)
			}
		} else {
			var p uint16
			if text, err = c.want("EPSV", 229, 5*time.Second); err == nil {
				p, err = portOf229(text)
				ap = netip.AddrPortFrom(c.srv, p)
			}
		}
		if err != nil {
			return nil, nil, err
		}
		var data net.Conn
		err = c.l.Do(c.role, func() error {
			var err error
			dl := net.Dialer{Timeout: 3 * time.Second, Control: control}
			data, err = dl.Dial("tcp", ap.String())
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("data connection to %s (%s %q): %w", ap, mode, strings.TrimSpace(text), err)
		}
		return data, nil, nil
	}
	return nil, nil, fmt.Errorf("mode %s not supported here", mode)
}

// fetchData sends RETR pub/data.bin and downloads it over data, or, when data is nil, over
// the connection the server opens to ln (which it closes); then it checks the file and the
// 226. mid, when set, runs once the first 32 KiB have arrived.
func (c *ctl) fetchData(data net.Conn, ln *net.TCPListener, mid func() error) error {
	if ln != nil {
		defer ln.Close()
	}
	if _, err := c.want("RETR pub/"+lab.FileName, 150, 10*time.Second); err != nil {
		if data != nil {
			data.Close()
		}
		return err
	}
	if data == nil {
		var err error
		if data, err = acceptWithin(ln, 5*time.Second); err != nil {
			return fmt.Errorf("server never connected back: %w", err)
		}
	}
	defer data.Close()
	deadline := 15 * time.Second
	if mid != nil {
		deadline = 40 * time.Second // mid may wait out a failover
	}
	_ = data.SetDeadline(time.Now().Add(deadline))
	var got []byte
	if mid != nil {
		got = make([]byte, 32<<10)
		if _, err := io.ReadFull(data, got); err != nil {
			return fmt.Errorf("first 32 KiB: %w", err)
		}
		if err := mid(); err != nil {
			return err
		}
	}
	rest, err := io.ReadAll(data)
	got = append(got, rest...)
	if err != nil {
		return fmt.Errorf("read data (%d bytes so far): %w", len(got), err)
	}
	if s := sha(got); s != c.sha {
		return fmt.Errorf("downloaded %d bytes, sha256 %s, want %s", len(got), s[:12], c.sha[:12])
	}
	code, text, err := c.replyWithin(10 * time.Second)
	if err != nil || code != 226 {
		return fmt.Errorf("after RETR: %d %q %v, want 226", code, text, err)
	}
	return nil
}

// noop checks that the control connection still answers.
func (c *ctl) noop(d time.Duration) error {
	_, err := c.want("NOOP", 200, d)
	return err
}

func lastLines(ls []string, n int) string {
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// kill9 kills the daemon with SIGKILL (no cleanup: its nftables table and state files stay).
func kill9(t *testing.T, d *lab.Daemon) {
	t.Helper()
	if err := syscall.Kill(d.Proc.PID(), syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 ftpalg: %v", err)
	}
	select {
	case <-d.Proc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("ftpalg still running 5s after SIGKILL")
	}
}

func withArgs(extra ...string) []string { return append(lab.DefaultFtpalgArgs(), extra...) }

func tableExists(l *lab.Lab) bool {
	return exec.Command("ip", "netns", "exec", l.NS(lab.Router), "nft", "list", "table", "inet", "ftpalg").Run() == nil
}

// TestRestart: a control session whose stream was resized by a rewrite (grow plan, client
// behind SNAT, PORT rewritten +3 bytes) survives ftpalg being killed (kill -9), kept down for
// seconds and restarted, and then a clean restart (SIGTERM, start). The kernel carries the
// sequence adjustment (conntrack seqadj), so under fail-open the session goes on while ftpalg
// is down; the next run rebuilds the session from its conntrack entry (session_open restored,
// adjusting) and later transfers of the same session work. A control connection opened while
// ftpalg is down still gets the carrier helper (the table stays), so its transfers work once
// ftpalg is back.
func TestRestart(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		failOpen bool
	}{
		// With fail-open the queue rules have the bypass flag: while no ftpalg runs, the
		// session's packets pass uninspected, and the kernel keeps shifting them.
		{name: "fail-open", failOpen: true},
		// Without it the packets wait in TCP retransmission: a PORT sent while ftpalg is down
		// is rewritten by the next run when TCP retransmits it.
		{name: "fail-closed", failOpen: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := withArgs("--fail-open=" + strconv.FormatBool(tc.failOpen))
			d := startFtpalg(t, l, args)
			c := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
			mark := d.Mark()
			if err := c.retr(lab.PORT); err != nil {
				t.Fatalf("PORT transfer before the restart: %v", err)
			}
			rw, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rewrite", nil)
			if err != nil {
				t.Fatalf("no rewrite before the kill (the session is not shifted): %v", err)
			}
			t.Logf("shifted: %v", rw[0])
			kill9(t, d)
			if !tableExists(l) {
				t.Fatalf("table inet ftpalg gone after kill -9")
			}
			var pending chan error
			down := time.Now()
			if tc.failOpen {
				// The session goes on, uninspected: the kernel shifts its numbers.
				for _, cmd := range []struct {
					line string
					code int
				}{{"NOOP", 200}, {"PWD", 257}, {"SYST", 215}, {"CWD pub", 250}, {"CWD /", 250}, {"NOOP", 200}} {
					if _, err := c.want(cmd.line, cmd.code, 3*time.Second); err != nil {
						t.Fatalf("resized session while ftpalg is down (fail-open): %v", err)
					}
					time.Sleep(300 * time.Millisecond)
				}
			} else {
				// A command needing a rewrite, sent while nobody reads the queue: it must wait
				// (no reply) and go through, rewritten, once ftpalg is back.
				pending = make(chan error, 1)
				go func() { pending <- c.retr(lab.PORT) }()
				time.Sleep(2 * time.Second)
				select {
				case err := <-pending:
					t.Fatalf("fail-closed: the transfer finished while ftpalg was down (%v): control packets were not held", err)
				default:
				}
			}
			start := time.Now()
			d2 := startFtpalg(t, l, args)
			t.Logf("down for %v, restarted in %v", start.Sub(down).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			if pending != nil {
				if err := <-pending; err != nil {
					t.Errorf("PORT transfer sent while ftpalg was down: %v", err)
				} else {
					t.Logf("PORT sent during the gap completed %v after the restart", time.Since(start).Round(time.Millisecond))
				}
			}
			restored := func(ev lab.Event) bool {
				b, _ := ev["restored"].(bool)
				a, _ := ev["adjusting"].(bool)
				return b && a && ev.AddrPort("client").Addr() == x.Client
			}
			if err := c.noop(10 * time.Second); err != nil {
				t.Fatalf("control connection after kill -9 and restart: %v", err)
			}
			if _, err := d2.WaitFor(ctxT(t, 3*time.Second), 0, 1, "session_open", restored); err != nil {
				t.Errorf("no session_open restored:true adjusting:true after the restart: %v", err)
			}
			transfers(t, "after-kill", c, d2, lab.PORT, lab.EPRT, lab.PASV, lab.EPSV, lab.PORT)

			// A clean restart mid-session; meanwhile (fail-open) a new session opens.
			if err := d2.Stop(); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			var c2 *ctl
			if tc.failOpen {
				c2 = openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
				if _, err := c2.want("PWD", 257, 3*time.Second); err != nil {
					t.Fatalf("new session while ftpalg is down: %v", err)
				}
			}
			d3 := startFtpalg(t, l, args)
			if err := c.noop(10 * time.Second); err != nil {
				t.Fatalf("control connection after a clean restart: %v", err)
			}
			if _, err := d3.WaitFor(ctxT(t, 3*time.Second), 0, 1, "session_open", restored); err != nil {
				t.Errorf("no session_open restored:true after SIGTERM and start: %v", err)
			}
			transfers(t, "after-sigterm", c, d3, lab.PORT, lab.EPRT, lab.PASV, lab.EPSV)
			if c2 != nil {
				if err := c2.noop(5 * time.Second); err != nil {
					t.Fatalf("session opened while ftpalg was down: %v", err)
				}
				transfers(t, "opened-while-down", c2, d3, lab.PASV, lab.PORT, lab.PASV, lab.PORT)
				if _, err := c2.want("QUIT", 221, 5*time.Second); err != nil {
					t.Errorf("QUIT: %v", err)
				}
			}
			if _, err := c.want("QUIT", 221, 5*time.Second); err != nil {
				t.Errorf("QUIT: %v", err)
			}
		})
	}
}

// transfers runs one download per mode on c, each a subtest named phase/i-mode, in order.
// A failure lists the rejected events ftpalg logged meanwhile.
func transfers(t *testing.T, phase string, c *ctl, d *lab.Daemon, modes ...lab.Mode) {
	t.Helper()
	for i, m := range modes {
		t.Run(fmt.Sprintf("%s/%d-%s", phase, i, m), func(t *testing.T) {
			mark := d.Mark()
			start := time.Now()
			if err := c.retr(m); err != nil {
				t.Errorf("%v; ftpalg events meanwhile:\n%s", err, eventLines(d.Since(mark)))
				return
			}
			t.Logf("%s download ok in %v", m, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestFailOpenClosed: what control traffic does while ftpalg is down (killed, table left).
func TestFailOpenClosed(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	ctx := ctxT(t, 30*time.Second)
	vs6, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer6, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vs4, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("fail-open/ipv6-session-goes-on", func(t *testing.T) {
		d := startFtpalg(t, l, withArgs("--fail-open=true"))
		c := openCtl(t, l, lab.Client, x.Client6, vs6, vs6.Addr)
		if err := c.retr(lab.EPRT); err != nil {
			t.Fatalf("EPRT before the kill: %v", err)
		}
		kill9(t, d)
		start := time.Now()
		for _, cmd := range []struct {
			line string
			code int
		}{{"NOOP", 200}, {"PWD", 257}, {"SYST", 215}, {"CWD pub", 250}, {"NOOP", 200}} {
			if _, err := c.want(cmd.line, cmd.code, 3*time.Second); err != nil {
				t.Errorf("with ftpalg down (fail-open): %v", err)
			}
		}
		t.Logf("5 commands answered in %v with ftpalg down", time.Since(start).Round(time.Millisecond))
		// A new control connection also passes (bypass), but no pinhole exists.
		c2 := openCtl(t, l, lab.Client, x.Client6, vs6, vs6.Addr)
		if err := c2.noop(3 * time.Second); err != nil {
			t.Errorf("new session with ftpalg down: %v", err)
		}
		d2 := startFtpalg(t, l, withArgs("--fail-open=true"))
		if err := c.noop(5 * time.Second); err != nil {
			t.Errorf("after restart: %v", err)
		}
		if _, err := c.want("CWD /", 250, 3*time.Second); err != nil {
			t.Error(err)
		}
		// Active mode needs only the client's line sync: it works again at once.
		if err := c.retr(lab.EPRT); err != nil {
			t.Errorf("EPRT after the restart: %v", err)
		}
		_ = d2
	})

	t.Run("fail-closed/control-waits-and-resumes", func(t *testing.T) {
		args := withArgs("--fail-open=false")
		d := startFtpalg(t, l, args)
		c := openCtl(t, l, lab.Client, x.Client, vs4, vs4.Addr)
		if err := c.retr(lab.PASV); err != nil {
			t.Fatalf("PASV before the kill: %v", err)
		}
		kill9(t, d)
		if !tableExists(l) {
			t.Fatal("no stale table after kill -9")
		}
		if _, err := c.c.Write([]byte("NOOP\r\n")); err != nil {
			t.Fatal(err)
		}
		code, text, err := c.replyWithin(2 * time.Second)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("fail-closed with ftpalg down: got %d %q %v, want no reply (control packets dropped)", code, text, err)
		}
		start := time.Now()
		d2 := startFtpalg(t, l, args)
		code, text, err = c.replyWithin(15 * time.Second)
		if err != nil || code != 200 {
			t.Fatalf("NOOP sent while ftpalg was down: %d %q %v, want 200 after the restart", code, text, err)
		}
		t.Logf("NOOP answered %v after the restart (TCP retransmission)", time.Since(start).Round(time.Millisecond))
		if n := len(d2.Find("ready", nil)); n != 1 {
			t.Errorf("%d ready lines", n)
		}
		if err := c.retr(lab.PORT); err != nil {
			t.Errorf("PORT after the restart: %v", err)
		}
	})
}

// metricsOf scrapes the daemon's /metrics from inside the router namespace.
func metricsOf(l *lab.Lab, listen string) (map[string]float64, error) {
	var body []byte
	err := l.Do(lab.Router, func() error {
		c, err := net.DialTimeout("tcp", listen, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, nil
}

// vmRSS returns a process's resident set size in KiB.
func vmRSS(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, errors.New("no VmRSS")
}

// daemonAlive fails the test when ftpalg has exited.
func daemonAlive(t *testing.T, d *lab.Daemon) {
	t.Helper()
	select {
	case <-d.Proc.Done():
		t.Fatalf("ftpalg exited: %v; stderr %q", d.Proc.Err(), d.Stderr.String())
	default:
	}
}

// TestFaults: conntrack flushed under live sessions, RSTs in the middle of a rewritten
// exchange, a PORT dribbled one byte per segment, and a line that never ends.
func TestFaults(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	d := startFtpalg(t, l, nil)
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fresh := func(t *testing.T) {
		t.Helper()
		c := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
		transfers(t, "fresh-session", c, d, lab.PORT, lab.EPRT, lab.PASV, lab.EPSV)
	}

	t.Run("conntrack-flush", func(t *testing.T) {
		shifted := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
		if err := shifted.retr(lab.PORT); err != nil {
			t.Fatal(err)
		}
		plain := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
		if err := plain.retr(lab.PASV); err != nil {
			t.Fatal(err)
		}
		mark := d.Mark()
		if out, err := l.Exec(context.Background(), lab.Router, "conntrack", "-F"); err != nil {
			t.Fatalf("conntrack -F: %v: %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
		daemonAlive(t, d)
		// The sessions lost their conntrack entries, their NAT mapping, their liberal flag
		// and (ftpalg drops a session whose entry is destroyed) their sequence deltas. The
		// unshifted one must go on; the shifted one must recover or fail cleanly (an error
		// within the timeout, never a wedged ftpalg).
		// ftpalg keeps the deltas of a session whose stream it resized when the entry goes,
		// and makes the entry the kernel picks the connection up with liberal again.
		for _, s := range []struct {
			name string
			c    *ctl
			must bool
		}{{"unshifted", plain, true}, {"shifted", shifted, true}} {
			start := time.Now()
			err := s.c.noop(10 * time.Second)
			switch {
			case err == nil:
				t.Logf("%s session after conntrack -F: NOOP answered in %v", s.name, time.Since(start).Round(time.Millisecond))
				if err := s.c.retr(lab.PORT); err != nil {
					t.Logf("%s session after conntrack -F: PORT transfer failed: %v", s.name, err)
					if s.must {
						t.Errorf("%s session: PORT transfer after conntrack -F: %v", s.name, err)
					}
				} else {
					t.Logf("%s session after conntrack -F: PORT transfer ok", s.name)
				}
			case s.must:
				t.Errorf("%s session after conntrack -F: %v", s.name, err)
			default:
				t.Logf("%s session after conntrack -F failed after %v: %v", s.name, time.Since(start).Round(time.Millisecond), err)
			}
		}
		t.Logf("ftpalg events after the flush:\n%s", eventLines(d.Since(mark)))
		daemonAlive(t, d)
		fresh(t)
	})

	t.Run("rst-after-rewritten-port", func(t *testing.T) {
		for _, side := range []string{"client", "server"} {
			t.Run(side, func(t *testing.T) {
				c := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
				self := netip.MustParseAddrPort(c.c.LocalAddr().String())
				mark := d.Mark()
				ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
				lp := netip.MustParseAddrPort(ln.Addr().String())
				if side == "client" {
					// The PORT and, before its reply, a RST: the rewritten bytes are in flight.
					c.write("PORT " + portArg(lp) + "\r\n")
					_ = c.c.SetLinger(0)
					c.c.Close()
				} else {
					if _, err := c.want("PORT "+portArg(lp), 200, 5*time.Second); err != nil {
						t.Fatal(err)
					}
					// vsftpd resets nothing on request: kill its session process, the kernel
					// then answers the next segment with a RST from the server side.
					c.write("RETR pub/" + lab.FileName + "\r\n")
					if ch, err := acceptWithin(ln, 5*time.Second); err == nil {
						_ = ch.(*net.TCPConn).SetLinger(0)
						ch.Close() // RST on the data connection mid-transfer
					}
					_, _, _ = c.replyWithin(5 * time.Second)
					_ = c.c.SetLinger(0)
					c.c.Close()
				}
				isSelf := func(ev lab.Event) bool { return ev.AddrPort("client") == self }
				if _, err := d.WaitFor(ctxT(t, 5*time.Second), mark, 1, "rewrite", isSelf); err != nil {
					t.Errorf("no rewrite before the RST: %v", err)
				}
				got, err := d.WaitFor(ctxT(t, 5*time.Second), mark, 1, "session_close", isSelf)
				if err != nil {
					t.Errorf("session_close: %v\n%s", err, eventLines(d.Since(mark)))
				} else if r := got[0].Str("reason"); r != "rst" {
					t.Errorf("session_close reason %q, want rst", r)
				}
				daemonAlive(t, d)
				c2 := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
				if err := c2.retr(lab.PORT); err != nil {
					t.Errorf("PORT transfer after the RST: %v", err)
				}
			})
		}
	})

	t.Run("port-split-in-four-segments", func(t *testing.T) {
		// A PORT that needs a rewrite, written in four pieces (TCP_NODELAY, 5 ms apart): ftpalg
		// holds the pieces back and joins them, so the whole line is rewritten.
		dribble(t, l, d, vs, lab.Client, x.Client, 6, 5*time.Millisecond, true)
	})
	t.Run("eprt-dribbled-byte-per-segment-ipv6", func(t *testing.T) {
		// No rewrite needed (IPv6, no NAT): one byte per segment, each released at once; the
		// pinhole opens when the line completes.
		vs6, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer6, t.TempDir(), lab.VsftpdOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dribble(t, l, d, vs6, lab.Client, x.Client6, 1, 5*time.Millisecond, true)
	})
	t.Run("port-dribbled-byte-per-segment", func(t *testing.T) {
		// A PORT that needs a rewrite, one byte per segment. The client can have only a
		// congestion window of segments unacknowledged; ftpalg holds them (the address may
		// change) and, without forging the server's ACKs, the rest of the line cannot come.
		// After the hold ftpalg lets the bytes go: the PORT is either rewritten (it fitted) or
		// refused cleanly (rejected "unrewritable", no pinhole) - and the session goes on.
		dribble(t, l, d, vs, lab.Client, x.Client, 1, 5*time.Millisecond, false)
	})
	t.Run("port-dribbled-slower-than-hold", func(t *testing.T) {
		// 40 ms per byte: the line takes ~1 s, longer than ftpalg's hold (250 ms from the
		// first held byte, gateway/worker.go holdTimeout). The held bytes are then released
		// as they are and the completed PORT cannot be rewritten: ftpalg must say so
		// (rejected "unrewritable"), open no pinhole, and leave the session working.
		c := openCtl(t, l, lab.Client, x.Client, vs, vs.Addr)
		self := netip.MustParseAddrPort(c.c.LocalAddr().String())
		ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
		lp := netip.MustParseAddrPort(ln.Addr().String())
		mark := d.Mark()
		line := "PORT " + portArg(lp) + "\r\n"
		for i := 0; i < len(line); i++ {
			if _, err := c.c.Write([]byte{line[i]}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(40 * time.Millisecond)
		}
		code, text, err := c.reply()
		t.Logf("slow dribbled PORT answered %d %q %v", code, strings.TrimSpace(text), err)
		isSelf := func(ev lab.Event) bool { return ev.AddrPort("client") == self }
		switch {
		case err != nil:
			t.Fatalf("no reply to the slow dribbled PORT: %v", err)
		case code == 200:
			if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rewrite", isSelf); err != nil {
				t.Errorf("200 without a rewrite: %v", err)
			}
		default:
			if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", isSelf); err != nil {
				t.Errorf("PORT refused by the server but no rejected event: %v\n%s", err, eventLines(d.Since(mark)))
			}
			if evs := lab.Filter(d.Since(mark), "pinhole_open", isSelf); len(evs) > 0 {
				t.Errorf("pinhole left open for an unrewritten PORT: %s", eventLines(evs))
			}
		}
		if err := c.noop(5 * time.Second); err != nil {
			t.Errorf("session after the slow dribble: %v", err)
		}
		if err := c.retr(lab.PORT); err != nil {
			t.Errorf("PORT transfer after the slow dribble: %v", err)
		}
	})

	t.Run("line-never-ends", func(t *testing.T) {
		fake := startFake(t, l, lab.OutsideClient, []netip.Addr{x.OutsideClient}, func(line string) string {
			if strings.HasPrefix(line, "NOOP") {
				return "200 NOOP ok\r\n"
			}
			return "500 what\r\n"
		})
		f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(x.OutsideClient, 21))
		f.expect(220)
		self := netip.MustParseAddrPort(f.c.LocalAddr().String())
		rss0, _ := vmRSS(d.Proc.PID())
		mark := d.Mark()
		// 100 KB without LF, in 1 KB writes, then nothing for a while: the line never ends. It
		// starts with a verb (a line of anything else would make the session not FTP).
		if _, err := f.c.Write([]byte("SITE ")); err != nil {
			t.Fatal(err)
		}
		chunk := []byte(strings.Repeat("A", 1024))
		for i := 0; i < 100; i++ {
			if _, err := f.c.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		got, err := d.WaitFor(ctxT(t, 5*time.Second), mark, 1, "note", func(ev lab.Event) bool {
			return ev.AddrPort("client") == self && ev.Str("reason") == "line_too_long"
		})
		if err != nil {
			t.Errorf("note line_too_long: %v\n%s", err, eventLines(d.Since(mark)))
		} else {
			t.Logf("noted: %v", got[0])
		}
		rss1, _ := vmRSS(d.Proc.PID())
		// End the line; the session goes on.
		f.write("\r\n")
		f.expect(500)
		f.write("NOOP\r\n")
		f.expect(200)
		if n := len(fake.got()); n != 2 {
			t.Errorf("server got %d lines, want 2", n)
		}
		t.Logf("ftpalg VmRSS %d KiB before, %d KiB after 100 KB unterminated line", rss0, rss1)
		if rss1-rss0 > 8<<10 {
			t.Errorf("VmRSS grew %d KiB over a 100 KB line: buffering it?", rss1-rss0)
		}
		daemonAlive(t, d)
	})
}

// dribble sends a PORT (EPRT for IPv6) in pieces of chunk bytes, one write (segment) every
// every. With mustWork the command must be answered 200 and the transfer must succeed; without,
// a refusal is fine if ftpalg says so and opens nothing, as long as the session goes on.
func dribble(t *testing.T, l *lab.Lab, d *lab.Daemon, vs *lab.FTPServer, role lab.Role, self netip.Addr, chunk int, every time.Duration, mustWork bool) {
	c := openCtl(t, l, role, self, vs, vs.Addr)
	me := netip.MustParseAddrPort(c.c.LocalAddr().String())
	isSelf := func(ev lab.Event) bool { return ev.AddrPort("client") == me }
	ln := listenIn(t, l, role, netip.AddrPortFrom(self, 0))
	lp := netip.MustParseAddrPort(ln.Addr().String())
	mark := d.Mark()
	line := fmt.Sprintf("EPRT |2|%s|%d|\r\n", lp.Addr(), lp.Port())
	if !self.Is6() {
		line = "PORT " + portArg(lp) + "\r\n"
	}
	start := time.Now()
	for i := 0; i < len(line); i += chunk {
		if _, err := c.c.Write([]byte(line[i:min(i+chunk, len(line))])); err != nil {
			t.Fatal(err)
		}
		time.Sleep(every)
	}
	code, text, err := c.reply()
	if err != nil {
		t.Fatalf("no reply to the dribbled command: %v\n%s", err, eventLines(d.Since(mark)))
	}
	t.Logf("%d bytes in pieces of %d in %v, answered %d", len(line), chunk, time.Since(start).Round(time.Millisecond), code)
	if code != 200 {
		if mustWork {
			t.Fatalf("dribbled command: %d %q\n%s", code, text, eventLines(d.Since(mark)))
		}
		if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", isSelf); err != nil {
			t.Errorf("command refused by the server but no rejected event: %v\n%s", err, eventLines(d.Since(mark)))
		}
		if evs := lab.Filter(d.Since(mark), "pinhole_open", isSelf); len(evs) > 0 {
			t.Errorf("pinhole left open for an unrewritten command: %s", eventLines(evs))
		}
		if err := c.noop(5 * time.Second); err != nil {
			t.Errorf("session after the refused command: %v", err)
		}
		return
	}
	c.write("RETR pub/" + lab.FileName + "\r\n")
	c.expect(150)
	dc, err := acceptWithin(ln, 5*time.Second)
	if err != nil {
		t.Fatalf("no data connection: %v", err)
	}
	_ = dc.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(dc)
	dc.Close()
	if err != nil || sha(b) != vs.SHA {
		t.Fatalf("data: %d bytes, %v", len(b), err)
	}
	c.expect(226)
	if !self.Is6() {
		if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rewrite", isSelf); err != nil {
			t.Errorf("rewrite: %v", err)
		}
	}
	if err := c.noop(5 * time.Second); err != nil {
		t.Error(err)
	}
}

// startBenchpeerServe runs benchpeer's cheap FTP server (220, then an answer to every command)
// on ap in the outside client's namespace and waits until it listens.
func startBenchpeerServe(t *testing.T, l *lab.Lab, bin string, ap netip.AddrPort) netip.AddrPort {
	t.Helper()
	out := &lab.SyncBuffer{}
	if _, err := l.Start(lab.OutsideClient, out, out, bin, "serve", "-listen", ap.String()); err != nil {
		t.Fatal(err)
	}
	if err := waitListen(l, ap); err != nil {
		t.Fatalf("benchpeer serve: %v (%s)", err, out.String())
	}
	return ap
}

// rssSampler records the peak VmRSS of pid until stopped.
func rssSampler(pid int) (stop func() (peakKiB int)) {
	done := make(chan struct{})
	res := make(chan int, 1)
	go func() {
		peak := 0
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			if v, err := vmRSS(pid); err == nil && v > peak {
				peak = v
			}
			select {
			case <-done:
				res <- peak
				return
			case <-tk.C:
			}
		}
	}()
	return func() int { close(done); return <-res }
}

func metricSum(m map[string]float64, prefix string) float64 {
	s := 0.0
	for k, v := range m {
		if k == prefix || strings.HasPrefix(k, prefix+"{") {
			s += v
		}
	}
	return s
}

func metricsDelta(before, after map[string]float64, prefixes ...string) string {
	var b strings.Builder
	keys := make([]string, 0, len(after))
	for k := range after {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) && after[k] != before[k] {
				fmt.Fprintf(&b, "  %s %v -> %v\n", k, before[k], after[k])
			}
		}
	}
	return b.String()
}

// TestFloods: 10,000 PORT commands per second from one client, 10,000 concurrent control
// sessions, and a stalled ftpalg (SIGSTOP) under load: limits hold, memory stays bounded,
// ftpalg keeps running and a normal transfer meanwhile succeeds.
func TestFloods(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	bin := requireTool(t, "benchpeer")
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	const metricsAddr = "127.0.0.1:9121"
	d := startFtpalg(t, l, withArgs("--metrics-listen", metricsAddr))
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fake := startBenchpeerServe(t, l, bin, netip.AddrPortFrom(x.OutsideClient, 21))
	// transfer runs normal curl downloads and uploads through ftpalg, in both rewriting and
	// passive modes.
	transfer := func(t *testing.T) {
		t.Helper()
		for _, m := range []lab.Mode{lab.PORT, lab.PASV} {
			local := t.TempDir() + "/get"
			start := time.Now()
			res := l.RunClient(ctxT(t, 40*time.Second), lab.Client, lab.Curl, "", lab.Transfer{Op: lab.Get, Mode: m, Server: vs.URL(""), Local: local, Timeout: 30 * time.Second})
			if res.Err != nil {
				t.Errorf("curl %s download during the load: %v\n%s", m, res.Err, tail(res.Stderr, 800))
				continue
			}
			if err := sameFile(local, vs.SHA); err != nil {
				t.Errorf("curl %s download: %v", m, err)
				continue
			}
			t.Logf("curl %s download ok in %v during the load", m, time.Since(start).Round(time.Millisecond))
		}
	}

	t.Run("port-flood-10k-per-second", func(t *testing.T) {
		before, err := metricsOf(l, metricsAddr)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		mark := d.Mark()
		rss0, _ := vmRSS(d.Proc.PID())
		stopRSS := rssSampler(d.Proc.PID())
		resc := make(chan lab.Result, 1)
		go func() {
			resc <- l.Run(ctxT(t, 30*time.Second), lab.Client, bin, "flood", "-server", fake.String(), "-rate", "10000", "-duration", "4s")
		}()
		time.Sleep(time.Second)
		transfer(t)
		res := <-resc
		peak := stopRSS()
		if res.Err != nil {
			t.Fatalf("flood: %v\n%s", res.Err, res.Stderr)
		}
		daemonAlive(t, d)
		var fr struct {
			Sent    int     `json:"sent"`
			Replies int     `json:"replies"`
			Seconds float64 `json:"seconds"`
		}
		if err := json.Unmarshal(res.Stdout, &fr); err != nil {
			t.Fatalf("flood output %q: %v", res.Stdout, err)
		}
		sent, replies, secs := fr.Sent, fr.Replies, fr.Seconds
		after, err := metricsOf(l, metricsAddr)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		evs := d.Since(mark)
		t.Logf("flood: %d PORT in %.2fs (%.0f/s), %d replies; ftpalg VmRSS %d KiB before, peak %d KiB; %d log lines during the flood",
			sent, secs, float64(sent)/secs, replies, rss0, peak, len(evs))
		t.Logf("metrics that moved:\n%s", metricsDelta(before, after, "ftpalg_"))
		if float64(sent)/secs < 8000 {
			t.Errorf("flood rate %.0f/s, want about 10,000/s", float64(sent)/secs)
		}
		if replies < sent*9/10 {
			t.Errorf("only %d of %d PORT commands answered: ftpalg lost or wedged the flooding session", replies, sent)
		}
		if peak > 256<<10 {
			t.Errorf("ftpalg peak VmRSS %d KiB under the flood", peak)
		}
		// The limits: every PORT replaces the session's one pending pinhole (the carrier
		// allows one), so pinholes never pile up; the log and a metric say so.
		if n := metricSum(after, "ftpalg_pinholes_opened_total") - metricSum(before, "ftpalg_pinholes_opened_total"); n < 1 {
			t.Errorf("no pinhole opened by the flood (%v): was the session inspected at all?", n)
		}
		if out := pinholesListed(t, l); strings.Count(out, "\n") > 10 {
			t.Errorf("%d pinholes open after the flood:\n%s", strings.Count(out, "\n"), tail([]byte(out), 1500))
		}
		// Refused commands and pinholes are rate-limited per session (a log line per
		// second says how many were left out); the metrics count them all.
		// A session gets at most 2,000 pinholes back to back, then 200 a second (three lines
		// each: rewrite, pinhole_open, pinhole_closed replaced), and 10 rejected lines a second.
		if limit := 3*(2000+int(secs+1)*200) + int(secs+1)*10 + 100; len(evs) > limit {
			t.Errorf("%d log lines for %d commands from one client in %.1fs (bound %d): not rate-limited", len(evs), sent, secs, limit)
		}
		if len(lab.Filter(evs, "", func(ev lab.Event) bool {
			return ev.Name() == "pinhole_closed" && ev.Str("reason") == "replaced" || ev.Name() == "rejected"
		})) == 0 {
			t.Errorf("no log line about the flood (pinhole_closed replaced or rejected)")
		}
	})

	t.Run("10k-concurrent-sessions", func(t *testing.T) {
		before, err := metricsOf(l, metricsAddr)
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		rss0, _ := vmRSS(d.Proc.PID())
		stopRSS := rssSampler(d.Proc.PID())
		mark := d.Mark()
		// 50 client addresses (200 sessions each: under ftpalg's per-client limit of 256 per
		// worker), so that ftpalg really tracks 10,000 sessions.
		var srcs, adds []string
		for i := 100; i < 150; i++ {
			a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
			if !x.Inside.Contains(a) || x.Name != "grow" {
				t.Fatalf("source %s not inside", a)
			}
			srcs = append(srcs, a.String())
			adds = append(adds, "addr add "+a.String()+"/24 dev eth0")
		}
		cmd := exec.Command("ip", "-n", l.NS(lab.Client), "-batch", "-")
		cmd.Stdin = strings.NewReader(strings.Join(adds, "\n") + "\n")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("client addresses: %v: %s", err, b)
		}
		out := &lab.SyncBuffer{}
		p, err := l.Start(lab.Client, out, out, bin, "idle", "-server", fake.String(), "-n", "10000", "-from", strings.Join(srcs, ","))
		if err != nil {
			t.Fatal(err)
		}
		// idle prints one JSON line once every session is open, then holds them until SIGINT.
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(out.String(), "}") && time.Now().Before(deadline) {
			select {
			case <-p.Done():
				t.Fatalf("benchpeer idle exited: %v: %s", p.Err(), out.String())
			case <-time.After(200 * time.Millisecond):
			}
		}
		var ir struct {
			Ready   int     `json:"ready"`
			Failed  int     `json:"failed"`
			Seconds float64 `json:"seconds"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(out.String())), &ir); err != nil {
			t.Fatalf("benchpeer idle: %q: %v", out.String(), err)
		}
		opened, failed, secs := ir.Ready, ir.Failed, ir.Seconds
		rssOpen, _ := vmRSS(d.Proc.PID())
		t.Logf("%d sessions opened (%d failed) in %.2fs; ftpalg VmRSS %d KiB before, %d KiB with them open", opened, failed, secs, rss0, rssOpen)
		if opened < 9900 {
			t.Errorf("only %d of 10000 sessions opened", opened)
		}
		transfer(t)
		daemonAlive(t, d)
		after, _ := metricsOf(l, metricsAddr)
		t.Logf("metrics that moved:\n%s", metricsDelta(before, after, "ftpalg_sessions", "ftpalg_rejections", "ftpalg_packets_total", "ftpalg_queue", "process_resident"))
		// End the load generator (its sockets close with it).
		_ = syscall.Kill(p.PID(), syscall.SIGINT)
		<-p.Done()
		peak := stopRSS()
		t.Logf("ftpalg peak VmRSS %d KiB", peak)
		if peak > 512<<10 {
			t.Errorf("ftpalg peak VmRSS %d KiB with 10,000 sessions", peak)
		}
		limitLines := lab.Filter(d.Since(mark), "rejected", func(ev lab.Event) bool { return ev.Str("reason") == "session_limit" })
		lim := metricSum(after, `ftpalg_rejections_total{reason="session_limit"}`) - metricSum(before, `ftpalg_rejections_total{reason="session_limit"}`)
		t.Logf("session_limit: %v counted, %d log lines (rate-limited)", lim, len(limitLines))
		if lim > 0 && len(limitLines) == 0 {
			t.Errorf("session limit reached (%v) without a log line", lim)
		}
		if len(limitLines) > 200 {
			t.Errorf("%d session_limit log lines: not rate-limited", len(limitLines))
		}
	})
}

// waitListen waits until ap accepts connections from the router.
func waitListen(l *lab.Lab, ap netip.AddrPort) error {
	var err error
	for i := 0; i < 50; i++ {
		var c net.Conn
		c, err = dialFrom(l, lab.Router, ap, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}
