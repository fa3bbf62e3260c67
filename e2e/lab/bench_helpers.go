package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// AddAddrs adds IPv4 or IPv6 addresses to dev in a role's namespace, with the prefix length of
// the network p they belong to (the benchmark's idle-session generator spreads its sessions
// over many client addresses, as ftpalg bounds the sessions per client address).
func (l *Lab) AddAddrs(ctx context.Context, r Role, dev string, p netip.Prefix, addrs []netip.Addr) error {
	lines := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if !p.Contains(a) {
			return fmt.Errorf("add address %s: not in %s", a, p)
		}
		nodad := ""
		if a.Is6() {
			nodad = " nodad"
		}
		lines = append(lines, fmt.Sprintf("addr add %s/%d dev %s%s", a, p.Bits(), dev, nodad))
	}
	return l.ipBatch(ctx, l.ns[r], lines)
}

// Nft runs `nft -f -` with script in the router's namespace (changes to the firewall of one
// run, e.g. opening the data ports for a plain-forwarding baseline).
func (l *Lab) Nft(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.ns[Router], "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft in router: %w: %s", err, out)
	}
	return nil
}

// WaitFTP waits until addr:21 in a role's namespace answers with a 220 banner, or p exits.
func (l *Lab) WaitFTP(ctx context.Context, r Role, addr netip.Addr, p *Proc) error {
	return l.waitFTP(ctx, r, addr, p)
}
