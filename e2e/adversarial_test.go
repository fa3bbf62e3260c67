package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/e2e/lab"
)

// rawFTP is a minimal FTP client over one real TCP connection, writing exact bytes: each
// write is one segment (TCP_NODELAY, and a pause between writes).
type rawFTP struct {
	t *testing.T
	c *net.TCPConn
	r *bufio.Reader
}

func dialRaw(t *testing.T, l *lab.Lab, from lab.Role, to netip.AddrPort) *rawFTP {
	t.Helper()
	var c net.Conn
	err := l.Do(from, func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), 3*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, from, err)
	}
	tc := c.(*net.TCPConn)
	if err := tc.SetNoDelay(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return &rawFTP{t: t, c: tc, r: bufio.NewReader(tc)}
}

// write sends each part as its own segment, 100 ms apart.
func (f *rawFTP) write(parts ...string) {
	f.t.Helper()
	for i, p := range parts {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := f.c.Write([]byte(p)); err != nil {
			f.t.Fatalf("write %q: %v", p, err)
		}
	}
}

// reply reads one reply, multi-line ones included.
func (f *rawFTP) reply() (int, string, error) { return f.replyWithin(10 * time.Second) }

func (f *rawFTP) replyWithin(d time.Duration) (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(d))
	return readReply(f.r)
}

// readReply reads one FTP reply from r, a multi-line one (RFC 959 4.2: "123-" up to "123 ")
// included, and returns its code and its lines as read.
func readReply(r *bufio.Reader) (int, string, error) {
	var all []string
	first := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(all, ""), err
		}
		all = append(all, line)
		if len(line) < 4 {
			continue
		}
		if first == "" {
			first = line[:3]
			if line[3] != '-' {
				break
			}
			continue
		}
		if line[:3] == first && line[3] == ' ' {
			break
		}
	}
	code, err := strconv.Atoi(first)
	return code, strings.Join(all, ""), err
}

func (f *rawFTP) expect(code int) string {
	f.t.Helper()
	got, text, err := f.reply()
	if err != nil || got != code {
		f.t.Fatalf("reply %d %q (%v), want %d", got, text, err, code)
	}
	return text
}

func (f *rawFTP) login() {
	f.t.Helper()
	f.expect(220)
	f.write("USER anonymous\r\n")
	code, text, err := f.reply()
	if err != nil {
		f.t.Fatalf("USER: %v", err)
	}
	if code == 331 {
		f.write("PASS e2e@\r\n")
		code, text, err = f.reply()
	}
	if err != nil || code != 230 {
		f.t.Fatalf("login: %d %q %v", code, text, err)
	}
}

func listenIn(t *testing.T, l *lab.Lab, r lab.Role, ap netip.AddrPort) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := l.Do(r, func() error {
		var err error
		ln, err = net.Listen("tcp", ap.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", ap, r, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// acceptWithin returns the first connection within d, or an error.
func acceptWithin(ln *net.TCPListener, d time.Duration) (net.Conn, error) {
	_ = ln.SetDeadline(time.Now().Add(d))
	return ln.Accept()
}

func dialFrom(l *lab.Lab, r lab.Role, to netip.AddrPort, d time.Duration) (net.Conn, error) {
	var c net.Conn
	err := l.Do(r, func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), d)
		return err
	})
	return c, err
}

// portArg formats the PORT argument h1,h2,h3,h4,p1,p2.
func portArg(ap netip.AddrPort) string {
	b := ap.Addr().As4()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", b[0], b[1], b[2], b[3], ap.Port()>>8, ap.Port()&0xff)
}

// endpointOf227 is the endpoint a 227 reply announces, parsed as ftpalg's engine parses it.
func endpointOf227(text string) (netip.AddrPort, error) {
	ep, _, _, err := alg.Parse227([]byte(text))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("227 without an endpoint: %q: %w", text, err)
	}
	return ep, nil
}

// portOf229 returns the port a 229 reply announces.
func portOf229(text string) (uint16, error) {
	p, _, _, _, err := alg.Parse229([]byte(text))
	if err != nil {
		return 0, fmt.Errorf("229 without a port: %q: %w", text, err)
	}
	return p, nil
}

