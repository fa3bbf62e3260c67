package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// newZonesLab builds the zones lab (lab.NewZones) and registers its teardown, which also
// checks that none of its namespaces is left behind.
func newZonesLab(t *testing.T, cfg lab.Config) *lab.ZonesLab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	z, err := lab.NewZones(ctx, cfg)
	if err != nil {
		t.Fatalf("zones lab: %v", err)
	}
	t.Cleanup(func() {
		if err := z.Close(); err != nil {
			t.Errorf("zones lab teardown: %v", err)
		}
		for _, n := range z.Namespaces() {
			if _, err := os.Stat("/run/netns/" + n); err == nil {
				t.Errorf("namespace %s left after teardown", n)
			}
		}
	})
	return z
}

// TestZones: control connections in non-zero conntrack zones (lab.NewZones: two tenants with
// the same inside network and client address 192.0.2.5, on router links t1 and t2 in zones 7
// and 2, SNATed to 198.51.100.1 and .2). First each tenant alone does a PASV and a PORT
// download; then both at once, each from 192.0.2.5:40021 to 198.51.100.20:21 (the same
// 4-tuple in two zones) with a PORT naming 192.0.2.5:40100, both downloads at the same time.
// ftpalg must carry them all, each PORT rewritten to its own tenant's public address; the
// kernel helper is the reference; without an ALG every case must fail.
func TestZones(t *testing.T) {
	t.Parallel()
	requireLab(t)
	runSetups(t, "conntrack zones", func(t *testing.T, s setup13, res *results) {
		z := newZonesLab(t, lab.Config{KernelHelper: s.helper})
		x := z.Plan
		var d *lab.Daemon
		if s.ftpalg {
			d = startFtpalg(t, z.Lab, nil)
		}
		srv, err := z.StartVsftpd(ctxT(t, 20*time.Second), lab.OutsideServer, x.Server, t.TempDir(), lab.VsftpdOptions{})
		if err != nil {
			t.Fatal(err)
		}
		server := netip.AddrPortFrom(x.Server, 21)
		// download runs one download as a tenant; beforeDial and afterLogin, when not nil,
		// are called before it connects and between the login and the transfer.
		download := func(t *testing.T, tn lab.Tenant, mode lab.Mode, local, listen netip.AddrPort, beforeDial, afterLogin func()) error {
			if beforeDial != nil {
				beforeDial()
			}
			f, err := dialFTP(z.Lab, tn.Role, local, server, true)
			if err != nil {
				return err
			}
			defer f.close()
			if err := f.login(); err != nil {
				return err
			}
			if afterLogin != nil {
				afterLogin()
			}
			if mode == lab.PASV {
				_, err := f.pasvGet(z.Lab, tn.Role, false, srv.SHA)
				return err
			}
			return f.portGet(t, z.Lab, tn.Role, listen, false, srv.SHA)
		}
		record := func(t *testing.T, name string, err error) {
			res.set(name, s, outcome(err))
			t.Logf("%s: %s", s.name, outcome(err))
			switch {
			case s.ftpalg && err != nil:
				t.Errorf("%v", err)
			case !s.ftpalg && !s.helper && err == nil:
				t.Errorf("succeeded without an ALG: the case proves nothing")
			}
		}

		// pair runs a PORT download as both tenants at once, each from client:port to the
		// server (the same 4-tuple in two zones), each naming client:port+79 in its PORT. With dialTogether
		// both connect at the same moment (the first connections ftpalg sees on both links:
		// it has learned neither zone yet); else both log in first, then transfer together.
		pair := func(t *testing.T, name string, port uint16, dialTogether bool) {
			t.Run(name, func(t *testing.T) {
				mark := 0
				if d != nil {
					mark = d.Mark()
				}
				local := netip.AddrPortFrom(x.Client, port)
				listen := netip.AddrPortFrom(x.Client, port+79)
				var ready sync.WaitGroup
				ready.Add(len(x.Tenants))
				var once [2]sync.Once
				errs := make([]error, len(x.Tenants))
				var wg sync.WaitGroup
				for i, tn := range x.Tenants {
					wg.Add(1)
					go func() {
						defer wg.Done()
						// A tenant that fails early still releases the other.
						defer once[i].Do(ready.Done)
						barrier := func() {
							once[i].Do(ready.Done)
							ready.Wait()
						}
						if dialTogether {
							errs[i] = download(t, tn, lab.PORT, local, listen, barrier, nil)
						} else {
							errs[i] = download(t, tn, lab.PORT, local, listen, nil, barrier)
						}
						if errs[i] != nil {
							errs[i] = fmt.Errorf("zone %d: %w", tn.Zone, errs[i])
						}
					}()
				}
				wg.Wait()
				err := errors.Join(errs...)
				if err == nil && d != nil {
					err = zoneEvents(d, mark, lab.PORT, x.Tenants[:])
				}
				if d != nil {
					t.Logf("ftpalg events:\n%s", eventLines(d.Since(mark)))
				}
				if out, cerr := z.Exec(ctxT(t, 5*time.Second), lab.Router, "conntrack", "-L", "-p", "tcp", "--dport", "21", "--sport", fmt.Sprint(port)); cerr == nil {
					t.Logf("router's control connections:\n%s", out)
				}
				if dialTogether && s.ftpalg && err != nil {
					// The queue does not carry the zone: at first contact nothing tells ftpalg
					// which of the two entries is whose, so it refuses both PORTs (neutralised:
					// the server answers "Unknown command"). What must never happen is a PORT
					// reaching the server with the private address ("Illegal PORT").
					res.set(name, s, "refused, no leak")
					if strings.Contains(err.Error(), "Illegal PORT") || !strings.Contains(err.Error(), "Unknown command") {
						t.Errorf("first contact: %v (want both PORTs neutralised, none passed unrewritten)", err)
					}
					return
				}
				record(t, name, err)
			})
		}

		// First contact: the two tenants' first connections, the same 4-tuple at once.
		pair(t, "same-4-tuple-first-contact/port", 40022, true)
		for _, tn := range x.Tenants {
			for _, mode := range []lab.Mode{lab.PASV, lab.PORT} {
				name := fmt.Sprintf("zone%d/%s", tn.Zone, mode)
				t.Run(name, func(t *testing.T) {
					mark := 0
					if d != nil {
						mark = d.Mark()
					}
					err := download(t, tn, mode, netip.AddrPort{}, netip.AddrPortFrom(x.Client, 0), nil, nil)
					if err == nil && d != nil {
						err = zoneEvents(d, mark, mode, []lab.Tenant{tn})
					}
					if d != nil {
						t.Logf("ftpalg events:\n%s", eventLines(d.Since(mark)))
					}
					record(t, name, err)
				})
			}
		}
		// Both tenants again, now that ftpalg has seen each interface's zone.
		pair(t, "same-4-tuple-two-zones/port", 40021, false)
	})
}

// zoneEvents checks ftpalg's account of downloads by tenants: a pinhole each and, for PORT,
// a rewrite to each tenant's own public address; nothing refused.
func zoneEvents(d *lab.Daemon, mark int, mode lab.Mode, tenants []lab.Tenant) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var errs []error
	if _, err := d.WaitFor(ctx, mark, len(tenants), "pinhole_open", nil); err != nil {
		errs = append(errs, fmt.Errorf("pinhole_open: %w", err))
	}
	if mode.Active() {
		for _, tn := range tenants {
			if len(lab.Filter(d.Since(mark), "rewrite", func(ev lab.Event) bool { return ev.Addr("to") == tn.Public })) == 0 {
				errs = append(errs, fmt.Errorf("no rewrite to %s (zone %d)", tn.Public, tn.Zone))
			}
		}
	}
	errs = append(errs, noEvents(d, mark, "rejected", nil))
	return errors.Join(errs...)
}
