package rules

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// The namespace tests create their own network namespaces (PID-suffixed names), join
// them only to each other with veth pairs and delete them at the end, also on failure.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables tables")
	}
}

var nsSeq atomic.Int32

type testNS struct {
	name string
	h    netns.NsHandle
}

func newNS(t *testing.T, tag string) *testNS {
	t.Helper()
	name := fmt.Sprintf("ftpalg-%s-%d-%d", tag, os.Getpid(), nsSeq.Add(1))
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
	n := &testNS{name: name, h: h}
	n.mustExec(t, "ip", "link", "set", "lo", "up")
	return n
}

// do runs fn on a thread in the namespace. The thread is never switched back: its
// goroutine ends locked, so the runtime discards it.
func (n *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// exec runs a command in the namespace and returns its standard output; on failure the
// error carries the standard error.
func (n *testNS) exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (n *testNS) mustExec(t *testing.T, args ...string) string {
	t.Helper()
	out, err := n.exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// vethPair joins a (addrA) and b (addrB) with a veth pair; addresses are CIDR strings.
func vethPair(t *testing.T, a *testNS, addrA string, b *testNS, addrB string) {
	t.Helper()
	a.mustExec(t, "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", b.name)
	a.mustExec(t, "ip", "addr", "add", addrA, "dev", "veth0")
	a.mustExec(t, "ip", "link", "set", "veth0", "up")
	b.mustExec(t, "ip", "addr", "add", addrB, "dev", "veth1")
	b.mustExec(t, "ip", "link", "set", "veth1", "up")
}