func parse227(t *testing.T, text string) netip.AddrPort {
	t.Helper()
	ep, err := endpointOf227(text)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestAdversarial drives ftpalg with hand-made control traffic over real TCP, through the
// lab router (grow plan, client behind SNAT).
func TestAdversarial(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	d := startFtpalg(t, l, nil)
	ctx := ctxT(t, 30*time.Second)
	vs, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A server that acts on any PORT (FXP): if a bounce PORT reached it intact, it would
	// connect to the third party.
	fxp, err := l.StartGoServer(ctx, ftppeerBin, lab.OutsideGo, x.OutsideGo, t.TempDir(), lab.GoServerOptions{NoIPCheck: true})
	if err != nil {
		t.Fatal(err)
	}
	vsAddr := netip.AddrPortFrom(vs.Addr, 21)

	// retr finishes a RETR on an active data connection and checks the content.
	retr := func(t *testing.T, f *rawFTP, ln *net.TCPListener) {
		t.Helper()
		c, err := acceptWithin(ln, 5*time.Second)
		if err != nil {
			t.Fatalf("server never connected back: %v", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read data: %v", err)
		}
		if got := sha(b); got != vs.SHA {
			t.Fatalf("downloaded %d bytes, sha256 %s, want %s", len(b), got[:12], vs.SHA[:12])
		}
		f.expect(226)
	}
	wantPinholes := func(t *testing.T, mark, n int) {
		t.Helper()
		if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, n, "pinhole_open", nil); err != nil {
			t.Errorf("pinhole_open: %v\n%s", err, eventLines(d.Since(mark)))
		}
	}
	noPinholes := func(t *testing.T, mark int) {
		t.Helper()
		if evs := lab.Filter(d.Since(mark), "pinhole_open", nil); len(evs) > 0 {
			t.Errorf("pinhole opened:\n%s", eventLines(evs))
		}
	}

	t.Run("port-split-across-segments", func(t *testing.T) {
		f := dialRaw(t, l, lab.Client, vsAddr)
		f.login()
		ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
		lp := netip.MustParseAddrPort(ln.Addr().String())
		mark := d.Mark()
		cmd := "PORT " + portArg(lp) + "\r\n"
		// vsftpd refuses a PORT naming another address than the control peer's: it answers
		// 200 only if ftpalg reassembled the command and rewrote it to the public address.
		f.write(cmd[:7], cmd[7:])
		f.expect(200)
		f.write("TYPE I\r\n")
		f.expect(200)
		f.write("RETR pub/" + lab.FileName + "\r\n")
		f.expect(150)
		retr(t, f, ln)
		wantPinholes(t, mark, 1)
	})

	t.Run("commands-in-one-segment", func(t *testing.T) {
		f := dialRaw(t, l, lab.Client, vsAddr)
		f.login()
		ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
		lp := netip.MustParseAddrPort(ln.Addr().String())
		mark := d.Mark()
		f.write("TYPE I\r\nPORT " + portArg(lp) + "\r\nRETR pub/" + lab.FileName + "\r\n")
		f.expect(200)
		f.expect(200)
		f.expect(150)
		retr(t, f, ln)
		wantPinholes(t, mark, 1)
	})

	t.Run("bounce-to-third-party", func(t *testing.T) {
		tp := listenIn(t, l, lab.ThirdParty, netip.AddrPortFrom(x.ThirdParty, 40000))
		f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(fxp.Addr, 21))
		f.login()
		mark := d.Mark()
		f.write("PORT " + portArg(netip.AddrPortFrom(x.ThirdParty, 40000)) + "\r\n")
		code, text, err := f.reply()
		t.Logf("server's answer to the bounce PORT: %d %q %v", code, text, err)
		if err == nil && code >= 200 && code < 300 {
			t.Errorf("the FXP server accepted the bounce PORT (%d %q): ftpalg must neutralise it", code, text)
		}
		if err == nil {
			f.write("RETR pub/" + lab.FileName + "\r\n")
		}
		if c, err := acceptWithin(tp, 3*time.Second); err == nil {
			c.Close()
			t.Errorf("the third party got a connection from %s", c.RemoteAddr())
		}
		if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", func(ev lab.Event) bool { return ev.Str("reason") == "bounce" }); err != nil {
			t.Errorf("rejected/bounce: %v\n%s", err, eventLines(d.Since(mark)))
		}
		noPinholes(t, mark)
	})

	t.Run("low-port", func(t *testing.T) {
		low := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 80))
		f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(fxp.Addr, 21))
		f.login()
		mark := d.Mark()
		f.write("PORT " + portArg(netip.AddrPortFrom(x.Client, 80)) + "\r\n")
		code, text, err := f.reply()
		t.Logf("server's answer to the low-port PORT: %d %q %v", code, text, err)
		if err == nil {
			f.write("RETR pub/" + lab.FileName + "\r\n")
		}
		if c, err := acceptWithin(low, 3*time.Second); err == nil {
			c.Close()
			t.Errorf("port 80 of the client got a connection from %s", c.RemoteAddr())
		}
		if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", func(ev lab.Event) bool { return ev.Str("reason") == "low_port" }); err != nil {
			t.Errorf("rejected/low_port: %v\n%s", err, eventLines(d.Since(mark)))
		}
		noPinholes(t, mark)
	})

	// A fake server on the outside client's host: its banner carries a 227 line.
	fakeData := netip.AddrPortFrom(x.OutsideClient, 30000)
	fake227 := "227 Entering Passive Mode (" + portArg(fakeData) + ")\r\n"
	fakeServer := func(t *testing.T, script func(c net.Conn, r *bufio.Reader)) {
		ln := listenIn(t, l, lab.OutsideClient, netip.AddrPortFrom(x.OutsideClient, 21))
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			script(c, bufio.NewReader(c))
		}()
	}
	dataLn := listenIn(t, l, lab.OutsideClient, fakeData)
	noData := func(t *testing.T) {
		t.Helper()
		if c, err := dialFrom(l, lab.Client, fakeData, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the client reached %s: a pinhole was opened from a fake 227", fakeData)
		}
		if c, err := acceptWithin(dataLn, 100*time.Millisecond); err == nil {
			c.Close()
			t.Errorf("the fake server's data port accepted %s", c.RemoteAddr())
		}
	}

	t.Run("fake-227-in-banner", func(t *testing.T) {
		fakeServer(t, func(c net.Conn, r *bufio.Reader) {
			_, _ = io.WriteString(c, "220-Welcome\r\n"+fake227+"220 Ready\r\n")
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				_, _ = io.WriteString(c, "502 no\r\n")
			}
		})
		mark := d.Mark()
		f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(x.OutsideClient, 21))
		text := f.expect(220)
		if !strings.Contains(text, "227 Entering") {
			t.Fatalf("banner lost its 227 line: %q", text)
		}
		f.write("NOOP\r\n")
		f.expect(502)
		noData(t)
		noPinholes(t, mark)
	})

	t.Run("fake-227-in-continuation-after-pasv", func(t *testing.T) {
		// PASV is outstanding, but the 227 sits on a continuation line of a multi-line 150
		// reply: text, never a reply.
		fakeServer(t, func(c net.Conn, r *bufio.Reader) {
			_, _ = io.WriteString(c, "220 Ready\r\n")
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.HasPrefix(line, "PASV") {
					_, _ = io.WriteString(c, "502-Not now, but:\r\n"+fake227+"502 End\r\n")
					continue
				}
				_, _ = io.WriteString(c, "502 no\r\n")
			}
		})
		mark := d.Mark()
		f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(x.OutsideClient, 21))
		f.expect(220)
		f.write("PASV\r\n")
		f.expect(502)
		noData(t)
		noPinholes(t, mark)
	})

	t.Run("pinhole-used-after-expiry", func(t *testing.T) {
		if err := d.Stop(); err != nil {
			t.Fatalf("stop default ftpalg: %v", err)
		}
		args := lab.DefaultFtpalgArgs()
		for i, a := range args {
			if a == "--pinhole-timeout" {
				args[i+1] = "2s"
			}
		}
		d2 := startFtpalg(t, l, args)
		f := dialRaw(t, l, lab.Client, vsAddr)
		f.login()
		// Control: a pinhole used at once works.
		f.write("PASV\r\n")
		ap := parse227(t, f.expect(227))
		c, err := dialFrom(l, lab.Client, ap, 2*time.Second)
		if err != nil {
			t.Fatalf("fresh pinhole to %s: %v", ap, err)
		}
		f.write("NLST pub/\r\n")
		f.expect(150)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || !strings.Contains(string(b), lab.FileName) {
			t.Fatalf("listing %q %v", b, err)
		}
		f.expect(226)
		// Now let one expire.
		f.write("PASV\r\n")
		ap = parse227(t, f.expect(227))
		mark := d2.Mark()
		time.Sleep(3 * time.Second)
		expired := func(ev lab.Event) bool { return ev.AddrPort("to") == ap }
		if _, err := d2.WaitFor(ctxT(t, 5*time.Second), mark, 1, "pinhole_expired", expired); err != nil {
			t.Errorf("pinhole_expired: %v\n%s", err, eventLines(d2.Since(0)))
		}
		if c, err := dialFrom(l, lab.Client, ap, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("connected to %s through an expired pinhole", ap)
		} else {
			t.Logf("dial after expiry failed as it must: %v", err)
		}
	})
}

