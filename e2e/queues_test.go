package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// TestQueuesBalanced: `--queues 2` runs two workers; the kernel spreads connections over the
// two queues by a hash of the addresses that is the same in both directions, so each
// worker must see every packet of its sessions (a reply on the other worker would miss the
// sequence adjustment of a rewritten PORT). Sixteen inside clients, each a rewritten PORT
// download and a passive one: every file intact, and both workers owned sessions.
func TestQueuesBalanced(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	d := startFtpalg(t, l, withArgs("--queues", "2"))
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for i := 0; i < 16; i++ {
		addrs = append(addrs, netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}))
	}
	if err := l.AddAddrs(ctxT(t, 10*time.Second), lab.Client, "eth0", x.Inside, addrs); err != nil {
		t.Fatal(err)
	}
	mark := d.Mark()
	for _, a := range addrs {
		for _, mode := range []lab.Mode{lab.PORT, lab.PASV} {
			local := filepath.Join(t.TempDir(), "f")
			tr := lab.Transfer{Op: lab.Get, Mode: mode, Server: vs.URL(""), Local: local, Timeout: 20 * time.Second}
			args := append(lab.CurlArgs(tr), "--interface", a.String())
			res := l.Run(ctxT(t, 30*time.Second), lab.Client, "curl", args...)
			if res.Err != nil {
				t.Errorf("%s from %s: %v\n%s", mode, a, res.Err, tail(res.Stderr, 400))
				continue
			}
			if sum, _, _ := lab.FileSHA(local); sum != vs.SHA {
				t.Errorf("%s from %s: sha256 %s, want %s", mode, a, sum, vs.SHA)
			}
		}
	}
	workers := map[string]int{}
	for _, ev := range lab.Filter(d.Since(mark), "session_open", nil) {
		workers[fmt.Sprint(ev["worker"])]++
	}
	t.Logf("sessions per worker: %v", workers)
	if len(workers) != 2 {
		t.Errorf("sessions per worker %v: want both workers used", workers)
	}
	if n := len(lab.Filter(d.Since(mark), "rewrite", nil)); n < len(addrs) {
		t.Errorf("%d rewrites for %d PORT downloads", n, len(addrs))
	}
}
