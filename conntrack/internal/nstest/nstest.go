// Package nstest gives the kernel tests of ftpalg's conntrack packages fresh network
// namespaces: PID-suffixed names, joined only to each other with veth pairs, deleted at the
// end of the test, also on failure.
package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/ftpalg/ftpalg/internal/nssweep"
)

// RequireRoot skips the test when not running as root, saying what root is needed for.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: " + why)
	}
}

var seq atomic.Int32

// staleNS matches New's names; the group is the creating process's PID. sweepOnce removes,
// before the first namespace of a test binary, those of test binaries that died without
// cleaning up.
var (
	staleNS   = regexp.MustCompile(`^ftpalg-[a-z0-9]+-(\d+)-\d+$`)
	sweepOnce sync.Once
)

// NS is a named network namespace of a test.
type NS struct {
	Name string
	h    netns.NsHandle
}

// New creates a namespace with lo up, removed when the test ends.
func New(t testing.TB, tag string) *NS {
	t.Helper()
	sweepOnce.Do(func() { nssweep.Stale(staleNS) })
	name := fmt.Sprintf("ftpalg-%s-%d-%d", tag, os.Getpid(), seq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	n := &NS{Name: name, h: h}
	n.MustExec(t, "ip", "link", "set", "lo", "up")
	return n
}

// Do runs fn on a thread in the namespace (sockets fn creates belong to it). The thread is
// never switched back: its goroutine ends locked, so the runtime discards it.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Exec runs a command in the namespace and returns its standard output; on failure the error
// carries the standard error.
func (n *NS) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// MustExec is Exec that fails the test on error.
func (n *NS) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// VethPair joins a (addrA) and b (addrB) with a veth pair; addresses are CIDR strings.
func VethPair(t testing.TB, a *NS, addrA string, b *NS, addrB string) {
	t.Helper()
	a.MustExec(t, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", b.Name)
	a.MustExec(t, "ip", "addr", "add", addrA, "dev", "veth0")
	a.MustExec(t, "ip", "link", "set", "veth0", "up")
	b.MustExec(t, "ip", "addr", "add", addrB, "dev", "veth1")
	b.MustExec(t, "ip", "link", "set", "veth1", "up")
}
