// Command ftpalg is an FTP-aware firewall/NAT application-layer gateway for Linux routers.
//
//	ftpalg run       inspect FTP control connections through NFQUEUE and open pinholes
//	ftpalg rules     print the nftables ruleset that run installs
//	ftpalg pinholes  list the pinholes (conntrack expectations) open now
//	ftpalg cleanup   remove what run installed: its nftables table and its pinholes
//	ftpalg version   print the version
//
// See README.md for the operator's guide and DESIGN notes for the mechanism.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/conntrack/rules"
	"github.com/ftpalg/ftpalg/gateway"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

const usage = `usage: ftpalg <command> [flags]

commands:
  run        inspect FTP control connections and open pinholes (needs CAP_NET_ADMIN)
  rules      print the nftables ruleset that run installs
  pinholes   list the pinholes open now (from the kernel)
  cleanup    remove what run installed and left in place: its nftables table, its pinholes
  version    print the version

Run 'ftpalg <command> -h' for the flags of a command.
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		cfg, err := parseRunFlags(args[1:], stderr)
		if err != nil {
			return 2
		}
		return cmdRun(cfg, stdout, stderr)
	case "rules":
		cfg, err := parseRunFlags(args[1:], stderr)
		if err != nil {
			return 2
		}
		fmt.Fprint(stdout, rules.Render(cfg.Rules()))
		return 0
	case "pinholes":
		return cmdPinholes(stdout, stderr)
	case "cleanup":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "ftpalg: cleanup takes no arguments\n")
			return 2
		}
		return cmdCleanup(stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "ftpalg %s\n", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ftpalg: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// portList is a flag.Value for a comma-separated list of TCP ports.
type portList []uint16

func (p *portList) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ",")
}

func (p *portList) Set(v string) error {
	var out []uint16
	seen := map[uint16]bool{}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("invalid port %q (want 1-65535)", f)
		}
		if !seen[uint16(n)] {
			seen[uint16(n)] = true
			out = append(out, uint16(n))
		}
	}
	*p = out
	return nil
}

func parseRunFlags(args []string, stderr io.Writer) (*gateway.Config, error) {
	cfg := &gateway.Config{}
	ports := portList{21}
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&ports, "ports", "FTP control ports to inspect, comma-separated")
	queue := fs.Uint("queue", 2121, "first NFQUEUE number")
	queues := fs.Uint("queues", 1, "number of queues (one worker each; queue-balance with symmetric hashing)")
	fs.DurationVar(&cfg.PinholeTimeout, "pinhole-timeout", 30*time.Second, "how long an unused pinhole stays open")
	fs.StringVar(&cfg.LogFormat, "log-format", "json", "log format: json or text (one event per line on stdout)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "address to serve /metrics and /healthz on (off when empty)")
	fs.BoolVar(&cfg.FailOpen, "fail-open", true, "let control packets pass uninspected when ftpalg is down or its queue is full")
	fs.BoolVar(&cfg.AllowLowPorts, "allow-low-ports", false, "accept announced data ports below 1024")
	fs.BoolVar(&cfg.Loose, "loose", false, "accept an announced address other than the sender's (each use is logged)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected argument %q", fs.Arg(0))
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return nil, err
	}
	var errs []error
	if *queue > 65535 {
		errs = append(errs, fmt.Errorf("--queue %d: want 0-65535", *queue))
	}
	if *queues < 1 || *queues > 64 || *queue+*queues-1 > 65535 {
		errs = append(errs, fmt.Errorf("--queues %d: want 1-64 queues within 0-65535", *queues))
	}
	if cfg.PinholeTimeout < time.Second || cfg.PinholeTimeout > 300*time.Second {
		errs = append(errs, fmt.Errorf("--pinhole-timeout %s: want 1s-300s (the kernel keeps a pinhole at most 300s)", cfg.PinholeTimeout))
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("--log-format %q: want json or text", cfg.LogFormat))
	}
	if len(ports) == 0 {
		errs = append(errs, errors.New("--ports: at least one port"))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return nil, err
	}
	cfg.Ports = ports
	cfg.Version = version
	cfg.Queue = uint16(*queue)
	cfg.Queues = uint16(*queues)
	return cfg, nil
}

func cmdRun(cfg *gateway.Config, stdout, stderr io.Writer) int {
	// Log lines leave the packet path through a bounded queue; Close writes what is left
	// (the shutdown and session_close lines) before the process exits.
	log, logq := gateway.NewAsyncLogger(stdout, cfg.LogFormat, gateway.DefaultLogQueue)
	defer logq.Close()
	// The first SIGINT/SIGTERM starts an orderly shutdown; signal.NotifyContext's stop is called
	// once it has begun so that a second signal kills the process the default way.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	if err := startupChecks(cfg); err != nil {
		log.Error("error", "err", err.Error(), "phase", "startup")
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	d, err := gateway.New(cfg, log)
	if err == nil {
		d.Register(logq.Collector())
	}
	if err != nil {
		log.Error("error", "err", err.Error(), "phase", "startup")
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		log.Error("error", "err", err.Error(), "phase", "run")
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	return 0
}

// startupChecks fails fast with one clear message for each condition under which ftpalg cannot
// work (DESIGN.md: privileges, user namespace, kernel features, a kernel ftp helper in the way).
func startupChecks(cfg *gateway.Config) error {
	for _, check := range []func() error{
		conntrack.CheckPrivileges,
		conntrack.CheckUserNS,
		conntrack.CheckConntrack,
		func() error { return conntrack.CheckKernelFTPHelper(cfg.Ports) },
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// listPinholes opens ctnetlink and lists the pinholes (expectations on carrier masters); the
// caller closes c.
func listPinholes() (*conntrack.Conn, []conntrack.Expectation, error) {
	c, err := conntrack.Dial()
	if err != nil {
		return nil, nil, err
	}
	exps, err := c.ListExpect()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, exps, nil
}

func cmdPinholes(stdout, stderr io.Writer) int {
	c, exps, err := listPinholes()
	if err != nil {
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	defer c.Close()
	if len(exps) == 0 {
		fmt.Fprintln(stdout, "no pinholes")
		return 0
	}
	fmt.Fprintf(stdout, "%-40s %-46s %-46s %s\n", "FROM", "TO", "NAT_TO", "MASTER")
	for _, e := range exps {
		natTo := "-"
		if e.NAT {
			natTo = e.NATTo.String()
		}
		fmt.Fprintf(stdout, "%-40s %-46s %-46s %s -> %s\n", e.Src, e.Dst, natTo, e.Master.Src, e.Master.Dst)
	}
	return 0
}

// cmdCleanup removes everything run installed and leaves in place across restarts: the
// nftables table (carrier helper, queue rules) and the pinholes (expectations on carrier
// masters). Sequence adjustments of live connections stay: they belong to the connections,
// and removing them would break the sessions ftpalg resized. Removing what is already gone is
// not an error, so a second cleanup also exits 0.
func cmdCleanup(stdout, stderr io.Writer) int {
	cfg := &gateway.Config{}
	if err := rules.Remove(cfg.Rules()); err != nil {
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "removed table inet %s (if present)\n", cfg.Rules().Table)
	c, exps, err := listPinholes()
	if err != nil {
		fmt.Fprintf(stderr, "ftpalg: %v\n", err)
		return 1
	}
	defer c.Close()
	n := 0
	for _, e := range exps {
		switch err := c.DeleteExpect(e); {
		case err == nil:
			n++
		case errors.Is(err, conntrack.ErrNotFound):
		default:
			fmt.Fprintf(stderr, "ftpalg: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "removed %d pinholes\n", n)
	return 0
}
