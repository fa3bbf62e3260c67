package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The HA lab: two routers sharing both LAN segments, with conntrackd replicating their
// conntrack tables over a dedicated link, and the floating addresses on the active one.
//
//	client 192.0.2.5 ---[brlan]---+---------------------+
//	                              | lan .2       lan .3 |
//	                          +---+----+  sync   +-------+-+
//	                          |   r1   |---------|   r2    |   203.0.113.1 -- 203.0.113.2
//	                          +---+----+         +----+----+
//	                              | wan .2       wan .3 |
//	server 198.51.100.20 -[brwan]-+---------------------+
//
// The active router also holds the floating addresses: the inside gateway 192.0.2.1 and the
// public NAT address 198.51.100.1 (both routers SNAT inside traffic to it). A failover moves
// them and flushes the peers' neighbour caches, so that the next packet resolves them again
// to the new router's MAC address.

// The HA lab's routers (the other roles it uses: Switch, Client, OutsideServer).
const (
	Router1 Role = "r1"
	Router2 Role = "r2"
)

var haRoles = []Role{Switch, Router1, Router2, Client, OutsideServer}

// HAAddrs is the HA lab's addressing plan.
type HAAddrs struct {
	Inside, Outside, Sync netip.Prefix

	Gateway netip.Addr // floating: the inside hosts' default gateway
	Public  netip.Addr // floating: the SNAT source address, the outside hosts' gateway

	Lan, Wan, SyncAddr map[Role]netip.Addr // each router's own addresses

	Client, Server netip.Addr
}

// HAPlan returns the HA addressing plan. The client's PORT text grows when rewritten
// ("192,0,2,5" → "198,51,100,1": +3 bytes), as in Grow.
func HAPlan() HAAddrs {
	return HAAddrs{
		Inside: p4("192.0.2.0/24"), Outside: p4("198.51.100.0/24"), Sync: p4("203.0.113.0/24"),
		Gateway: a("192.0.2.1"), Public: a("198.51.100.1"),
		Lan:      map[Role]netip.Addr{Router1: a("192.0.2.2"), Router2: a("192.0.2.3")},
		Wan:      map[Role]netip.Addr{Router1: a("198.51.100.2"), Router2: a("198.51.100.3")},
		SyncAddr: map[Role]netip.Addr{Router1: a("203.0.113.1"), Router2: a("203.0.113.2")},
		Client:   a("192.0.2.5"), Server: a("198.51.100.20"),
	}
}

// HAConfig selects the routers' FTP handling.
type HAConfig struct {
	// KernelHelper attaches the kernel FTP helper on both routers (the reference).
	KernelHelper bool
	// Logf receives progress lines (nil: none).
	Logf func(format string, args ...any)
}

// HA is a running two-router lab. Its embedded Lab runs commands and processes in the HA
// namespaces (Exec, Run, Start, Do, StartVsftpd with Client and OutsideServer); Close kills
// what it started and deletes the namespaces.
type HA struct {
	*Lab
	Plan HAAddrs
	dir  string // conntrackd configurations, sockets, lock and log files

	hmu    sync.Mutex
	active Role
	ctd    map[Role]*Proc
}

