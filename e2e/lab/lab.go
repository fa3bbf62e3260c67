// Package lab builds the ftpalg namespace lab: a NAT router with a default-deny firewall between
// an inside network and an outside network, with FTP peers on both sides, all in network
// namespaces that it creates and deletes. It never touches the root namespace's links: every
// veth pair is created directly inside the lab's namespaces (ip -n NS link add ... peer ...
// netns OTHER), and no namespace has a route out of the lab.
//
// The topology is drawn in the e2e package documentation (e2e/doc.go).
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ftpalg/ftpalg/internal/nssweep"
)

// Role names one host of the lab; each role is one network namespace.
type Role string

// The lab's hosts.
const (
	Switch        Role = "sw"     // two bridges: the inside LAN and the outside segment
	Router        Role = "router" // the NAT router with the firewall; ftpalg runs here
	Client        Role = "client" // inside client (behind SNAT)
	InsideServer  Role = "isrv"   // inside vsftpd behind the port-forward (DNAT)
	InsideGo      Role = "igo"    // inside Go server behind its own port-forward
	OutsideServer Role = "osrv"   // outside vsftpd
	OutsideGo     Role = "ogo"    // outside Go server
	OutsideClient Role = "ocli"   // outside client, for the DNAT and router-host cases
	ThirdParty    Role = "tp"     // a third party on its own link behind the router
)

// The Go servers have namespaces of their own: ftpserverlib dials active data connections
// without binding the control connection's local address, so on a host with two addresses
// the data connection would leave from the other one and match no expectation.

var roles = []Role{Switch, Router, Client, InsideServer, InsideGo, OutsideServer, OutsideGo, OutsideClient, ThirdParty}

// Addrs is one addressing plan. Two plans exist so that NAT rewrites of the embedded address
// text both grow (Grow) and shrink (Shrink) the packet.
type Addrs struct {
	Name string

	Inside, Outside, Third netip.Prefix // IPv4 prefixes (all /24)

	RouterInside netip.Addr // router's LAN address, default gateway of the inside hosts
	RouterPublic netip.Addr // router's WAN address: SNAT source, port-forward 21 → InsideServer
	RouterHost   netip.Addr // second WAN address: the FTP server on the router host itself
	RouterGo     netip.Addr // third WAN address: port-forward 21 → InsideGoServer
	RouterThird  netip.Addr // router's address on the third-party link

	Client         netip.Addr
	InsideServer   netip.Addr // vsftpd behind DNAT RouterPublic:21
	InsideGoServer netip.Addr // Go server behind DNAT RouterGo:21
	OutsideServer  netip.Addr // vsftpd
	OutsideGo      netip.Addr // Go server
	OutsideClient  netip.Addr
	ThirdParty     netip.Addr

	// IPv6: the same links, no NAT.
	Inside6, Outside6, Third6                   netip.Prefix
	RouterInside6, RouterOutside6, RouterThird6 netip.Addr
	Client6, InsideServer6                      netip.Addr
	OutsideServer6, OutsideGo6, OutsideClient6  netip.Addr
	ThirdParty6                                 netip.Addr
}

var (
	p4 = netip.MustParsePrefix
	a  = netip.MustParseAddr
)

func v6(a *Addrs) {
	a.Inside6, a.Outside6, a.Third6 = p4("2001:db8:1::/64"), p4("2001:db8:2::/64"), p4("2001:db8:3::/64")
	a.RouterInside6, a.RouterOutside6, a.RouterThird6 = netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::1"), netip.MustParseAddr("2001:db8:3::1")
	a.Client6, a.InsideServer6 = netip.MustParseAddr("2001:db8:1::5"), netip.MustParseAddr("2001:db8:1::10")
	a.OutsideServer6, a.OutsideGo6, a.OutsideClient6 = netip.MustParseAddr("2001:db8:2::20"), netip.MustParseAddr("2001:db8:2::21"), netip.MustParseAddr("2001:db8:2::30")
	a.ThirdParty6 = netip.MustParseAddr("2001:db8:3::66")
}

