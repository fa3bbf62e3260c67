// Package nssweep removes the network namespaces that a test process of this project left
// behind when it died without running its cleanups: SIGKILL, go test's timeout, or a panic in
// one test while others ran in parallel.
package nssweep

import (
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stale deletes each namespace under /run/netns whose name matches name, a pattern whose first
// group is the PID of the test process that created it, when that process is gone. Such a
// namespace holds only what that test run started in it (nothing else creates namespaces so
// named), so the processes still inside are killed first: orphans of the dead run. It
// reports nothing: a namespace it cannot remove stays for the next sweep.
func Stale(name *regexp.Regexp) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		m := name.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue // its process lives
		}
		if killInside(e.Name()) {
			exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// killInside kills the processes in namespace ns and reports whether it is empty within 2 s.
func killInside(ns string) bool {
	for deadline := time.Now().Add(2 * time.Second); ; {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			return false
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}