// NewHA creates the namespaces, links, addresses, the routers' firewalls, with the floating
// addresses on Router1. conntrackd is not started (StartConntrackd).
func NewHA(ctx context.Context, cfg HAConfig) (*HA, error) {
	x := HAPlan()
	l := &Lab{ns: map[Role]string{}, cfg: Config{KernelHelper: cfg.KernelHelper, Logf: cfg.Logf}}
	// The parts of the single-router plan that the shared helpers and tests use.
	l.Addrs = Addrs{Name: "ha", Inside: x.Inside, Outside: x.Outside, Third: x.Sync,
		RouterInside: x.Gateway, RouterPublic: x.Public, Client: x.Client, OutsideServer: x.Server}
	l.cfg.Addrs = l.Addrs
	sweepOnce.Do(sweepStale)
	id := fmt.Sprintf("fe2e-%d-%d", os.Getpid(), labSeq.Add(1))
	for _, r := range haRoles {
		l.ns[r] = id + "-" + string(r)
	}
	h := &HA{Lab: l, Plan: x, active: Router1, ctd: map[Role]*Proc{}}
	dir, err := os.MkdirTemp("", "ftpalg-ha-")
	if err != nil {
		return nil, err
	}
	h.dir = dir
	if err := h.build(ctx); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// Namespaces returns every namespace name of the HA lab.
func (h *HA) Namespaces() []string {
	out := make([]string, 0, len(haRoles))
	for _, r := range haRoles {
		out = append(out, h.ns[r])
	}
	return out
}

// Close ends the lab's processes, deletes its namespaces and its conntrackd files.
func (h *HA) Close() error {
	err := h.Lab.Close()
	return errors.Join(err, os.RemoveAll(h.dir))
}

// Routers returns both routers.
func (h *HA) Routers() []Role { return []Role{Router1, Router2} }

// Peer returns the other router.
func Peer(r Role) Role {
	if r == Router1 {
		return Router2
	}
	return Router1
}

// Active returns the router holding the floating addresses.
func (h *HA) Active() Role {
	h.hmu.Lock()
	defer h.hmu.Unlock()
	return h.active
}

func (h *HA) build(ctx context.Context) error {
	x := h.Plan
	if err := h.addNamespaces(ctx, h.Namespaces()); err != nil {
		return err
	}
	per := map[Role][]string{}
	add := func(r Role, f string, args ...any) { per[r] = append(per[r], fmt.Sprintf(f, args...)) }
	for _, r := range haRoles {
		add(r, "link set lo up")
	}
	add(Switch, "link add brlan type bridge stp_state 0 mcast_snooping 0")
	add(Switch, "link add brwan type bridge stp_state 0 mcast_snooping 0")
	add(Switch, "link set brlan up")
	add(Switch, "link set brwan up")
	links := []link{
		{Router1, "lan", Switch, "p-r1-lan", "brlan"},
		{Router1, "wan", Switch, "p-r1-wan", "brwan"},
		{Router2, "lan", Switch, "p-r2-lan", "brlan"},
		{Router2, "wan", Switch, "p-r2-wan", "brwan"},
		{Router1, "sync", Router2, "sync", ""},
		{Client, "eth0", Switch, "p-client", "brlan"},
		{OutsideServer, "eth0", Switch, "p-osrv", "brwan"},
	}
	if err := h.wire(ctx, links, add); err != nil {
		return err
	}
	for _, r := range h.Routers() {
		add(r, "addr add %s/24 dev lan", x.Lan[r])
		add(r, "addr add %s/24 dev wan", x.Wan[r])
		add(r, "addr add %s/24 dev sync", x.SyncAddr[r])
	}
	add(Client, "addr add %s/24 dev eth0", x.Client)
	add(Client, "route add default via %s", x.Gateway)
	add(OutsideServer, "addr add %s/24 dev eth0", x.Server)
	add(OutsideServer, "route add default via %s", x.Public)
	// Routers first (no routes), then the switch, then the hosts (routes need the link up).
	for _, r := range []Role{Router1, Router2, Switch, Client, OutsideServer} {
		if err := h.ipBatch(ctx, h.ns[r], per[r]); err != nil {
			return err
		}
	}
	if err := h.vips(ctx, Router1, "add"); err != nil {
		return err
	}
	if err := h.waitLinksOf(ctx, haRoles); err != nil {
		return err
	}
	for _, r := range h.Routers() {
		if out, err := h.Exec(ctx, r, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return fmt.Errorf("%s sysctl: %w: %s", r, err, out)
		}
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.ns[r], "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(h.Ruleset())
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("load %s firewall: %w: %s", r, err, out)
		}
	}
	h.logf("HA lab %s up (kernel helper %v)", strings.TrimSuffix(h.ns[Router1], "-r1"), h.cfg.KernelHelper)
	return nil
}

