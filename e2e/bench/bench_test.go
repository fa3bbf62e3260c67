package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestBenchShort runs the short benchmark (every measurement, small counts) in all three setups
// and checks the harness: every setup produced every figure and nothing failed. It asserts no
// timing: the machine is shared.
func TestBenchShort(t *testing.T) {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("the benchmark lab needs root on Linux: it creates network namespaces, veth links and nftables rules")
	}
	for _, tool := range []string{"ip", "nft", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (CI installs it: .ci/deps): %v", tool, err)
		}
	}
	dir := t.TempDir()
	opt := Short()
	var err error
	if opt.Ftpalg, err = Build(dir, "ftpalg", "./cmd/ftpalg"); err != nil {
		t.Fatal(err)
	}
	if opt.Peer, err = Build(dir, "benchpeer", "./e2e/cmd/benchpeer"); err != nil {
		t.Fatal(err)
	}
	opt.Logf = t.Logf
	opt.LogDir = t.TempDir()
	t.Cleanup(func() {
		if t.Failed() {
			// What ftpalg refused or could not do explains a failed session.
			logs, _ := filepath.Glob(filepath.Join(opt.LogDir, "*"))
			for _, f := range logs {
				b, _ := os.ReadFile(f)
				for line := range strings.Lines(string(b)) {
					if strings.Contains(line, `"event":"rejected"`) || strings.Contains(line, `"event":"error"`) {
						t.Logf("%s: %s", filepath.Base(f), strings.TrimSpace(line))
					}
				}
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep.Markdown())

	type shape struct {
		Setup           Setup
		Failures        int
		RTT, Pinholes   bool
		SessionCells    int
		SessionsAllRan  bool
		SessionCPU      bool // ftpalg's CPU per FTP session was measured
		UnrelatedRounds int  // rounds of unrelated connections that opened some
		Files           int  // files fetched in the one session
		Bulk, Footprint bool
	}
	var got, want []shape
	for _, s := range Setups {
		want = append(want, shape{Setup: s, RTT: true, Pinholes: true, SessionCells: 2 * len(opt.Concurrency),
			SessionsAllRan: true, SessionCPU: s == Ftpalg, UnrelatedRounds: opt.UnrelatedRounds, Files: opt.Files,
			Bulk: true, Footprint: s == Ftpalg})
		r := rep.Result(s)
		if r == nil {
			got = append(got, shape{Setup: s})
			continue
		}
		ran := len(r.Sessions) > 0
		for _, c := range r.Sessions {
			ran = ran && c.OK > 0
		}
		urounds := 0
		for _, v := range r.Unrelated.PerSecRound {
			if v > 0 {
				urounds++
			}
		}
		got = append(got, shape{
			Setup:    s,
			Failures: r.Failures(),
			RTT: r.RTT.PASV.N == opt.RTTCount && r.RTT.PORT.N == opt.RTTCount && r.RTT.EPRT.N == opt.RTTCount &&
				r.RTT.GeoMeanP50() > 0,
			Pinholes:       r.PinPASV.Connect.N == opt.PinholeCount && r.PinPORT.Total.N == opt.PinholeCount,
			SessionCells:   len(r.Sessions),
			SessionsAllRan: ran,
			// CPU is in 10 ms ticks: a short run's sessions may cost less than one tick, so
			// only that it was taken (the sessions ran under a live ftpalg) is checked.
			SessionCPU:      r.CPU != nil && r.SessionCPUus >= 0 && isFtpalg(s),
			UnrelatedRounds: urounds,
			Files:           r.Files.Files,
			Bulk:            len(r.Bulk.MBps) == opt.BulkRuns && r.Bulk.Median > 0,
			// At least 99 % tracked: sessions opened 1,000 in a tenth of a second overflow the
			// queue on a loaded CI machine, and fail-open lets a greeting pass uninspected.
			Footprint: r.Idle != nil && r.Idle.RSSKB > 0 && r.Idle.Tracked >= 0.99*float64(opt.IdleSessions) && len(r.CPU) == 2,
		})
		for _, e := range r.Errors {
			t.Errorf("%s: %s", s, e)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("benchmark results (-want +got):\n%s", diff)
	}
}

func TestParseMetrics(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]float64
	}{
		{name: "labels summed", in: "# HELP x\nftpalg_packets_total{verdict=\"accept\"} 10\nftpalg_packets_total{verdict=\"modified\"} 2.5\nftpalg_sessions 3\n",
			want: map[string]float64{"ftpalg_packets_total": 12.5, "ftpalg_sessions": 3}},
		{name: "garbage skipped", in: "\nnot a sample\nx y\n", want: map[string]float64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, parseMetrics([]byte(tt.in))); diff != "" {
				t.Errorf("parseMetrics (-want +got):\n%s", diff)
			}
		})
	}
}
