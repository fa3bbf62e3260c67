// Package bench measures ftpalg against the kernel's FTP helper and against plain forwarding,
// side by side in one run, in the namespace lab (package lab): the same client, the same
// server and the same router, only the router's FTP handling differs.
//
// The peers are e2e/cmd/benchpeer processes: a small Go FTP server in the outside Go server's
// namespace (cheap per session, so 10,000 idle sessions fit) and a load generator in the inside
// client's namespace; every control and data connection crosses the router's SNAT and its
// default-drop forward chain.
//
// Router setups:
//
//   - ftpalg: `ftpalg run` on the router, the lab's firewall as it is (data connections pass
//     only as RELATED to a pinhole ftpalg opened).
//   - kernel-helper: the kernel's FTP helper (`ct helper set "ftp"`) on port 21, no ftpalg.
//   - plain: no ALG at all; the forward chain also accepts every new TCP connection to a port
//     ≥ 1024, so both passive and active (the client's inside address, routed) transfers work:
//     the cost of forwarding alone, the limit.
//
// Run (cmd e2e/cmd/bench, `make bench`) prints a Markdown table; TestBenchShort runs the short
// mode and checks that nothing failed.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// Setup is a router configuration.
type Setup string

// The three setups, in the order they run.
const (
	Ftpalg       Setup = "ftpalg"
	KernelHelper Setup = "kernel-helper"
	Plain        Setup = "plain"
	// FtpalgB is a second ftpalg setup, for A/B comparisons in one interleaved run: the
	// binary Options.FtpalgB (Options.Ftpalg when empty) with Options.FtpalgBArgs. It runs only
	// when listed in Options.Setups.
	FtpalgB Setup = "ftpalg-b"
)

// isFtpalg reports whether setup s runs ftpalg on the router.
func isFtpalg(s Setup) bool { return s == Ftpalg || s == FtpalgB }

// Setups is every setup.
var Setups = []Setup{Ftpalg, KernelHelper, Plain}

// Options sizes one run.
type Options struct {
	Ftpalg string // path of the ftpalg binary
	Peer   string // path of the benchpeer binary
	// FtpalgArgs are appended to ftpalg's command line in the ftpalg setup; FtpalgB and
	// FtpalgBArgs are the binary and the arguments of the ftpalg-b setup.
	FtpalgArgs  []string
	FtpalgB     string
	FtpalgBArgs []string

	RTTCount        int           // PASV→227 and PORT→200 round trips on one session, in all
	RTTRounds       int           // the round trips are split in rounds across the setups
	PinholeCount    int           // data connections timed per mode
	SessionDuration time.Duration // per (mode, concurrency) cell
	Concurrency     []int
	TransferBytes   int64 // per session
	BulkBytes       int64
	BulkRuns        int
	IdleSessions    int // ftpalg only
	// Unrelated traffic: UnrelatedConc workers open short TCP connections to a non-FTP port
	// (UnrelatedPort on the outside server) for UnrelatedDuration, in UnrelatedRounds rounds
	// across the setups.
	UnrelatedConc     int
	UnrelatedDuration time.Duration
	UnrelatedRounds   int
	// Files small files of FileBytes each are fetched one after the other on one session.
	Files     int
	FileBytes int64
	// ClientAddrs is how many inside client addresses the sessions and idle benchmarks spread
	// their sessions over, in every setup (ftpalg admits at most 256 open sessions per client
	// address and worker): the router sees many clients, as routers do.
	ClientAddrs int

	Setups []Setup                          // nil: all
	LogDir string                           // where ftpalg's logs are kept ("" : a temporary directory, removed)
	Logf   func(format string, args ...any) `json:"-"`
}

// Full is the configuration of `make bench`.
func Full() Options {
	return Options{
		RTTCount: 3000, RTTRounds: 5, PinholeCount: 500, SessionDuration: 5 * time.Second, Concurrency: []int{1, 16, 256},
		TransferBytes: 1024, BulkBytes: 512 << 20, BulkRuns: 3, IdleSessions: 10000, ClientAddrs: 128,
		UnrelatedConc: 16, UnrelatedDuration: 2 * time.Second, UnrelatedRounds: 3, Files: 300, FileBytes: 1024,
	}
}

