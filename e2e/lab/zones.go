package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// The zones lab: one router with two tenants whose inside networks overlap (the same
// 192.0.2.0/24, the same client address), each on a router interface of its own and in a
// conntrack zone of its own, and one outside server. Both tenants' connections may hold the
// same 4-tuple at the same time; only the zone tells their conntrack entries apart.
//
//	tenant a  192.0.2.5 --- t1 192.0.2.1 (zone 7)  +--------+
//	                                               | router | wan 198.51.100.1 (tenant a's SNAT)
//	tenant b  192.0.2.5 --- t2 192.0.2.1 (zone 2)  +---+----+     198.51.100.2 (tenant b's SNAT)
//	                                                   |
//	                                     osrv 198.51.100.20 (vsftpd)
//
// The router's ruleset (ZonesLab.Ruleset) sets the zone at priority raw, both directions:
// packets from a tenant's interface, and packets from the outside to that tenant's public
// address. Routing back into the overlapping networks goes by firewall mark (the zone's
// number), set at mangle from the entry's zone, and one routing table per tenant.

// The zones lab's tenants (its other roles: Router, OutsideServer).
const (
	TenantA Role = "ta"
	TenantB Role = "tb"
)

var zoneRoles = []Role{Router, TenantA, TenantB, OutsideServer}

// Tenant is one tenant of the zones lab.
type Tenant struct {
	Role   Role
	Link   string     // the router's interface to it
	Zone   uint16     // its conntrack zone
	Public netip.Addr // the address its connections are SNATed to
}

// ZonesPlan is the zones lab's addressing plan.
type ZonesPlan struct {
	Inside  netip.Prefix // both tenants'
	Gateway netip.Addr   // the router's address on both tenant links
	Client  netip.Addr   // both tenants' client
	Outside netip.Prefix
	Server  netip.Addr
	Tenants [2]Tenant
}

// ZonesAddrs returns the zones lab's plan: tenant a in zone 7 behind 198.51.100.1, tenant b
// in zone 2 behind 198.51.100.2; both are 192.0.2.5 behind the gateway 192.0.2.1.
func ZonesAddrs() ZonesPlan {
	return ZonesPlan{
		Inside: p4("192.0.2.0/24"), Gateway: a("192.0.2.1"), Client: a("192.0.2.5"),
		Outside: p4("198.51.100.0/24"), Server: a("198.51.100.20"),
		Tenants: [2]Tenant{
			{Role: TenantA, Link: "t1", Zone: 7, Public: a("198.51.100.1")},
			{Role: TenantB, Link: "t2", Zone: 2, Public: a("198.51.100.2")},
		},
	}
}

// ZonesLab is a running zones lab. Its embedded Lab runs commands and processes in these
// namespaces (Exec, Run, Start, Do, StartVsftpd with OutsideServer, StartFtpalg on Router);
// Close kills what it started and deletes the namespaces.
type ZonesLab struct {
	*Lab
	Plan ZonesPlan
}

// NewZones creates the zones lab with the router's firewall (the kernel FTP helper attached
// when cfg.KernelHelper; cfg.Addrs is ignored).
func NewZones(ctx context.Context, cfg Config) (*ZonesLab, error) {
	x := ZonesAddrs()
	l := &Lab{ns: map[Role]string{}, cfg: cfg}
	l.Addrs = Addrs{Name: "zones", Inside: x.Inside, Outside: x.Outside, RouterInside: x.Gateway,
		RouterPublic: x.Tenants[0].Public, Client: x.Client, OutsideServer: x.Server}
	l.cfg.Addrs = l.Addrs
	sweepOnce.Do(sweepStale)
	id := fmt.Sprintf("fe2e-%d-%d", os.Getpid(), labSeq.Add(1))
	for _, r := range zoneRoles {
		l.ns[r] = id + "-" + string(r)
	}
	z := &ZonesLab{Lab: l, Plan: x}
	if err := z.build(ctx); err != nil {
		z.Close()
		return nil, err
	}
	return z, nil
}

// Namespaces returns every namespace name of the zones lab.
func (z *ZonesLab) Namespaces() []string {
	out := make([]string, 0, len(zoneRoles))
	for _, r := range zoneRoles {
		out = append(out, z.ns[r])
	}
	return out
}

