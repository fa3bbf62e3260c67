package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// hairpinCase is one download through NAT loopback.
type hairpinCase struct {
	name string
	mode lab.Mode
	// curl, when set, runs curl with these extra flags; else the Go client (ftpc).
	curl []string
	// rewrite: ftpalg must rewrite the announced endpoint (the inside server's 227, the
	// inside client's PORT/EPRT: both name an inside address the peer cannot use as is).
	rewrite bool
}

var hairpinCases = []hairpinCase{
	// The client dials the control connection's address with the 227's port, as Python's
	// ftplib does by default (and curl --ftp-skip-pasv-ip).
	{name: "pasv/go-ftplib-style", mode: lab.PASV, rewrite: true},
	{name: "pasv/curl-skip-pasv-ip", mode: lab.PASV, curl: []string{"--ftp-skip-pasv-ip"}, rewrite: true},
	{name: "epsv/curl", mode: lab.EPSV, curl: []string{}},
	{name: "port/go", mode: lab.PORT, rewrite: true},
	{name: "port/curl", mode: lab.PORT, curl: []string{}, rewrite: true},
	{name: "eprt/curl", mode: lab.EPRT, curl: []string{}, rewrite: true},
}

// TestHairpin: NAT loopback. The inside client connects to the router's public address,
// which is port-forwarded to the inside vsftpd and masqueraded back to the router's LAN
// address (lab.Config.Hairpin): the control connection's conntrack entry has both DNAT and
// SNAT. Passive (the client using the control connection's address) and active downloads
// must work with ftpalg, each with a pinhole and, where an inside address is announced, a
// rewrite; the kernel helper is recorded; without an ALG every case must fail.
func TestHairpin(t *testing.T) {
	t.Parallel()
	requireLab(t)
	runSetups(t, "hairpin NAT", func(t *testing.T, s setup13, res *results) {
		l := newLab(t, lab.Config{Addrs: lab.Grow(), KernelHelper: s.helper, Hairpin: true})
		x := l.Addrs
		var d *lab.Daemon
		if s.ftpalg {
			d = startFtpalg(t, l, nil)
		}
		srv, err := l.StartVsftpd(ctxT(t, 20*time.Second), lab.InsideServer, x.InsideServer, t.TempDir(), lab.VsftpdOptions{})
		if err != nil {
			t.Fatal(err)
		}
		run := func(t *testing.T, c hairpinCase, timeout time.Duration) error {
			if c.curl != nil {
				local := filepath.Join(t.TempDir(), "get")
				tr := lab.Transfer{Op: lab.Get, Mode: c.mode, Server: lab.URL(x.RouterPublic, ""), Local: local, Timeout: timeout}
				ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
				defer cancel()
				r := l.Run(ctx, lab.Client, "curl", append(append([]string(nil), c.curl...), lab.CurlArgs(tr)...)...)
				if r.Err != nil {
					return fmt.Errorf("curl exit %d: %s", r.ExitCode, lastCurlError(r.Stderr))
				}
				return sameFile(local, srv.SHA)
			}
			f, err := dialFTP(l, lab.Client, netip.AddrPort{}, netip.AddrPortFrom(x.RouterPublic, 21), true)
			if err != nil {
				return err
			}
			defer f.close()
			if err := f.login(); err != nil {
				return err
			}
			if c.mode == lab.PASV {
				_, err := f.pasvGet(l, lab.Client, true, srv.SHA)
				return err
			}
			return f.portGet(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0), c.mode == lab.EPRT, srv.SHA)
		}
		if !s.ftpalg {
			// Failures wait for timeouts: run the cases at once, then report each.
			errs := make([]error, len(hairpinCases))
			var wg sync.WaitGroup
			for i, c := range hairpinCases {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = run(t, c, negativeOpTimeout)
				}()
			}
			wg.Wait()
			for i, c := range hairpinCases {
				t.Run(c.name, func(t *testing.T) {
					res.set(c.name, s, outcome(errs[i]))
					t.Logf("%s: %s", s.name, outcome(errs[i]))
					if !s.helper && errs[i] == nil {
						t.Errorf("succeeded without an ALG: the case proves nothing")
					}
				})
			}
			return
		}
		for _, c := range hairpinCases {
			t.Run(c.name, func(t *testing.T) {
				mark := d.Mark()
				err := run(t, c, defaultOpTimeout)
				if err == nil {
					err = hairpinEvents(d, mark, c)
				}
				res.set(c.name, s, outcome(err))
				if err != nil {
					t.Errorf("%v\nftpalg events:\n%s", err, eventLines(d.Since(mark)))
				} else {
					t.Logf("ok; ftpalg:\n%s", eventLines(lab.Filter(d.Since(mark), "", func(ev lab.Event) bool {
						return ev.Name() == "rewrite" || ev.Name() == "pinhole_open"
					})))
				}
			})
		}
	})
}

// hairpinEvents checks ftpalg's account of one hairpin case: a pinhole, a rewrite when an
// inside address was announced, no refusal.
func hairpinEvents(d *lab.Daemon, mark int, c hairpinCase) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var errs []error
	if _, err := d.WaitFor(ctx, mark, 1, "pinhole_open", nil); err != nil {
		errs = append(errs, fmt.Errorf("pinhole_open: %w", err))
	}
	rw := lab.Filter(d.Since(mark), "rewrite", nil)
	if c.rewrite && len(rw) == 0 {
		errs = append(errs, errors.New("no rewrite event"))
	}
	if !c.rewrite && len(rw) > 0 {
		errs = append(errs, fmt.Errorf("rewrite where nothing needs one: %s", eventLines(rw)))
	}
	errs = append(errs, noEvents(d, mark, "rejected", nil))
	return errors.Join(errs...)
}

// lastCurlError returns the server's last refusal curl logged, else curl's error line (or
// the end of its output).
func lastCurlError(stderr []byte) string {
	lines := strings.Split(strings.TrimSpace(string(stderr)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "< 4") || strings.HasPrefix(lines[i], "< 5") {
			return "server: " + strings.TrimSpace(lines[i][2:])
		}
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "curl:") {
			return lines[i]
		}
	}
	return tail(stderr, 200)
}
