package nssweep

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"
)

// TestStale: a namespace named for a dead process is removed with the process still inside
// it; one named for a live process is left alone, its process too.
func TestStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("nssweeptest-%d-1", dead.Process.Pid)
	live := fmt.Sprintf("nssweeptest-%d-2", os.Getppid()) // go test's own parent lives
	exited := map[string]chan struct{}{}                  // closed when the process has been reaped
	for _, n := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
		p := exec.Command("ip", "netns", "exec", n, "sleep", "300")
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		t.Cleanup(func() { p.Process.Kill(); <-done })
		exited[n] = done
	}
	waitPids(t, stale)

	Stale(regexp.MustCompile(`^nssweeptest-(\d+)-\d+$`))

	if _, err := os.Stat("/run/netns/" + stale); err == nil {
		t.Errorf("%s (its process gone) was not removed", stale)
	}
	select {
	case <-exited[stale]:
	case <-time.After(3 * time.Second):
		t.Errorf("the process inside %s still runs", stale)
	}
	if _, err := os.Stat("/run/netns/" + live); err != nil {
		t.Errorf("%s (its process alive) was removed", live)
	}
	if out, _ := exec.Command("ip", "netns", "pids", live).Output(); len(out) == 0 {
		t.Errorf("the process inside %s was ended", live)
	}
}

// waitPids waits until a process has entered ns.
func waitPids(t *testing.T, ns string) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if out, _ := exec.Command("ip", "netns", "pids", ns).Output(); len(out) > 0 {
			return
		}
	}
	t.Fatalf("no process entered %s", ns)
}
