package lab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// FirewallTable is the router's own nftables table (ftpalg owns "inet ftpalg"; this is not it).
const FirewallTable = "lab"

// Ruleset returns the router's firewall in nft syntax. The only rule that lets a data
// connection through the forward and input chains is `ct state established,related accept`:
// without something that creates expectations (ftpalg or the kernel helper) every FTP data
// connection is dropped.
func (l *Lab) Ruleset() string {
	x := l.Addrs
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f+"\n", args...) }
	w("table inet %s {", FirewallTable)
	if l.cfg.KernelHelper {
		kernelHelperRules(w)
	}
	w("\tchain dstnat {")
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	w("\t\tip daddr %s tcp dport 21 dnat ip to %s:21", x.RouterPublic, x.InsideServer)
	w("\t\tip daddr %s tcp dport 21 dnat ip to %s:21", x.RouterGo, x.InsideGoServer)
	w("\t}")
	w("\tchain srcnat {")
	w("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	w("\t\tip saddr %s oifname != \"lan\" masquerade", x.Inside)
	if l.cfg.Hairpin {
		// NAT loopback: a port-forwarded connection from the inside back to the inside
		// leaves from the router's LAN address, or the server would answer the client
		// directly and the client would drop replies from an address it never dialled.
		w("\t\toifname \"lan\" ip saddr %s ip daddr %s ct status dnat masquerade", x.Inside, x.Inside)
	}
	w("\t}")
	w("\tchain forward {")
	w("\t\ttype filter hook forward priority filter; policy drop;")
	w("\t\tct state established,related accept")
	w("\t\tiifname \"lan\" tcp dport 21 ct state new accept")
	w("\t\tct status dnat tcp dport 21 ct state new accept")
	w("\t}")
	w("\tchain input {")
	w("\t\ttype filter hook input priority filter; policy drop;")
	w("\t\tiifname \"lo\" accept")
	w("\t\tct state established,related accept")
	w("\t\tmeta l4proto { icmp, ipv6-icmp } accept")
	w("\t\ttcp dport 21 accept")
	w("\t}")
	w("}")
	return b.String()
}

func (l *Lab) loadFirewall(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.ns[Router], "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(l.Ruleset())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("load router firewall: %w: %s", err, out)
	}
	return nil
}

// kernelHelperRules writes the kernel FTP helper's part of a lab router's table (the reference
// setup, Config.KernelHelper): a ct helper object of type "ftp" set on tcp/21 at prerouting,
// priority filter (the kernel assigns helpers before confirmation; at raw priority the ct
// object does not exist yet).
func kernelHelperRules(w func(string, ...any)) {
	w("\tct helper ftp-kernel {")
	w("\t\ttype \"ftp\" protocol tcp")
	w("\t\tl3proto inet")
	w("\t}")
	w("\tchain helpers {")
	w("\t\ttype filter hook prerouting priority filter; policy accept;")
	w("\t\ttcp dport 21 ct helper set \"ftp-kernel\"")
	w("\t}")
}