// Short is the configuration of `make bench-short` and TestBenchShort: every measurement,
// smaller counts.
func Short() Options {
	return Options{
		RTTCount: 200, RTTRounds: 2, PinholeCount: 50, SessionDuration: time.Second, Concurrency: []int{1, 16, 256},
		TransferBytes: 1024, BulkBytes: 32 << 20, BulkRuns: 1, IdleSessions: 1000, ClientAddrs: 128,
		UnrelatedConc: 4, UnrelatedDuration: 300 * time.Millisecond, UnrelatedRounds: 1, Files: 20, FileBytes: 1024,
	}
}

// Lat is a latency distribution in microseconds (benchpeer's JSON).
type Lat struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	Max float64 `json:"max_us"`
}

// RTT is the command round-trip result.
type RTT struct {
	PASV Lat `json:"pasv"`
	PORT Lat `json:"port"`
	EPRT Lat `json:"eprt"`
}

// GeoMeanP50 is the geometric mean of the PASV, PORT and EPRT round trips' p50 (µs), 0 when
// one is missing.
func (r RTT) GeoMeanP50() float64 {
	v := []float64{r.PASV.P50, r.PORT.P50, r.EPRT.P50}
	prod := 1.0
	for _, x := range v {
		if x <= 0 {
			return 0
		}
		prod *= x
	}
	return math.Cbrt(prod)
}

// Unrelated is the short non-FTP connections' result, summed over the rounds.
type Unrelated struct {
	Concurrency int       `json:"concurrency"`
	OK          int64     `json:"ok"`
	Failed      int64     `json:"failed"`
	Seconds     float64   `json:"seconds"`
	PerSec      float64   `json:"per_sec"` // OK / Seconds
	PerSecRound []float64 `json:"per_sec_rounds"`
	Conn        Lat       `json:"conn"` // connect to close; percentiles: the median of the rounds
	Errors      []string  `json:"errors,omitempty"`
	// ftpalg only: its utime+stime over the rounds, and per 1,000 connections (ms).
	CPUSeconds     float64 `json:"ftpalg_cpu_seconds,omitempty"`
	CPUPer1000Conn float64 `json:"ftpalg_cpu_ms_per_1000,omitempty"`
	// The same from the scheduler's nanosecond clock (/proc/<pid>/task/*/schedstat): the
	// 10 ms ticks of utime+stime are coarse against an idle daemon.
	RunSeconds     float64 `json:"ftpalg_run_seconds,omitempty"`
	RunPer1000Conn float64 `json:"ftpalg_run_ms_per_1000,omitempty"`
}

// Files is the session that fetches many small files one after the other (benchpeer's JSON).
type Files struct {
	Files   int     `json:"files"`
	Failed  int     `json:"failed"`
	Seconds float64 `json:"seconds"`
	PerFile Lat     `json:"per_file"`
	Error   string  `json:"error,omitempty"`
}

// Sessions is one (mode, concurrency) cell.
type Sessions struct {
	Concurrency int      `json:"concurrency"`
	Mode        string   `json:"mode"`
	OK          int64    `json:"ok"`
	Failed      int64    `json:"failed"`
	Seconds     float64  `json:"seconds"`
	PerSec      float64  `json:"per_sec"`
	Errors      []string `json:"errors,omitempty"`
}

// Pinhole is the time until a data connection gets through.
type Pinhole struct {
	Mode    string `json:"mode"`
	Connect Lat    `json:"connect"`
	Total   Lat    `json:"total"`
	Failed  int    `json:"failed"`
}

// Bulk is the bulk download throughput.
type Bulk struct {
	Bytes  int64     `json:"bytes"`
	MBps   []float64 `json:"mbps"`
	Median float64   `json:"median_mbps"`
}