// TestKernelHelperSplitPort is the reference for the split-segment case, where the kernel FTP
// helper is known to fail: it parses one segment at a time, takes the first half of the PORT
// for a partial command and drops it, and every retransmission again, so the control
// connection is wedged (no reply ever comes). ftpalg passes the same case
// (TestAdversarial/port-split-across-segments). If this test starts failing, the kernel
// helper learnt to reassemble and the docs must say so.
func TestKernelHelperSplitPort(t *testing.T) {
	t.Parallel()
	requireLab(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow(), KernelHelper: true})
	x := l.Addrs
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		split  bool
		wedged bool // no reply at all
	}{
		{name: "one-segment", split: false},
		{name: "split", split: true, wedged: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := dialRaw(t, l, lab.Client, netip.AddrPortFrom(vs.Addr, 21))
			f.login()
			ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
			cmd := "PORT " + portArg(netip.MustParseAddrPort(ln.Addr().String())) + "\r\n"
			if tc.split {
				f.write(cmd[:7], cmd[7:])
			} else {
				f.write(cmd)
			}
			code, text, err := f.replyWithin(4 * time.Second)
			var ne net.Error
			timedOut := errors.As(err, &ne) && ne.Timeout()
			switch {
			case tc.wedged && !timedOut:
				t.Errorf("got %d %q (%v), want no reply (the helper drops the partial command)", code, text, err)
			case !tc.wedged && (err != nil || code != 200):
				t.Errorf("got %d %q (%v), want 200", code, text, err)
			}
		})
	}
}
