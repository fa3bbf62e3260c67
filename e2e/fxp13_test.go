package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// TestFXP: a server-to-server transfer (RFC 959 figure 2) driven by the inside client through
// SNAT. Server A (vsftpd on osrv, pasv_promiscuous) is told PASV (or EPSV) and STOR; server B
// (vsftpd on the ogo host, port_promiscuous) is told PORT (or EPRT) naming A's announced
// endpoint, then RETR: B sends its file straight to A, and it must arrive intact. ftpalg must
// log `fxp`, open no pinhole for that PORT/EPRT, rewrite and neutralise nothing. The negative
// case: a PORT naming a third party (a listener on the outside client's host) that no server
// announced stays a bounce: neutralised (B refuses it), `rejected` `bounce`, no connection
// reaches the third party. Without an ALG and with the kernel helper both are recorded (both
// pass FXP and the bounce unchanged).
func TestFXP(t *testing.T) {
	t.Parallel()
	requireLab(t)
	runSetups(t, "FXP", func(t *testing.T, s setup13, res *results) {
		l := newLab(t, lab.Config{Addrs: lab.Grow(), KernelHelper: s.helper})
		x := l.Addrs
		var d *lab.Daemon
		if s.ftpalg {
			d = startFtpalg(t, l, nil)
		}
		ctx := ctxT(t, 20*time.Second)
		srvA, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{PasvPromiscuous: true})
		if err != nil {
			t.Fatal(err)
		}
		srvB, err := l.StartVsftpd(ctx, lab.OutsideGo, x.OutsideGo, t.TempDir(), lab.VsftpdOptions{PortPromiscuous: true})
		if err != nil {
			t.Fatal(err)
		}
		login := func(srv *lab.FTPServer) (*ftpc, error) {
			f, err := dialFTP(l, lab.Client, netip.AddrPort{}, netip.AddrPortFrom(srv.Addr, 21), true)
			if err != nil {
				return nil, err
			}
			if err := f.login(); err != nil {
				f.close()
				return nil, err
			}
			return f, nil
		}

		for _, ext := range []bool{false, true} {
			name := "fxp/pasv-A-port-B"
			if ext {
				name = "fxp/epsv-A-eprt-B"
			}
			t.Run(name, func(t *testing.T) {
				mark := 0
				if d != nil {
					mark = d.Mark()
				}
				remote := fmt.Sprintf("fxp-%s-%v.bin", s.name, ext)
				err := func() error {
					fa, err := login(srvA)
					if err != nil {
						return fmt.Errorf("A: %w", err)
					}
					defer fa.close()
					fb, err := login(srvB)
					if err != nil {
						return fmt.Errorf("B: %w", err)
					}
					defer fb.close()
					var ep netip.AddrPort
					if ext {
						text, err := fa.cmd("EPSV", 229)
						if err != nil {
							return fmt.Errorf("A: %w", err)
						}
						p, err := portOf229(text)
						if err != nil {
							return fmt.Errorf("A: %w", err)
						}
						ep = netip.AddrPortFrom(srvA.Addr, p)
						_, err = fb.cmd(fmt.Sprintf("EPRT |1|%s|%d|", ep.Addr(), ep.Port()), 200)
						if err != nil {
							return fmt.Errorf("B: %w", err)
						}
					} else {
						text, err := fa.cmd("PASV", 227)
						if err != nil {
							return fmt.Errorf("A: %w", err)
						}
						if ep, err = endpointOf227(text); err != nil {
							return fmt.Errorf("A: %w", err)
						}
						if _, err := fb.cmd("PORT "+portArg(ep), 200); err != nil {
							return fmt.Errorf("B: %w", err)
						}
					}
					t.Logf("A announced %s; B was told to send there", ep)
					if err := fa.send("STOR incoming/" + remote + "\r\n"); err != nil {
						return err
					}
					if err := fb.send("RETR pub/" + lab.FileName + "\r\n"); err != nil {
						return err
					}
					for _, st := range []struct {
						f    *ftpc
						who  string
						code int
					}{{fb, "B RETR", 150}, {fa, "A STOR", 150}, {fb, "B RETR", 226}, {fa, "A STOR", 226}} {
						if _, err := st.f.expect(st.who, st.code, 10*time.Second); err != nil {
							return err
						}
					}
					return sameFile(srvA.Incoming(remote), srvB.SHA)
				}()
				if err == nil && d != nil {
					err = fxpEvents(d, mark)
				}
				res.set(name, s, outcome(err))
				t.Logf("%s: %s", s.name, outcome(err))
				if d != nil {
					t.Logf("ftpalg events:\n%s", eventLines(d.Since(mark)))
				}
				if err != nil && s.ftpalg {
					t.Errorf("%v", err)
				}
			})
		}

		t.Run("bounce/unannounced-third-party", func(t *testing.T) {
			third := netip.AddrPortFrom(x.OutsideClient, 40000)
			ln := listenIn(t, l, lab.OutsideClient, third)
			mark := 0
			if d != nil {
				mark = d.Mark()
			}
			fb, err := login(srvB)
			if err != nil {
				t.Fatalf("B: %v", err)
			}
			defer fb.close()
			var verdict error
			if err := fb.send("PORT " + portArg(third) + "\r\n"); err != nil {
				t.Fatal(err)
			}
			code, text, rerr := fb.read(5 * time.Second)
			t.Logf("B's answer to the bounce PORT: %d %q %v", code, text, rerr)
			accepted := rerr == nil && code/100 == 2
			if rerr == nil {
				_ = fb.send("RETR pub/" + lab.FileName + "\r\n")
			}
			reached := false
			if c, err := acceptWithin(ln, 3*time.Second); err == nil {
				reached = true
				c.Close()
			}
			switch {
			case reached:
				verdict = fmt.Errorf("bounce passed: B connected to the third party %s", third)
			case accepted:
				verdict = fmt.Errorf("bounce accepted by B (%d), no connection seen", code)
			}
			cell := "refused: " + text
			if verdict != nil {
				cell = outcome(verdict)
			}
			if len(cell) > 60 {
				cell = cell[:57] + "..."
			}
			res.set("bounce/unannounced-third-party", s, cell)
			if d == nil {
				return
			}
			if verdict != nil {
				t.Errorf("%v", verdict)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, err := d.WaitFor(ctx, mark, 1, "rejected", func(ev lab.Event) bool {
				return ev.Str("reason") == "bounce" && ev.Str("action") == "neutralized"
			}); err != nil {
				t.Errorf("rejected bounce neutralized: %v", err)
			}
			if err := errors.Join(noEvents(d, mark, "fxp", nil), noEvents(d, mark, "pinhole_open", nil)); err != nil {
				t.Errorf("%v", err)
			}
			t.Logf("ftpalg events:\n%s", eventLines(d.Since(mark)))
		})
	})
}

// fxpEvents checks ftpalg's account of an FXP transfer: an fxp line for the PORT/EPRT, and no
// pinhole, rewrite or refusal for it (the 227/229 of server A gets its usual pinhole).
func fxpEvents(d *lab.Daemon, mark int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var errs []error
	if _, err := d.WaitFor(ctx, mark, 1, "fxp", nil); err != nil {
		errs = append(errs, fmt.Errorf("fxp event: %w", err))
	}
	fromClient := func(ev lab.Event) bool { return ev.Str("cmd") == "PORT" || ev.Str("cmd") == "EPRT" }
	errs = append(errs,
		noEvents(d, mark, "pinhole_open", fromClient),
		noEvents(d, mark, "rewrite", nil),
		noEvents(d, mark, "rejected", nil))
	return errors.Join(errs...)
}