// Idle is ftpalg's footprint with many idle control sessions.
type Idle struct {
	Sessions       int     // opened by the generator
	Failed         int     // not opened
	Tracked        float64 // ftpalg_sessions while they were held
	OpenSeconds    float64 // time to open them all
	RSSBaseKB      int64   // VmRSS of a fresh ftpalg
	RSSKB          int64   // VmRSS with the sessions held
	HWMKB          int64   // VmHWM with the sessions held
	CPUSeconds     float64 // ftpalg utime+stime spent while the sessions were opened
	PacketsQueued  float64 // control packets ftpalg handled meanwhile
	CPUPer1000Pkts float64 // ms of CPU per 1,000 of those packets
}

// CtlCPU is ftpalg's CPU cost over one phase.
type CtlCPU struct {
	Phase          string
	CPUSeconds     float64
	Packets        float64
	CPUPer1000Pkts float64 // ms
	// Context switches of ftpalg's threads over the phase (/proc/<pid>/task/*/status), and
	// per control packet; the metrics scrapes that bound the phase add a few.
	Switches       float64
	SwitchesPerPkt float64
}

// Result is everything measured for one setup.
type Result struct {
	Setup    Setup
	RTT      RTT
	Sessions []Sessions
	// SessionCPUus is ftpalg's CPU (utime+stime) over the sessions phase per completed FTP
	// session, µs (ftpalg only).
	SessionCPUus float64
	Unrelated    Unrelated
	Files        Files
	PinPASV      Pinhole
	PinPORT      Pinhole
	Bulk         Bulk
	Idle         *Idle    // ftpalg only
	CPU          []CtlCPU // ftpalg only
	Errors       []string // harness-level failures of this setup
	Duration     time.Duration
}

// Failures counts failed transfers and connections of this setup.
func (r *Result) Failures() int {
	n := r.PinPASV.Failed + r.PinPORT.Failed
	for _, s := range r.Sessions {
		n += int(s.Failed)
	}
	n += int(r.Unrelated.Failed) + r.Files.Failed
	if r.Idle != nil {
		n += r.Idle.Failed
	}
	return n + len(r.Errors)
}

// Machine describes where the run happened.
type Machine struct {
	NProc      int
	CPU        string
	Kernel     string
	Go         string
	LoadBefore string
	LoadAfter  string
}

// Report is one run.
type Report struct {
	Options Options
	Machine Machine
	Started time.Time
	Elapsed time.Duration
	Results []*Result
}

// Result returns the result of a setup (nil if it did not run).
func (r *Report) Result(s Setup) *Result {
	for _, x := range r.Results {
		if x.Setup == s {
			return x
		}
	}
	return nil
}

