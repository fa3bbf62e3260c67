package e2e

import (
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// TestQueueOverflow: ftpalg without --fail-open is stalled (SIGSTOP) while 6,000 control
// connections start at once: more SYNs than the kernel queue holds (4,096). The kernel drops
// the rest and counts them; ftpalg, resumed, reports them in ftpalg_queue_kernel_dropped_total,
// works through the backlog without crashing, the dropped SYNs come back by TCP retransmission
// and every session opens, and a normal transfer still works.
func TestQueueOverflow(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	bin := requireTool(t, "benchpeer")
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	const metricsAddr = "127.0.0.1:9122"
	d := startFtpalg(t, l, withArgs("--fail-open=false", "--metrics-listen", metricsAddr))
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fake := startBenchpeerServe(t, l, bin, netip.AddrPortFrom(x.OutsideClient, 21))
	// 32 client addresses: under ftpalg's per-client session limit.
	var srcs, adds []string
	for i := 0; i < 32; i++ {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)})
		srcs = append(srcs, a.String())
		adds = append(adds, "addr add "+a.String()+"/24 dev eth0")
	}
	cmd := exec.Command("ip", "-n", l.NS(lab.Client), "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(adds, "\n") + "\n")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("client addresses: %v: %s", err, b)
	}
	before, err := metricsOf(l, metricsAddr)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}

	if err := syscall.Kill(d.Proc.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(d.Proc.PID(), syscall.SIGCONT)
		}
	}()
	out := &lab.SyncBuffer{}
	p, err := l.Start(lab.Client, out, out, bin, "idle", "-server", fake.String(), "-n", "6000", "-c", "6000", "-from", strings.Join(srcs, ","))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(syscall.SIGINT, 5*time.Second) })
	time.Sleep(2 * time.Second) // every SYN sent once: 4,096 queued, the rest dropped
	if err := syscall.Kill(d.Proc.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	resumed := time.Now()

	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "}") {
		select {
		case <-p.Done():
			t.Fatalf("benchpeer idle exited: %v: %s", p.Err(), out.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("sessions not open 60s after ftpalg resumed: %s", out.String())
		}
	}
	var ir struct {
		Ready, Failed int
		Seconds       float64
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out.String())), &ir); err != nil {
		t.Fatalf("benchpeer idle: %q: %v", out.String(), err)
	}
	t.Logf("%d sessions open (%d failed), %v after ftpalg resumed", ir.Ready, ir.Failed, time.Since(resumed).Round(time.Millisecond))
	if ir.Ready < 5900 {
		t.Errorf("only %d of 6000 sessions opened after the stall", ir.Ready)
	}
	daemonAlive(t, d)
	after, err := metricsOf(l, metricsAddr)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	dropped := metricSum(after, "ftpalg_queue_kernel_dropped_total") - metricSum(before, "ftpalg_queue_kernel_dropped_total")
	t.Logf("kernel queue drops counted: %.0f", dropped)
	if dropped < 1 {
		t.Errorf("no overflow counted in ftpalg_queue_kernel_dropped_total: %s", metricsDelta(before, after, "ftpalg_queue"))
	}

	// Normal service meanwhile.
	local := filepath.Join(t.TempDir(), "f")
	res := l.RunClient(ctxT(t, 30*time.Second), lab.Client, lab.Curl, "", lab.Transfer{Op: lab.Get, Mode: lab.PORT, Server: vs.URL(""), Local: local, Timeout: 20 * time.Second})
	if res.Err != nil {
		t.Fatalf("PORT download after the overflow: %v\n%s", res.Err, tail(res.Stderr, 600))
	}
	if sum, _, _ := lab.FileSHA(local); sum != vs.SHA {
		t.Errorf("download sha256 %s, want %s", sum, vs.SHA)
	}
}