// vips adds ("add") or deletes ("del") the floating addresses on a router.
func (h *HA) vips(ctx context.Context, r Role, op string) error {
	x := h.Plan
	return h.ipBatch(ctx, h.ns[r], []string{
		fmt.Sprintf("addr %s %s/24 dev lan", op, x.Gateway),
		fmt.Sprintf("addr %s %s/24 dev wan", op, x.Public),
	})
}

// waitLinksOf waits until every link of the roles is operationally up (see waitLinks).
func (h *HA) waitLinksOf(ctx context.Context, rs []Role) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		var still string
		for _, r := range rs {
			out, err := exec.CommandContext(ctx, "ip", "-n", h.ns[r], "-o", "link", "show").Output()
			if err != nil {
				return fmt.Errorf("ip link show in %s: %w", r, err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if !strings.Contains(line, " lo:") && !strings.Contains(line, "state UP") {
					still = string(r) + ": " + line
					break
				}
			}
			if still != "" {
				break
			}
		}
		if still == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("links not up: %s: %w", still, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Ruleset returns both routers' firewall: the single-router lab's policy (Lab.Ruleset) for
// this topology. Forward: policy drop, established/related, new tcp/21 from the LAN. Input:
// policy drop, lo, established/related, ICMP, and conntrackd's sync link. Inside traffic is
// SNATed to the floating public address (not masqueraded: a masquerade binding belongs to the
// interface address of the moment, and the kernel flushes it when that address goes away).
func (h *HA) Ruleset() string {
	x := h.Plan
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f+"\n", args...) }
	w("table inet %s {", FirewallTable)
	if h.cfg.KernelHelper {
		kernelHelperRules(w)
	}
	// An empty NAT chain at prerouting: the kernel applies an expectation's NAT (the active
	// data connection back to the client) only at hooks where a NAT chain exists.
	w("\tchain dstnat {")
	w("\t\ttype nat hook prerouting priority dstnat; policy accept;")
	w("\t}")
	w("\tchain srcnat {")
	w("\t\ttype nat hook postrouting priority srcnat; policy accept;")
	w("\t\tip saddr %s oifname \"wan\" snat ip to %s", x.Inside, x.Public)
	w("\t}")
	w("\tchain forward {")
	w("\t\ttype filter hook forward priority filter; policy drop;")
	w("\t\tct state established,related accept")
	w("\t\tiifname \"lan\" tcp dport 21 ct state new accept")
	w("\t}")
	w("\tchain input {")
	w("\t\ttype filter hook input priority filter; policy drop;")
	w("\t\tiifname \"lo\" accept")
	w("\t\tct state established,related accept")
	w("\t\tmeta l4proto { icmp, ipv6-icmp } accept")
	w("\t\tiifname \"sync\" udp dport %d accept", conntrackdPort)
	w("\t}")
	w("}")
	return b.String()
}

const conntrackdPort = 3780

// ConntrackdConf returns the path of a router's conntrackd configuration.
func (h *HA) ConntrackdConf(r Role) string { return filepath.Join(h.dir, string(r)+".conf") }

// ConntrackdLog returns the path of a router's conntrackd log file.
func (h *HA) ConntrackdLog(r Role) string { return filepath.Join(h.dir, string(r)+".log") }