// Failures counts every failure of the run.
func (r *Report) Failures() int {
	n := 0
	for _, x := range r.Results {
		n += x.Failures()
	}
	return n
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Run brings every setup up, then runs each measurement on all of them back to back, in a
// rotating order, so that the machine's drifting load (a shared 2-core machine) does not land
// on one setup: the ratios compare figures taken seconds apart, not minutes. The command round
// trips run in several rounds; each percentile is the median of the rounds. A setup that
// fails to come up is recorded in its Errors and the run goes on; err is only for what stops
// the whole run.
func Run(ctx context.Context, opt Options) (*Report, error) {
	if opt.Ftpalg == "" || opt.Peer == "" {
		return nil, errors.New("bench: Options.Ftpalg and Options.Peer are required")
	}
	setups := opt.Setups
	if setups == nil {
		setups = Setups
	}
	rep := &Report{Options: opt, Machine: machine(), Started: time.Now()}
	var envs []*env
	defer func() {
		for _, e := range envs {
			e.close()
		}
	}()
	for _, s := range setups {
		res := &Result{Setup: s}
		rep.Results = append(rep.Results, res)
		e, err := upSetup(ctx, &opt, res)
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			opt.logf("%s: %v", s, err)
			continue
		}
		envs = append(envs, e)
	}
	// phase runs fn on every live setup, starting with the i-th, and records errors.
	phase := func(i int, what string, fn func(e *env) error) {
		for k := range envs {
			e := envs[(i+k)%len(envs)]
			if ctx.Err() != nil || e.failed {
				continue
			}
			opt.logf("%s: %s", e.res.Setup, what)
			start := time.Now()
			if err := fn(e); err != nil {
				e.res.Errors = append(e.res.Errors, fmt.Sprintf("%s: %v", what, err))
				opt.logf("%s: %s: %v", e.res.Setup, what, err)
				e.failed = true
			}
			e.res.Duration += time.Since(start)
		}
	}

	// Command round trips, with ftpalg's CPU per control packet.
	rounds := opt.RTTRounds
	if rounds < 1 {
		rounds = 1
	}
	rtts := make(map[*env][]RTT)
	cpuRTT := make(map[*env][3]float64)
	for r := range rounds {
		phase(r, fmt.Sprintf("rtt round %d/%d (%d round trips)", r+1, rounds, opt.RTTCount/rounds), func(e *env) error {
			cpu0, pk0 := e.cpuAndPackets(ctx)
			sw0 := e.switches()
			var x RTT
			if err := e.peer(ctx, &x, "rtt", "-server", e.server.String(), "-n", strconv.Itoa(opt.RTTCount/rounds)); err != nil {
				return err
			}
			rtts[e] = append(rtts[e], x)
			if e.ftpalg != nil {
				sw1 := e.switches()
				cpu1, pk1 := e.cpuAndPackets(ctx)
				c := cpuRTT[e]
				cpuRTT[e] = [3]float64{c[0] + cpu1 - cpu0, c[1] + pk1 - pk0, c[2] + sw1 - sw0}
			}
			return nil
		})
	}
	for _, e := range envs {
		e.res.RTT = medianRTT(rtts[e])
		if c, ok := cpuRTT[e]; ok {
			e.res.CPU = append(e.res.CPU, ctlCPU("command round trips", c[0], c[1], c[2]))
		}
	}

	phase(1, "pinhole latency", func(e *env) error {
		if err := e.peer(ctx, &e.res.PinPASV, "pinhole", "-server", e.server.String(), "-n", strconv.Itoa(opt.PinholeCount), "-mode", "pasv"); err != nil {
			return err
		}
		return e.peer(ctx, &e.res.PinPORT, "pinhole", "-server", e.server.String(), "-n", strconv.Itoa(opt.PinholeCount), "-mode", "port")
	})

	// Many small files on one session, one after the other: a sequential load, so it runs
	// among the other sequential ones; right after the unrelated connections' burst its
	// per-file time was 10-20x higher on whichever setup came first (the kernel still busy
	// with the burst's aftermath), whatever the setup.
	phase(2, fmt.Sprintf("%d files in one session", opt.Files), func(e *env) error {
		return e.peer(ctx, &e.res.Files, "files", "-server", e.server.String(), "-n", strconv.Itoa(opt.Files),
			"-size", strconv.FormatInt(opt.FileBytes, 10))
	})

	cpuSess := make(map[*env][3]float64)
	i := 3
	for _, mode := range []string{"pasv", "port"} {
		for _, c := range opt.Concurrency {
			phase(i, fmt.Sprintf("sessions %s c=%d", mode, c), func(e *env) error {
				cpu0, pk0 := e.cpuAndPackets(ctx)
				sw0 := e.switches()
				var s Sessions
				if err := e.peer(ctx, &s, "sessions", "-server", e.server.String(), "-c", strconv.Itoa(c),
					"-duration", opt.SessionDuration.String(), "-mode", mode, "-size", strconv.FormatInt(opt.TransferBytes, 10),
					"-from", strings.Join(e.from, ",")); err != nil {
					return err
				}
				e.res.Sessions = append(e.res.Sessions, s)
				if e.ftpalg != nil {
					sw1 := e.switches()
					cpu1, pk1 := e.cpuAndPackets(ctx)
					x := cpuSess[e]
					cpuSess[e] = [3]float64{x[0] + cpu1 - cpu0, x[1] + pk1 - pk0, x[2] + sw1 - sw0}
				}
				return nil
			})
			i++
		}
	}
	for _, e := range envs {
		if c, ok := cpuSess[e]; ok {
			e.res.CPU = append(e.res.CPU, ctlCPU("sessions with one transfer", c[0], c[1], c[2]))
			var n int64
			for _, s := range e.res.Sessions {
				n += s.OK
			}
			if n > 0 {
				e.res.SessionCPUus = c[0] / float64(n) * 1e6
			}
		}
	}

	// Unrelated traffic: short connections to a port that is not FTP's, with ftpalg's CPU.
	urounds := max(opt.UnrelatedRounds, 1)
	unrel := make(map[*env][]unrelatedRound)
	for r := range urounds {
		phase(i+r, fmt.Sprintf("unrelated round %d/%d (%d workers, %s)", r+1, urounds, opt.UnrelatedConc, opt.UnrelatedDuration), func(e *env) error {
			// CPU straight from /proc: no metrics scrape (which ftpalg would serve) inside
			// the interval.
			cpu0, run0 := e.cpuNow()
			var x unrelatedRound
			if err := e.peer(ctx, &x.Unrelated, "unrelated", "-server", e.echo.String(), "-c", strconv.Itoa(opt.UnrelatedConc),
				"-duration", opt.UnrelatedDuration.String(), "-from", strings.Join(e.from, ",")); err != nil {
				return err
			}
			if e.ftpalg != nil {
				cpu1, run1 := e.cpuNow()
				x.cpu, x.run = cpu1-cpu0, run1-run0
			}
			unrel[e] = append(unrel[e], x)
			return nil
		})
	}
	i += urounds
	for _, e := range envs {
		if rs, ok := unrel[e]; ok {
			e.res.Unrelated = sumUnrelated(rs, e.ftpalg != nil)
		}
	}

	phase(i, fmt.Sprintf("bulk %d MiB x %d", opt.BulkBytes>>20, opt.BulkRuns), func(e *env) error {
		return e.peer(ctx, &e.res.Bulk, "bulk", "-server", e.server.String(), "-size", strconv.FormatInt(opt.BulkBytes, 10), "-runs", strconv.Itoa(opt.BulkRuns))
	})

	for _, e := range envs {
		if e.ftpalg == nil || e.failed {
			continue
		}
		if opt.IdleSessions > 0 {
			opt.logf("%s: %d idle sessions", e.res.Setup, opt.IdleSessions)
			idle, err := e.idle(ctx)
			if err != nil {
				e.res.Errors = append(e.res.Errors, fmt.Sprintf("idle sessions: %v", err))
			} else {
				e.res.Idle = idle
			}
		}
		if err := e.stopFtpalg(); err != nil {
			e.res.Errors = append(e.res.Errors, err.Error())
		}
	}
	rep.Elapsed = time.Since(rep.Started)
	rep.Machine.LoadAfter = loadavg()
	return rep, ctx.Err()
}