// Grow is the plan where every IPv4 rewrite makes the text longer:
// client 192.0.2.5 → public 198.51.100.1 ("192,0,2,5" → "198,51,100,1": +3 bytes) and
// inside server 192.0.2.10 → 198.51.100.1 (+2 bytes).
func Grow() Addrs {
	x := Addrs{
		Name:   "grow",
		Inside: p4("192.0.2.0/24"), Outside: p4("198.51.100.0/24"), Third: p4("203.0.113.0/24"),
		RouterInside: a("192.0.2.1"), RouterPublic: a("198.51.100.1"), RouterHost: a("198.51.100.2"),
		RouterGo: a("198.51.100.3"), RouterThird: a("203.0.113.1"),
		Client: a("192.0.2.5"), InsideServer: a("192.0.2.10"), InsideGoServer: a("192.0.2.11"),
		OutsideServer: a("198.51.100.20"), OutsideGo: a("198.51.100.21"), OutsideClient: a("198.51.100.30"),
		ThirdParty: a("203.0.113.66"),
	}
	v6(&x)
	return x
}

// Shrink is the plan where every IPv4 rewrite makes the text shorter. The two documentation
// ranges swap roles: the inside network is 198.51.100.0/24 and the outside 192.0.2.0/24
// (no 198.51.100.x text is shorter than a 192.0.2.x one, so this is the only way with
// documentation addresses). Client 198.51.100.200 → public 192.0.2.1
// ("198,51,100,200" → "192,0,2,1": -5 bytes), inside server 198.51.100.210 → 192.0.2.1 (-5).
func Shrink() Addrs {
	x := Addrs{
		Name:   "shrink",
		Inside: p4("198.51.100.0/24"), Outside: p4("192.0.2.0/24"), Third: p4("203.0.113.0/24"),
		RouterInside: a("198.51.100.1"), RouterPublic: a("192.0.2.1"), RouterHost: a("192.0.2.2"),
		RouterGo: a("192.0.2.3"), RouterThird: a("203.0.113.1"),
		Client: a("198.51.100.200"), InsideServer: a("198.51.100.210"), InsideGoServer: a("198.51.100.211"),
		OutsideServer: a("192.0.2.20"), OutsideGo: a("192.0.2.21"), OutsideClient: a("192.0.2.30"),
		ThirdParty: a("203.0.113.66"),
	}
	v6(&x)
	return x
}

// Config selects the addressing plan and the router's FTP handling.
type Config struct {
	Addrs Addrs
	// KernelHelper attaches the kernel's FTP helper (nft ct helper type "ftp") to port 21 in
	// the router's table: the reference the ftpalg runs are compared with.
	KernelHelper bool
	// Hairpin adds NAT loopback: an inside host that connects to the router's public address
	// (port-forwarded to an inside server) is masqueraded to the router's inside address, so
	// that the server's replies come back through the router (see Ruleset).
	Hairpin bool
	// Logf receives progress lines (nil: none).
	Logf func(format string, args ...any)
}

// Lab is one running lab. Close it (also after failures) to kill what it started and delete
// its namespaces.
type Lab struct {
	Addrs Addrs
	cfg   Config
	ns    map[Role]string

	mu       sync.Mutex
	procs    []*Proc
	created  []string
	closed   bool
	stateDir string // ftpalg's RUNTIME_DIRECTORY, see FtpalgCommand
	// roleState: the RUNTIME_DIRECTORY of ftpalg on routers other than Router (HA lab).
	roleState map[Role]string
}

var labSeq atomic.Int32

// New creates the namespaces, links, addresses, routes and the router's firewall. On error it
// removes whatever it had created.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Addrs.Name == "" {
		cfg.Addrs = Grow()
	}
	l := &Lab{Addrs: cfg.Addrs, cfg: cfg, ns: map[Role]string{}}
	sweepOnce.Do(sweepStale)
	// PID-suffixed names: parallel test processes and parallel labs never collide.
	id := fmt.Sprintf("fe2e-%d-%d", os.Getpid(), labSeq.Add(1))
	for _, r := range roles {
		l.ns[r] = id + "-" + string(r)
	}
	if err := l.build(ctx); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