// conntrackdConfig is the FTFW configuration of one router: unicast UDP over the sync link,
// expectations replicated, its own lock file and control socket (the namespaces share the
// file system).
func (h *HA) conntrackdConfig(r Role) string {
	x := h.Plan
	self, peer := x.SyncAddr[r], x.SyncAddr[Peer(r)]
	base := filepath.Join(h.dir, string(r))
	return fmt.Sprintf(`# conntrackd of %[1]s in the ftpalg HA lab (written by e2e/lab/ha.go)
Sync {
	Mode FTFW {
		# Flush the kernel table this many seconds after "-t" (becoming backup).
		PurgeTimeout 5
	}
	UDP {
		IPv4_address %[2]s
		IPv4_Destination_Address %[3]s
		Port %[4]d
		Interface sync
		Checksum on
	}
	Options {
		ExpectationSync On
	}
}
General {
	Systemd off
	# Not smaller: conntrackd 1.4.7 commits the cache in steps over the hash buckets, and
	# a table it walks in a single step leaves the commit marked "in progress" for good
	# (later flushes and commits are refused).
	HashSize 32768
	HashLimit 131072
	LogFile %[5]s.log
	Syslog off
	LockFile %[5]s.lock
	UNIX {
		Path %[5]s.ctl
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	NetlinkEventsReliable On
	NetlinkOverrunResync Off
	Filter From Userspace {
		Protocol Accept {
			TCP
		}
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv4_address %[2]s
			IPv4_address %[3]s
		}
	}
}
`, r, self, peer, conntrackdPort, base)
}