// medianLat takes, for each percentile, the median over the rounds; N is their sum.
func medianLat(ls []Lat) Lat {
	if len(ls) == 0 {
		return Lat{}
	}
	pick := func(f func(Lat) float64) float64 {
		v := make([]float64, len(ls))
		for i, l := range ls {
			v[i] = f(l)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	out := Lat{
		P50: pick(func(l Lat) float64 { return l.P50 }),
		P99: pick(func(l Lat) float64 { return l.P99 }),
		Max: pick(func(l Lat) float64 { return l.Max }),
	}
	for _, l := range ls {
		out.N += l.N
	}
	return out
}

// medianRTT takes, for each percentile, the median over the rounds.
func medianRTT(rs []RTT) RTT {
	med := func(get func(RTT) Lat) Lat {
		ls := make([]Lat, len(rs))
		for i, r := range rs {
			ls[i] = get(r)
		}
		return medianLat(ls)
	}
	return RTT{PASV: med(func(r RTT) Lat { return r.PASV }), PORT: med(func(r RTT) Lat { return r.PORT }),
		EPRT: med(func(r RTT) Lat { return r.EPRT })}
}

// unrelatedRound is one round of unrelated connections and ftpalg's CPU over it.
type unrelatedRound struct {
	Unrelated
	cpu, run float64
}

// sumUnrelated adds the rounds up: the rate is all connections over all the rounds' time.
func sumUnrelated(rs []unrelatedRound, ftpalg bool) Unrelated {
	var out Unrelated
	var conn []Lat
	for _, r := range rs {
		out.Concurrency = r.Concurrency
		out.OK += r.OK
		out.Failed += r.Failed
		out.Seconds += r.Seconds
		out.PerSecRound = append(out.PerSecRound, r.PerSec)
		out.Errors = append(out.Errors, r.Errors...)
		out.CPUSeconds += r.cpu
		out.RunSeconds += r.run
		conn = append(conn, r.Conn)
	}
	out.Conn = medianLat(conn)
	if out.Seconds > 0 {
		out.PerSec = float64(out.OK) / out.Seconds
	}
	if ftpalg && out.OK > 0 {
		out.CPUPer1000Conn = out.CPUSeconds / float64(out.OK) * 1e6
		out.RunPer1000Conn = out.RunSeconds / float64(out.OK) * 1e6
	}
	return out
}

const metricsAddr = "127.0.0.1:9121"

// UnrelatedPort is the port of the non-FTP service the unrelated connections go to.
const UnrelatedPort = 8080

type env struct {
	opt    *Options
	res    *Result
	failed bool // a measurement failed: the setup is left out of the rest
	l      *lab.Lab
	close  func()
	server netip.AddrPort
	echo   netip.AddrPort // the non-FTP service, on the server's host
	dir    string
	ftpalg *lab.Proc
	log    *os.File
	from   []string // the client addresses sessions come from
}

// upSetup builds a setup's lab (with ftpalg running for the ftpalg setup); e.close tears it
// down.
func upSetup(ctx context.Context, opt *Options, res *Result) (e *env, err error) {
	l, err := lab.New(ctx, lab.Config{KernelHelper: res.Setup == KernelHelper, Logf: opt.Logf})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	dir, err := os.MkdirTemp("", "ftpalg-bench-")
	if err != nil {
		l.Close()
		return nil, err
	}
	e = &env{opt: opt, res: res, l: l, dir: dir, server: netip.AddrPortFrom(l.Addrs.OutsideGo, 21),
		echo: netip.AddrPortFrom(l.Addrs.OutsideGo, UnrelatedPort)}
	e.close = func() {
		if e.ftpalg != nil {
			e.stopFtpalg()
		}
		l.Close()
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			e.close()
			e = nil
		}
	}()
	// The non-FTP service is reachable from the inside in every setup, by the same rule.
	if err := l.Nft(ctx, fmt.Sprintf("add rule inet lab forward iifname \"lan\" tcp dport %d ct state new accept\n", UnrelatedPort)); err != nil {
		return nil, err
	}
	if res.Setup == Plain {
		// Forwarding only: open the data ports (passive: client → server; active: the server
		// to the client's inside address, routed, not translated).
		if err := l.Nft(ctx, "add rule inet lab forward tcp dport 1024-65535 ct state new accept\n"); err != nil {
			return nil, err
		}
	}
	// Many clients behind the router: extra inside addresses from .100 upwards.
	x := l.Addrs
	base := x.Inside.Addr().As4()
	var addrs []netip.Addr
	for i := range opt.ClientAddrs {
		base[3] = byte(100 + i)
		addrs = append(addrs, netip.AddrFrom4(base))
		e.from = append(e.from, netip.AddrFrom4(base).String())
	}
	if len(addrs) > 0 {
		if err := l.AddAddrs(ctx, lab.Client, "eth0", x.Inside, addrs); err != nil {
			return nil, err
		}
	}
	srvLog := &lab.SyncBuffer{}
	srv, err := l.Start(lab.OutsideGo, srvLog, srvLog, opt.Peer, "serve", "-listen", e.server.String(), "-echo", e.echo.String())
	if err != nil {
		return nil, err
	}
	if err := l.WaitFTP(ctx, lab.OutsideGo, e.server.Addr(), srv); err != nil {
		return nil, fmt.Errorf("benchpeer serve: %w (output %q)", err, srvLog.String())
	}
	if isFtpalg(res.Setup) {
		if err := e.startFtpalg(ctx); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func ctlCPU(phase string, cpu, pkts, switches float64) CtlCPU {
	c := CtlCPU{Phase: phase, CPUSeconds: cpu, Packets: pkts, Switches: switches}
	if pkts > 0 {
		c.CPUPer1000Pkts = cpu * 1e3 / pkts * 1e3
		c.SwitchesPerPkt = switches / pkts
	}
	return c
}

// switches returns the context switches (voluntary and not) of ftpalg's threads so far: each
// voluntary one is a thread that blocked and must be woken again, the cost a packet pays per
// hand-off between the kernel's queue, the reader and the workers.
func (e *env) switches() float64 {
	if e.ftpalg == nil {
		return 0
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", e.ftpalg.PID()))
	var n float64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += x
			}
		}
	}
	return n
}

// peer runs a benchpeer client subcommand in the client namespace and decodes its JSON.
func (e *env) peer(ctx context.Context, out any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	r := e.l.Run(ctx, lab.Client, e.opt.Peer, args...)
	if r.Err != nil {
		return fmt.Errorf("benchpeer %s: %w: %s", args[0], r.Err, bytes.TrimSpace(r.Stderr))
	}
	if err := json.Unmarshal(r.Stdout, out); err != nil {
		return fmt.Errorf("benchpeer %s output %q: %w", args[0], r.Stdout, err)
	}
	return nil
}

// startFtpalg runs a fresh ftpalg on the router, its log going to a file (the daemon's real
// cost of logging, without the test process parsing every line on the same CPUs).
func (e *env) startFtpalg(ctx context.Context) error {
	dir := e.dir
	if e.opt.LogDir != "" {
		dir = e.opt.LogDir
	}
	f, err := os.CreateTemp(dir, "ftpalg-*.log")
	if err != nil {
		return err
	}
	args := append(lab.DefaultFtpalgArgs(), "--metrics-listen", metricsAddr)
	bin := e.opt.Ftpalg
	if e.res.Setup == FtpalgB {
		if e.opt.FtpalgB != "" {
			bin = e.opt.FtpalgB
		}
		args = append(args, e.opt.FtpalgBArgs...)
	} else {
		args = append(args, e.opt.FtpalgArgs...)
	}
	stderr := &lab.SyncBuffer{}
	name, argv, err := e.l.FtpalgCommand(bin, args)
	if err != nil {
		f.Close()
		return err
	}
	p, err := e.l.Start(lab.Router, f, stderr, name, argv...)
	if err != nil {
		f.Close()
		return err
	}
	e.ftpalg, e.log = p, f
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := e.metrics(ctx); err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("ftpalg exited before ready: %v; stderr %q", p.Err(), stderr.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ftpalg not ready after 15s; stderr %q", stderr.String())
		}
	}
}

