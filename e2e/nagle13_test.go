package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// nagleDelay is the delay impair adds to every TCP packet the client sends.
const nagleDelay = 50 * time.Millisecond

// delayedACK is Linux's shortest delayed ACK (TCP_DELACK_MIN): the server acknowledges a
// segment that holds only `PORT ` this late, with or without anything on the path.
const delayedACK = 40 * time.Millisecond

// TestNagle: a client with Nagle on (TCP_NODELAY off) writes `PORT ` and, 1 ms later, the
// argument and CRLF, over a path where each packet the client sends waits 50 ms
// (e2e/cmd/impair in the client's namespace: the kernel has no netem), through the SNAT
// router. Nagle keeps the second write back until `PORT ` is acknowledged, so a router that
// holds `PORT ` (waiting for the rest of the line) stalls the command until the client's
// tail-loss probe. With ftpalg the PORT must be rewritten (a rewrite event, vsftpd answers
// 200), the download must work, and the PORT's round trip (first write to the 200) may cost
// about one round trip more than a NOOP's plus the server's delayed ACK of `PORT `, which
// the same split of a command nobody holds (MODE S) measures: it must stay under that
// baseline (at least 2 NOOPs + 40 ms) + NOOP/2 + 30 ms, which a release driven by the
// client's tail-loss probe (about 2 RTT + 200 ms later) cannot. The kernel helper drops
// `PORT ` (recorded); without an ALG the unrewritten PORT is refused (must fail).
func TestNagle(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireTool(t, "impair") // built before the subtests run in parallel
	runSetups(t, "Nagle", func(t *testing.T, s setup13, res *results) {
		l := newLab(t, lab.Config{Addrs: lab.Grow(), KernelHelper: s.helper})
		x := l.Addrs
		var d *lab.Daemon
		if s.ftpalg {
			d = startFtpalg(t, l, nil)
		}
		srv, err := l.StartVsftpd(ctxT(t, 20*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delayClient(t, l, lab.Client, nagleDelay)

		const row = "port-split-nagle-50ms/port"
		f, err := dialFTP(l, lab.Client, netip.AddrPort{}, netip.AddrPortFrom(srv.Addr, 21), false)
		if err != nil {
			t.Fatal(err)
		}
		defer f.close()
		if err := f.login(); err != nil {
			t.Fatal(err)
		}
		// The round trip of a one-segment command.
		var noops []time.Duration
		for range 3 {
			start := time.Now()
			if _, err := f.cmd("NOOP", 200); err != nil {
				t.Fatal(err)
			}
			noops = append(noops, time.Since(start))
		}
		noop := slices.Min(noops)
		if noop < nagleDelay {
			t.Fatalf("NOOP round trip %v is shorter than the added delay %v: impair is not delaying", noop, nagleDelay)
		}

		ln := listenIn(t, l, lab.Client, netip.AddrPortFrom(x.Client, 0))
		lp := netip.MustParseAddrPort(ln.Addr().String())
		mark := 0
		if d != nil {
			mark = d.Mark()
		}
		// split writes the verb and a space, and 1 ms later the argument: Nagle holds the
		// second write until the first is acknowledged.
		split := func(verb, arg string, code int) (time.Duration, error) {
			start := time.Now()
			if err := f.send(verb + " "); err != nil {
				return 0, err
			}
			time.Sleep(time.Millisecond)
			if err := f.send(arg + "\r\n"); err != nil {
				return 0, err
			}
			_, err := f.expect(verb, code, 5*time.Second)
			return time.Since(start), err
		}
		// The baseline: the same split of a command nothing on the path waits for (MODE S).
		// It pays the server's delayed ACK of the lone verb (40 ms or more) like the PORT.
		// Two rounds, the faster of each counts: a busy machine delays single samples.
		capture := captureServer(t, l, lab.OutsideServer)
		var modes, ports []time.Duration
		for range 2 {
			var m, p time.Duration
			if m, err = split("MODE", "S", 200); err != nil {
				t.Fatalf("split MODE S: %v", err)
			}
			modes = append(modes, m)
			if p, err = split("PORT", portArg(lp), 200); err != nil {
				break
			}
			ports = append(ports, p)
		}
		portRTT := 5 * time.Second
		if len(ports) > 0 {
			portRTT = slices.Min(ports)
		}
		if c := capture(); c != "" && (s.ftpalg || s.helper) {
			t.Logf("%s: control packets at the server around the split commands (tcpdump):\n%s", s.name, c)
		}
		// At most one round trip more than a NOOP, plus the delayed ACK (as the baseline
		// paid it), plus half a round trip and 30 ms of slack. A release driven by the
		// client's tail-loss probe costs about 2 RTT + 200 ms instead.
		bound := max(slices.Min(modes), noop+noop+delayedACK) + noop/2 + 30*time.Millisecond
		t.Logf("%s: NOOP %v; split MODE S %v; split PORT %v (%v); bound %v", s.name, noops, modes, ports, err, bound.Round(time.Millisecond))
		if err == nil {
			err = f.retrActive(ln, srv.SHA)
		}
		if err == nil && d != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if _, werr := d.WaitFor(ctx, mark, 1, "rewrite", func(ev lab.Event) bool { return ev.Str("cmd") == "PORT" }); werr != nil {
				err = fmt.Errorf("no rewrite event: %w", werr)
			}
		}
		slow := err == nil && portRTT > bound
		cell := outcome(err)
		if err == nil {
			cell = fmt.Sprintf("ok: PORT %v, MODE %v, NOOP %v", portRTT.Round(time.Millisecond), slices.Min(modes).Round(time.Millisecond), noop.Round(time.Millisecond))
			if slow {
				cell = fmt.Sprintf("SLOW: PORT %v > %v (NOOP %v)", portRTT.Round(time.Millisecond), bound.Round(time.Millisecond), noop.Round(time.Millisecond))
			}
		}
		res.set(row, s, cell)
		if d != nil {
			t.Logf("ftpalg events:\n%s", eventLines(lab.Filter(d.Since(mark), "", func(ev lab.Event) bool {
				return !strings.HasPrefix(ev.Name(), "session_")
			})))
		}
		switch {
		case s.ftpalg && err != nil:
			t.Errorf("%v", err)
		case s.ftpalg && slow:
			t.Errorf("the split PORT took %v, over %v (the split MODE's %v or 2 NOOPs + 40 ms, + NOOP/2 + 30 ms): the verb was held", portRTT, bound, slices.Min(modes))
		case !s.ftpalg && !s.helper && err == nil:
			t.Errorf("succeeded without an ALG: the case proves nothing")
		}
	})
}

// delayClient delays every TCP packet a role sends by delay: impair in the role's namespace,
// fed by an iptables rule, stopped at cleanup.
func delayClient(t *testing.T, l *lab.Lab, r lab.Role, delay time.Duration) {
	t.Helper()
	out, errOut := &lab.SyncBuffer{}, &lab.SyncBuffer{}
	const num = "73"
	p, err := l.Start(r, out, errOut, requireTool(t, "impair"), "-queue", num, "-loss", "0", "-dup", "0",
		"-reorder", "1", "-delay", delay.String(), "-jitter", "0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(15, 5*time.Second) })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("impair in %s not ready: %s %s", r, out, errOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, err := l.Exec(ctxT(t, 10*time.Second), r, "iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp",
		"-m", "mark", "!", "--mark", "0x1d", "-j", "NFQUEUE", "--queue-num", num); err != nil {
		t.Fatalf("queue rule in %s: %v: %s", r, err, b)
	}
}

// captureServer records the control connection's packets at a server's interface, a
// diagnostic for the round-trip bound (where a wait happened); it needs tcpdump, and returns a
// no-op without it. The returned function stops the capture and returns what it saw.
func captureServer(t *testing.T, l *lab.Lab, r lab.Role) func() string {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		return func() string { return "" }
	}
	out, errOut := &lab.SyncBuffer{}, &lab.SyncBuffer{}
	p, err := l.Start(r, out, errOut, "tcpdump", "--immediate-mode", "-l", "-n", "-tt", "-i", "eth0", "-s", "128", "tcp port 21")
	if err != nil {
		return func() string { return "" }
	}
	for deadline := time.Now().Add(3 * time.Second); !strings.Contains(errOut.String(), "listening on") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	return func() string {
		time.Sleep(100 * time.Millisecond)
		p.Stop(15, 2*time.Second)
		return out.String()
	}
}