// StartConntrackd writes a router's configuration and runs conntrackd in the foreground in
// the router's namespace, then waits until its control socket answers.
func (h *HA) StartConntrackd(ctx context.Context, r Role) (*Proc, error) {
	conf := h.ConntrackdConf(r)
	if err := os.WriteFile(conf, []byte(h.conntrackdConfig(r)), 0o600); err != nil {
		return nil, err
	}
	_ = os.Remove(filepath.Join(h.dir, string(r)+".lock")) // left by a SIGKILLed run
	out := &SyncBuffer{}
	p, err := h.Start(r, out, out, "conntrackd", "-C", conf)
	if err != nil {
		return nil, err
	}
	h.hmu.Lock()
	h.ctd[r] = p
	h.hmu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if _, err := h.Conntrackd(ctx, r, "-s"); err == nil {
			return p, nil
		}
		select {
		case <-p.Done():
			b, _ := os.ReadFile(h.ConntrackdLog(r))
			return nil, fmt.Errorf("conntrackd in %s exited: %v: %s %s", r, p.Err(), out.String(), b)
		case <-ctx.Done():
			return nil, fmt.Errorf("conntrackd in %s not answering: %w", r, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Conntrackd runs a conntrackd client command (-c, -f, -R, -B, -n, -t, -s, -i, -e, ...)
// against a router's daemon and returns its output.
func (h *HA) Conntrackd(ctx context.Context, r Role, args ...string) ([]byte, error) {
	return h.Exec(ctx, r, "conntrackd", append([]string{"-C", h.ConntrackdConf(r)}, args...)...)
}

// Crash is an unplanned loss of router r: its conntrackd is killed (SIGKILL), as is every
// process in extra (its ftpalg), its floating addresses go away and its LAN and WAN links go
// down. Nothing is dumped or sent from it.
func (h *HA) Crash(ctx context.Context, r Role, extra ...*Proc) error {
	h.hmu.Lock()
	p := h.ctd[r]
	delete(h.ctd, r)
	h.hmu.Unlock()
	for _, q := range append([]*Proc{p}, extra...) {
		if q == nil {
			continue
		}
		_ = syscall.Kill(q.PID(), syscall.SIGKILL)
		select {
		case <-q.Done():
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s in %s still running 5s after SIGKILL", q.Name, r)
		}
	}
	return h.ipBatch(ctx, h.ns[r], []string{
		fmt.Sprintf("addr del %s/24 dev lan", h.Plan.Gateway),
		fmt.Sprintf("addr del %s/24 dev wan", h.Plan.Public),
		"link set lan down",
		"link set wan down",
	})
}

// Reboot brings a crashed router back empty, as after a reboot: its conntrack table and
// expectations flushed, its ftpalg restart state gone, links up, conntrackd started and asked
// for a full resync from the peer (-n). It does not take the floating addresses.
func (h *HA) Reboot(ctx context.Context, r Role) error {
	for _, args := range [][]string{{"-F"}, {"-F", "expect"}} {
		if out, err := h.Exec(ctx, r, "conntrack", args...); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
	}
	h.mu.Lock()
	if d := h.roleState[r]; d != "" {
		os.RemoveAll(d)
		delete(h.roleState, r)
	}
	h.mu.Unlock()
	if err := h.ipBatch(ctx, h.ns[r], []string{"link set lan up", "link set wan up"}); err != nil {
		return err
	}
	if err := h.waitLinksOf(ctx, []Role{r, Switch}); err != nil {
		return err
	}
	if _, err := h.StartConntrackd(ctx, r); err != nil {
		return err
	}
	if out, err := h.Conntrackd(ctx, r, "-n"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// TakeOver makes router r the active one as a keepalived notify script does on entering the
// primary state: commit the external cache (what the peer replicated) to the kernel table,
// flush both caches, resync the internal cache from the kernel and send it to the peer in
// bulk (conntrackd -c, -f, -R, -B); then move the floating addresses to r and flush the
// peers' neighbour caches. The old active router must have released them (Crash or Release).
func (h *HA) TakeOver(ctx context.Context, r Role) error {
	for _, args := range [][]string{{"-c"}, {"-f"}, {"-R"}, {"-B"}} {
		if args[0] == "-f" {
			if err := h.flushCaches(ctx, r); err != nil {
				return err
			}
			continue
		}
		if out, err := h.Conntrackd(ctx, r, args...); err != nil {
			return fmt.Errorf("take over in %s: %w: %s", r, err, out)
		}
	}
	if err := h.vips(ctx, r, "add"); err != nil {
		return err
	}
	for _, p := range []Role{Client, OutsideServer} {
		if err := h.ipBatch(ctx, h.ns[p], []string{"neigh flush all"}); err != nil {
			return err
		}
	}
	h.hmu.Lock()
	h.active = r
	h.hmu.Unlock()
	h.logf("HA: %s is active", r)
	return nil
}

// flushCaches runs conntrackd -f. The commit (-c) before it finishes in the daemon's main
// loop after the client has returned, and a flush arriving meanwhile is ignored ("commit
// still in progress", in the log only, exit status 0): retry until the log has no new refusal.
func (h *HA) flushCaches(ctx context.Context, r Role) error {
	const refused = "ignoring flush command, commit still in progress"
	count := func() int {
		b, _ := os.ReadFile(h.ConntrackdLog(r))
		return strings.Count(string(b), refused)
	}
	for i := 0; ; i++ {
		before := count()
		if out, err := h.Conntrackd(ctx, r, "-f"); err != nil {
			return fmt.Errorf("conntrackd -f in %s: %w: %s", r, err, out)
		}
		if count() == before {
			return nil
		}
		if i == 50 {
			return fmt.Errorf("conntrackd -f in %s: refused 50 times, commit still in progress", r)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Release is the planned half of a switchover on the active router r: the floating
// addresses go away and r's conntrackd becomes a backup (a scheduled flush of its kernel
// table, -t, and a resync request to the new primary, -n).
func (h *HA) Release(ctx context.Context, r Role) error {
	if err := h.vips(ctx, r, "del"); err != nil {
		return err
	}
	for _, args := range [][]string{{"-t"}, {"-n"}} {
		if out, err := h.Conntrackd(ctx, r, args...); err != nil {
			return fmt.Errorf("release in %s: %w: %s", r, err, out)
		}
	}
	return nil
}

// WaitExternal waits until router r's conntrackd external cache (what the peer replicated)
// has a line containing every one of subs, and returns that line.
func (h *HA) WaitExternal(ctx context.Context, r Role, subs ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last []byte
	for {
		out, err := h.Conntrackd(ctx, r, "-e")
		if err == nil {
			last = out
			for _, line := range strings.Split(string(out), "\n") {
				ok := true
				for _, s := range subs {
					ok = ok && strings.Contains(line, s)
				}
				if ok {
					return line, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no entry with %q in %s's external cache: %w; cache:\n%s", subs, r, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