func (e *env) stopFtpalg() error {
	p := e.ftpalg
	e.ftpalg = nil
	defer e.log.Close()
	if !p.Stop(syscall.SIGTERM, 8*time.Second) {
		return errors.New("ftpalg did not exit within 8s of SIGTERM")
	}
	if err := p.Err(); err != nil {
		return fmt.Errorf("ftpalg exit: %w", err)
	}
	return nil
}

// metrics fetches ftpalg's Prometheus text from inside the router namespace.
func (e *env) metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r := e.l.Run(ctx, lab.Router, "curl", "-sf", "--max-time", "3", "http://"+metricsAddr+"/metrics")
	if r.Err != nil {
		return nil, r.Err
	}
	return parseMetrics(r.Stdout), nil
}

// parseMetrics sums the samples of each metric name over its labels.
func parseMetrics(b []byte) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		out[name] += v
	}
	return out
}

// cpuAndPackets returns ftpalg's CPU seconds and the control packets it has handled.
func (e *env) cpuAndPackets(ctx context.Context) (float64, float64) {
	if e.ftpalg == nil {
		return 0, 0
	}
	m, _ := e.metrics(ctx)
	cpu, _ := procCPU(e.ftpalg.PID())
	return cpu, m["ftpalg_packets_total"]
}