var sweepOnce sync.Once

// sweepStale deletes the namespaces of labs whose process died without closing them (a
// SIGKILL, or go test's timeout panic, which runs no cleanup), named fe2e-<pid>-..., and
// ends the lab processes left running in them.
func sweepStale() { nssweep.Stale(staleLab) }

var staleLab = regexp.MustCompile(`^fe2e-(\d+)-`)

// NS returns the namespace name of a role.
func (l *Lab) NS(r Role) string { return l.ns[r] }

// Namespaces returns every namespace name of the lab.
func (l *Lab) Namespaces() []string {
	out := make([]string, 0, len(roles))
	for _, r := range roles {
		out = append(out, l.ns[r])
	}
	return out
}

func (l *Lab) logf(format string, args ...any) {
	if l.cfg.Logf != nil {
		l.cfg.Logf(format, args...)
	}
}

// ipBatch runs `ip [-n ns] -batch -` with the given lines.
func (l *Lab) ipBatch(ctx context.Context, ns string, lines []string) error {
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

type link struct {
	a     Role
	aName string
	b     Role
	bName string
	br    string // bridge in the switch namespace for the b end ("" when b is not the switch)
}

// wire creates the veth pairs of links, each from its a side straight into b's namespace
// (one ip batch per a side, in the order the links name them), and queues through add the
// commands that put b ends on their bridge and bring both ends up.
func (l *Lab) wire(ctx context.Context, links []link, add func(r Role, f string, args ...any)) error {
	veths := map[Role][]string{}
	var order []Role
	for _, k := range links {
		if _, ok := veths[k.a]; !ok {
			order = append(order, k.a)
		}
		veths[k.a] = append(veths[k.a], fmt.Sprintf("link add %s type veth peer name %s netns %s", k.aName, k.bName, l.ns[k.b]))
		add(k.a, "link set %s up", k.aName)
		if k.br != "" {
			add(k.b, "link set %s master %s", k.bName, k.br)
		}
		add(k.b, "link set %s up", k.bName)
	}
	for _, r := range order {
		if err := l.ipBatch(ctx, l.ns[r], veths[r]); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) build(ctx context.Context) error {
	x := l.Addrs
	if err := l.addNamespaces(ctx, l.Namespaces()); err != nil {
		return err
	}

	links := []link{
		{Router, "lan", Switch, "p-router-lan", "brlan"},
		{Router, "wan", Switch, "p-router-wan", "brwan"},
		{Router, "tp", ThirdParty, "eth0", ""},
		{Client, "eth0", Switch, "p-client", "brlan"},
		{InsideServer, "eth0", Switch, "p-isrv", "brlan"},
		{InsideGo, "eth0", Switch, "p-igo", "brlan"},
		{OutsideServer, "eth0", Switch, "p-osrv", "brwan"},
		{OutsideGo, "eth0", Switch, "p-ogo", "brwan"},
		{OutsideClient, "eth0", Switch, "p-ocli", "brwan"},
	}
	per := map[Role][]string{}
	add := func(r Role, f string, args ...any) { per[r] = append(per[r], fmt.Sprintf(f, args...)) }
	for _, r := range roles {
		add(r, "link set lo up")
	}
	add(Switch, "link add brlan type bridge stp_state 0 mcast_snooping 0")
	add(Switch, "link add brwan type bridge stp_state 0 mcast_snooping 0")
	add(Switch, "link set brlan up")
	add(Switch, "link set brwan up")
	if err := l.wire(ctx, links, add); err != nil {
		return err
	}

	bits := func(p netip.Prefix) int { return p.Bits() }
	addr := func(r Role, dev string, ip netip.Addr, p netip.Prefix) {
		if ip.Is6() {
			add(r, "addr add %s/%d dev %s nodad", ip, bits(p), dev)
		} else {
			add(r, "addr add %s/%d dev %s", ip, bits(p), dev)
		}
	}
	addr(Router, "lan", x.RouterInside, x.Inside)
	addr(Router, "wan", x.RouterPublic, x.Outside)
	addr(Router, "wan", x.RouterHost, x.Outside)
	addr(Router, "wan", x.RouterGo, x.Outside)
	addr(Router, "tp", x.RouterThird, x.Third)
	addr(Router, "lan", x.RouterInside6, x.Inside6)
	addr(Router, "wan", x.RouterOutside6, x.Outside6)
	addr(Router, "tp", x.RouterThird6, x.Third6)

	host := func(r Role, gw4, gw6 netip.Addr, p4, p6 netip.Prefix, ips ...netip.Addr) {
		has6 := false
		for _, ip := range ips {
			if ip.Is6() {
				addr(r, "eth0", ip, p6)
				has6 = true
			} else {
				addr(r, "eth0", ip, p4)
			}
		}
		add(r, "route add default via %s", gw4)
		if has6 {
			add(r, "route add default via inet6 %s", gw6)
		}
	}
	host(Client, x.RouterInside, x.RouterInside6, x.Inside, x.Inside6, x.Client, x.Client6)
	host(InsideServer, x.RouterInside, x.RouterInside6, x.Inside, x.Inside6, x.InsideServer, x.InsideServer6)
	host(InsideGo, x.RouterInside, x.RouterInside6, x.Inside, x.Inside6, x.InsideGoServer)
	host(OutsideServer, x.RouterPublic, x.RouterOutside6, x.Outside, x.Outside6, x.OutsideServer, x.OutsideServer6)
	host(OutsideGo, x.RouterPublic, x.RouterOutside6, x.Outside, x.Outside6, x.OutsideGo, x.OutsideGo6)
	host(OutsideClient, x.RouterPublic, x.RouterOutside6, x.Outside, x.Outside6, x.OutsideClient, x.OutsideClient6)
	host(ThirdParty, x.RouterThird, x.RouterThird6, x.Third, x.Third6, x.ThirdParty, x.ThirdParty6)

	// Links must be up before "route add ... via": the router's batch has no routes, so it
	// goes first, then the switch, then the hosts.
	for _, r := range []Role{Router, Switch, Client, InsideServer, InsideGo, OutsideServer, OutsideGo, OutsideClient, ThirdParty} {
		if err := l.ipBatch(ctx, l.ns[r], per[r]); err != nil {
			return err
		}
	}
	if err := l.waitLinks(ctx); err != nil {
		return err
	}
	if out, err := l.Exec(ctx, Router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return fmt.Errorf("router sysctl: %w: %s", err, out)
	}
	if err := l.loadFirewall(ctx); err != nil {
		return err
	}
	l.logf("lab %s up (%s addressing, kernel helper %v)", l.ns[Router], x.Name, l.cfg.KernelHelper)
	return nil
}

// addNamespaces creates the namespaces names, recording them first so that a partial failure
// still deletes what exists.
func (l *Lab) addNamespaces(ctx context.Context, names []string) error {
	adds := make([]string, len(names))
	for i, n := range names {
		adds[i] = "netns add " + n
	}
	l.mu.Lock()
	l.created = names
	l.mu.Unlock()
	return l.ipBatch(ctx, "", adds)
}

// waitLinks waits until every link of the lab is operationally up. The kernel applies carrier
// changes through linkwatch, up to a second late, and until then a bridge port drops frames:
// the lab's first connection would lose its SYN and take a retransmission (1 s) to connect.
func (l *Lab) waitLinks(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pending := append([]Role(nil), roles...)
	for {
		var still []Role
		var last string
		for _, r := range pending {
			out, err := exec.CommandContext(ctx, "ip", "-n", l.ns[r], "-o", "link", "show").Output()
			if err != nil {
				return fmt.Errorf("ip link show in %s: %w", r, err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if strings.Contains(line, " lo:") || strings.Contains(line, "state UP") {
					continue
				}
				still = append(still, r)
				last = line
				break
			}
		}
		if len(still) == 0 {
			return nil
		}
		pending = still
		select {
		case <-ctx.Done():
			return fmt.Errorf("links not up in %v: %s: %w", still, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Exec runs a command in a role's namespace and returns its combined output.
func (l *Lab) Exec(ctx context.Context, r Role, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns[r], name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s in %s: %w", name, strings.Join(args, " "), r, err)
	}
	return out, nil
}

// Result is what a finished command left.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
	Err            error // nil when the exit code is 0
	Duration       time.Duration
}

// Run runs a command in a role's namespace with separate stdout and stderr.
func (l *Lab) Run(ctx context.Context, r Role, name string, args ...string) Result {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns[r], name}, args...)...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: so.Bytes(), Stderr: se.Bytes(), Err: err, Duration: time.Since(start)}
	if err != nil {
		res.ExitCode = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.ExitCode = ee.ExitCode()
		}
		res.Err = fmt.Errorf("%s in %s: %w", name, r, err)
	}
	return res
}

// Do runs fn on a goroutine whose OS thread has joined a role's namespace: sockets fn creates
// belong to that namespace for their whole life, whichever goroutine uses them later. The
// thread is never returned to the scheduler (it ends with the goroutine), so no other
// goroutine ever runs in the lab's namespace by accident.
func (l *Lab) Do(r Role, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread exits with this goroutine.
		h, err := netns.GetFromName(l.ns[r])
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", r, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", r, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Proc is a background process started in a namespace.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error, valid after Done.
func (p *Proc) Err() error { return p.err }

// PID is the process id (the command itself: ip netns exec execs it in place).
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Stop sends sig to the process group and waits up to timeout, then kills it. It reports
// whether the process exited by itself within the timeout.
func (p *Proc) Stop(sig syscall.Signal, timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	// Children that left the process group (vsftpd's sessions call setsid) are found by
	// parentage before the parent goes, and killed by PID after it.
	kids := descendants(p.Cmd.Process.Pid)
	defer func() {
		for _, k := range kids {
			_ = syscall.Kill(k, syscall.SIGKILL)
		}
	}()
	_ = syscall.Kill(-p.Cmd.Process.Pid, sig)
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return false
}

// descendants returns the PIDs of every process below pid, from /proc.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			parent[n] = pp
		}
	}
	var out []int
	for n := range parent {
		for a, hops := parent[n], 0; a > 1 && hops < 64; a, hops = parent[a], hops+1 {
			if a == pid {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// Start starts a background process in a role's namespace, in its own process group. The lab
// kills it (the group, by PID) on Close if it is still running.
func (l *Lab) Start(r Role, stdout, stderr io.Writer, name string, args ...string) (*Proc, error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, errors.New("lab closed")
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns[r], name}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Children that inherit the output pipes (vsftpd's sessions) must not hold Wait forever.
	cmd.WaitDelay = 2 * time.Second
	// No Pdeathsig: it fires when the forking OS thread exits, and Do's locked threads do
	// exit, so daemons would die at random. A killed test process leaves them running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, r, err)
	}
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// Close kills every process the lab started (by process group of each PID it started) and
// deletes the lab's namespaces. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := l.procs
	created := l.created
	l.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop(syscall.SIGTERM, 3*time.Second)
		}()
	}
	wg.Wait()
	var errs []error
	for _, d := range append([]string{l.stateDir}, mapValues(l.roleState)...) {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	var dels []string
	for _, n := range created {
		if _, err := os.Stat("/run/netns/" + n); err == nil {
			dels = append(dels, "netns del "+n)
		}
	}
	if len(dels) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := l.ipBatch(ctx, "", dels); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func mapValues(m map[Role]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// SyncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns a copy of the content.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