func (z *ZonesLab) build(ctx context.Context) error {
	x := z.Plan
	if err := z.addNamespaces(ctx, z.Namespaces()); err != nil {
		return err
	}
	per := map[Role][]string{}
	add := func(r Role, f string, args ...any) { per[r] = append(per[r], fmt.Sprintf(f, args...)) }
	for _, r := range zoneRoles {
		add(r, "link set lo up")
	}
	// Point-to-point veths from the router straight into each peer's namespace.
	var veths []string
	peer := func(link string, r Role) {
		veths = append(veths, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", link, z.ns[r]))
		add(Router, "link set %s up", link)
		add(r, "link set eth0 up")
	}
	for _, tn := range x.Tenants {
		peer(tn.Link, tn.Role)
	}
	peer("wan", OutsideServer)
	if err := z.ipBatch(ctx, z.ns[Router], veths); err != nil {
		return err
	}
	bits := x.Inside.Bits()
	for _, tn := range x.Tenants {
		// The same address on both tenant links, without prefix routes: each tenant's network
		// is reached through its own table, chosen by the mark of its zone.
		add(Router, "addr add %s/%d dev %s noprefixroute", x.Gateway, bits, tn.Link)
		add(Router, "addr add %s/%d dev wan", tn.Public, x.Outside.Bits())
		add(Router, "route add %s dev %s table %d", x.Inside, tn.Link, 100+int(tn.Zone))
		add(Router, "rule add fwmark %d table %d pref 100", tn.Zone, 100+int(tn.Zone))
		add(tn.Role, "addr add %s/%d dev eth0", x.Client, bits)
		add(tn.Role, "route add default via %s", x.Gateway)
	}
	add(OutsideServer, "addr add %s/%d dev eth0", x.Server, x.Outside.Bits())
	add(OutsideServer, "route add default via %s", x.Tenants[0].Public)
	for _, r := range []Role{Router, TenantA, TenantB, OutsideServer} {
		if err := z.ipBatch(ctx, z.ns[r], per[r]); err != nil {
			return err
		}
	}
	if err := (&HA{Lab: z.Lab}).waitLinksOf(ctx, zoneRoles); err != nil {
		return err
	}
	// rp_filter off: the tenants' source network has no route in the main table.
	if out, err := z.Exec(ctx, Router, "sysctl", "-qw", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf.t1.rp_filter=0", "net.ipv4.conf.t2.rp_filter=0"); err != nil {
		return fmt.Errorf("router sysctl: %w: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", z.ns[Router], "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(z.Ruleset())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("load zones router firewall: %w: %s", err, out)
	}
	z.logf("zones lab %s up (kernel helper %v)", z.ns[Router], z.cfg.KernelHelper)
	return nil
}

// Ruleset returns the zones router's firewall: the single-router lab's policy (forward policy
// drop, established/related, new tcp/21 from the tenants; SNAT to each tenant's public
// address), plus the zones: `ct zone set` at priority raw in prerouting (from a tenant's
// link, and from the outside to its public address) and output (to its link), and the
// routing mark from the entry's zone.
func (z *ZonesLab) Ruleset() string {
	x := z.Plan
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f+"\n", args...) }
	w("table inet %s {", FirewallTable)
	if z.cfg.KernelHelper {
		kernelHelperRules(w)
	}
	w("\tchain zone_prerouting {")
	w("\t\ttype filter hook prerouting priority raw; policy accept;")
	for _, tn := range x.Tenants {
		w("\t\tiifname %q ct zone set %d", tn.Link, tn.Zone)
		w("\t\tiifname \"wan\" ip daddr %s ct zone set %d", tn.Public, tn.Zone)
	}
	w("\t}")
	w("\tchain zone_output {")
	w("\t\ttype filter hook output priority raw; policy accept;")
	for _, tn := range x.Tenants {
		w("\t\toifname %q ct zone set %d", tn.Link, tn.Zone)
	}
	w("\t}")
	w("\tchain zone_route {")
	w("\t\ttype filter hook prerouting priority mangle; policy accept;")
	for _, tn := range x.Tenants {
		w("\t\tiifname \"wan\" ct zone %d meta mark set %d", tn.Zone, tn.Zone)
	}
	w("\t}")
	// An empty NAT chain at prerouting: the kernel applies an expectation's NAT (the active
	// data connection back to the client) only at hooks where a NAT chain exists.
	w("\tchain dstnat {")
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	w("\t}")
	w("\tchain srcnat {")
	w("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	for _, tn := range x.Tenants {
		w("\t\tiifname %q oifname \"wan\" snat ip to %s", tn.Link, tn.Public)
	}
	w("\t}")
	w("\tchain forward {")
	w("\t\ttype filter hook forward priority filter; policy drop;")
	w("\t\tct state established,related accept")
	w("\t\tiifname { %q, %q } tcp dport 21 ct state new accept", x.Tenants[0].Link, x.Tenants[1].Link)
	w("\t}")
	w("\tchain input {")
	w("\t\ttype filter hook input priority filter; policy drop;")
	w("\t\tiifname \"lo\" accept")
	w("\t\tct state established,related accept")
	w("\t\tmeta l4proto icmp accept")
	w("\t}")
	w("}")
	return b.String()
}