// cpuNow returns ftpalg's utime+stime and its threads' time on a CPU by the scheduler's
// clock, both in seconds (0 without ftpalg).
func (e *env) cpuNow() (cpu, run float64) {
	if e.ftpalg == nil {
		return 0, 0
	}
	cpu, _ = procCPU(e.ftpalg.PID())
	run, _ = procRun(e.ftpalg.PID())
	return cpu, run
}

// procRun sums the first field of /proc/<pid>/task/*/schedstat (ns on a CPU) over a process's
// threads, in seconds. Threads that exited meanwhile are not counted (Go keeps its threads).
func procRun(pid int) (float64, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, errNoProc
	}
	var ns float64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			v, _ := strconv.ParseFloat(f[0], 64)
			ns += v
		}
	}
	return ns / 1e9, nil
}

var errNoProc = errors.New("no such process")

// procCPU returns utime+stime of a process (all threads), in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errNoProc
	}
	// After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errNoProc
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clkTck, nil
}

// clkTck is USER_HZ, 100 on every Linux architecture Go supports.
const clkTck = 100

// procMem returns VmRSS and VmHWM of a process in KiB.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm, nil
}

// idle restarts ftpalg (so VmHWM reflects this phase only), opens the idle sessions from many
// client addresses, measures while they are held, and closes them.
func (e *env) idle(ctx context.Context) (*Idle, error) {
	opt := e.opt
	if err := e.stopFtpalg(); err != nil {
		return nil, err
	}
	if err := e.startFtpalg(ctx); err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // let the fresh daemon settle before the baseline
	out := &Idle{Sessions: opt.IdleSessions}
	rss0, _, err := procMem(e.ftpalg.PID())
	if err != nil {
		return nil, err
	}
	out.RSSBaseKB = rss0
	cpu0, pk0 := e.cpuAndPackets(ctx)

	stdout := &lab.SyncBuffer{}
	stderr := &lab.SyncBuffer{}
	gen, err := e.l.Start(lab.Client, stdout, stderr, opt.Peer, "idle", "-server", e.server.String(),
		"-n", strconv.Itoa(opt.IdleSessions), "-from", strings.Join(e.from, ","))
	if err != nil {
		return nil, err
	}
	defer gen.Stop(syscall.SIGTERM, 5*time.Second)
	var ready struct {
		Ready   int      `json:"ready"`
		Failed  int      `json:"failed"`
		Seconds float64  `json:"seconds"`
		Errors  []string `json:"errors"`
	}
	deadline := time.After(3 * time.Minute)
	for {
		if s := stdout.String(); strings.Contains(s, "\n") {
			if err := json.Unmarshal([]byte(s), &ready); err != nil {
				return nil, fmt.Errorf("idle output %q: %w", s, err)
			}
			break
		}
		select {
		case <-gen.Done():
			return nil, fmt.Errorf("idle generator exited: %v: %s", gen.Err(), stderr.String())
		case <-deadline:
			return nil, errors.New("idle sessions not open after 3 minutes")
		case <-time.After(100 * time.Millisecond):
		}
	}
	out.Failed, out.OpenSeconds = ready.Failed, ready.Seconds
	if ready.Failed > 0 {
		opt.logf("idle: %d sessions failed: %v", ready.Failed, ready.Errors)
	}
	// Let the last handshakes' packets and conntrack lookups drain, then measure.
	time.Sleep(2 * time.Second)
	cpu1, pk1 := e.cpuAndPackets(ctx)
	out.CPUSeconds, out.PacketsQueued = cpu1-cpu0, pk1-pk0
	if out.PacketsQueued > 0 {
		out.CPUPer1000Pkts = out.CPUSeconds * 1e3 / out.PacketsQueued * 1e3
	}
	if m, err := e.metrics(ctx); err == nil {
		out.Tracked = m["ftpalg_sessions"]
	}
	if out.RSSKB, out.HWMKB, err = procMem(e.ftpalg.PID()); err != nil {
		return nil, err
	}
	return out, nil
}

func machine() Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b []byte
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		m.Kernel = string(b)
	}
	return m
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// ModuleRoot returns the directory holding the module's go.mod, searching up from the working
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Build builds a main package of the module (pkg relative to the module root, e.g.
// "./e2e/cmd/benchpeer") into dir and returns the binary's path.
func Build(dir, name, pkg string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command(goTool, "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}
