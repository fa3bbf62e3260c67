package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// TestImpairedPath: duplicated, reordered and lost segments over real TCP, both ways, with
// SACK (Linux's default) recovering the losses - while ftpalg resizes the control stream. This
// kernel has no netem, so e2e/cmd/impair does it: every TCP packet the client and the outside
// server send goes through an NFQUEUE program in their own namespace that drops 3 %, sends
// 10 % twice and holds 25 % back for 20±10 ms. With the grow plan every PORT/EPRT is rewritten
// (+3 bytes), so retransmissions of rewritten segments, acks and SACK blocks of the shifted
// stream all cross ftpalg; each transfer must deliver its file intact.
func TestImpairedPath(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	impairBin := requireTool(t, "impair")
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	d := startFtpalg(t, l, nil)
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}

	type impairer struct {
		role lab.Role
		out  *lab.SyncBuffer
		proc *lab.Proc
	}
	var imps []*impairer
	for i, role := range []lab.Role{lab.Client, lab.OutsideServer} {
		num := fmt.Sprint(70 + i)
		im := &impairer{role: role, out: &lab.SyncBuffer{}}
		errOut := &lab.SyncBuffer{}
		p, err := l.Start(role, im.out, errOut, impairBin, "-queue", num, "-loss", "0.03", "-dup", "0.1",
			"-reorder", "0.25", "-delay", "20ms", "-jitter", "10ms")
		if err != nil {
			t.Fatal(err)
		}
		im.proc = p
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(im.out.String(), "ready") {
			if time.Now().After(deadline) {
				t.Fatalf("impair in %s not ready: %s %s", role, im.out, errOut)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("impair in %s: %s", role, strings.TrimSpace(errOut.String())) // the seed, for a rerun
		if out, err := l.Exec(ctxT(t, 10*time.Second), role, "iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp",
			"-m", "mark", "!", "--mark", "0x1d", "-j", "NFQUEUE", "--queue-num", num); err != nil {
			t.Fatalf("queue rule in %s: %v: %s", role, err, out)
		}
		imps = append(imps, im)
	}

	mark := d.Mark()
	for _, mode := range []lab.Mode{lab.PORT, lab.EPRT, lab.PASV, lab.EPSV} {
		for _, op := range []lab.Op{lab.Get, lab.Put, lab.List} {
			local := filepath.Join(t.TempDir(), "f")
			remote := ""
			if op == lab.Put {
				if _, err := lab.RandomFile(local, lab.FileSize); err != nil {
					t.Fatal(err)
				}
				remote = fmt.Sprintf("impaired-%s", strings.ToLower(string(mode)))
			}
			tr := lab.Transfer{Op: op, Mode: mode, Server: vs.URL(""), Local: local, Remote: remote, Timeout: 60 * time.Second}
			res := l.RunClient(ctxT(t, 90*time.Second), lab.Client, lab.Curl, "", tr)
			if res.Err != nil {
				t.Errorf("%s %s over the impaired path: %v\n%s", mode, op, res.Err, tail(res.Stderr, 600))
				continue
			}
			switch op {
			case lab.Get:
				if sum, _, err := lab.FileSHA(local); err != nil || sum != vs.SHA {
					t.Errorf("%s get: sha256 %s, want %s (%v)", mode, sum, vs.SHA, err)
				}
			case lab.Put:
				sent, _, _ := lab.FileSHA(local)
				if got, _, err := lab.FileSHA(vs.Incoming(remote)); err != nil || got != sent {
					t.Errorf("%s put: server has sha256 %s, sent %s (%v)", mode, got, sent, err)
				}
			}
			t.Logf("%s %s ok in %v", mode, op, res.Duration.Round(time.Millisecond))
		}
	}
	evs := d.Since(mark)
	if n := len(lab.Filter(evs, "rewrite", nil)); n < 6 {
		t.Errorf("%d rewrites, want one per active transfer (6): the control stream was not resized", n)
	}

	// The impairment really happened, both ways.
	for _, im := range imps {
		im.proc.Stop(15, 5*time.Second) // SIGTERM: it prints its counts
		var c struct{ Packets, Dropped, Held, Duplicated int64 }
		lines := strings.Split(strings.TrimSpace(im.out.String()), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &c); err != nil {
			t.Fatalf("impair in %s: %q: %v", im.role, im.out, err)
		}
		t.Logf("impair in %s: %+v", im.role, c)
		if c.Dropped == 0 || c.Held == 0 || c.Duplicated == 0 {
			t.Errorf("impair in %s did not impair: %+v", im.role, c)
		}
	}
	daemonAlive(t, d)
}
