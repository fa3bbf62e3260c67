package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// The hostile-load test (issue 12, "bounded under hostile load"): an attacker on the inside
// LAN sprays spoofed one-packet "sessions" at a control port through the router, from random
// addresses of one IPv6 /64 and then from random IPv4 addresses, as fast as a raw socket
// sends them (e2e/cmd/spray). ftpalg must stay small, keep inspecting the real client's
// sessions right after, and open nothing for a spoofed source.

// sprayTable is a table of the test's own in the router. It counts the spoofed packets that
// reach the router, and drops what the router would forward to a spoofed inside address (SYN-
// ACKs, RSTs), after ftpalg has seen it: the addresses do not exist, and 150,000 neighbour
// resolutions would only fill the kernel's neighbour tables, which all namespaces share.
func sprayTable(x lab.Addrs, real4, real6 []netip.Addr) string {
	join := func(as []netip.Addr) string {
		s := make([]string, len(as))
		for i, a := range as {
			s[i] = a.String()
		}
		return strings.Join(s, ", ")
	}
	return fmt.Sprintf(`table inet e2e_spray {
	set real4 { type ipv4_addr; elements = { %s } }
	set real6 { type ipv6_addr; elements = { %s } }
	chain from_lan {
		type filter hook prerouting priority -300; policy accept;
		iifname "lan" ip saddr %s ip saddr != @real4 tcp dport 21 counter comment "spoofed4"
		iifname "lan" ip6 saddr %s ip6 saddr != @real6 tcp dport 21 counter comment "spoofed6"
	}
	chain to_lan {
		type filter hook forward priority 10; policy accept;
		oifname "lan" ip daddr != @real4 counter drop comment "to_spoofed4"
		oifname "lan" ip6 daddr != @real6 meta l4proto != ipv6-icmp counter drop comment "to_spoofed6"
	}
}
`, join(real4), join(real6), x.Inside, x.Inside6)
}

var reNftCounter = regexp.MustCompile(`counter packets (\d+) bytes \d+.*comment "([a-z0-9_]+)"`)

// sprayCounters reads the counters of sprayTable by comment.
func sprayCounters(l *lab.Lab) (map[string]int, error) {
	out, err := l.Exec(context.Background(), lab.Router, "nft", "list", "table", "inet", "e2e_spray")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	m := map[string]int{}
	for _, s := range reNftCounter.FindAllStringSubmatch(string(out), -1) {
		m[s[2]], _ = strconv.Atoi(s[1])
	}
	return m, nil
}

// queueStats returns the router's NFQUEUE counters of ftpalg's queue (2121) from
// /proc/net/netfilter/nfnetlink_queue: packets waiting, dropped by the kernel (queue full),
// dropped for the socket, and the last packet id (how many were ever queued). Under
// --fail-open a full queue accepts packets uninspected without counting them; the id tells
// how many reached ftpalg.
func queueStats(l *lab.Lab) (waiting, dropped, userDropped, lastID int, err error) {
	out, err := l.Exec(context.Background(), lab.Router, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("%w: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "2121" {
			continue
		}
		v := make([]int, 8)
		for i := range v {
			v[i], _ = strconv.Atoi(f[i])
		}
		return v[2], v[5], v[6], v[7], nil
	}
	return 0, 0, 0, 0, fmt.Errorf("queue 2121 not in %q", out)
}

// eventCounts summarises events by name.
func eventCounts(evs []lab.Event) string {
	m := map[string]int{}
	for _, e := range evs {
		m[e.Name()]++
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, m[k])
	}
	return b.String()
}

// waitQuiet waits until ftpalg's packet counter stops moving (it has worked off its queue),
// at most d, and returns the last scrape.
func waitQuiet(l *lab.Lab, listen string, d time.Duration) (map[string]float64, error) {
	deadline := time.Now().Add(d)
	var last float64 = -1
	for {
		m, err := metricsOf(l, listen)
		if err != nil {
			return nil, err
		}
		n := metricSum(m, "ftpalg_packets_total")
		if n == last || time.Now().After(deadline) {
			return m, nil
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
}

// TestHostileLoad: 150,000 spoofed one-packet sessions (half SYNs, half ACKs carrying a PORT
// command) to port 21 of an outside server, from random addresses of the inside /64, then
// 150,000 from random inside IPv4 addresses, each burst as fast as the raw socket sends.
// Asserts, for each: ftpalg's VmRSS grows by less than 32 MiB; right after, the real client's
// PASV and PORT downloads through ftpalg work and are inspected (a rewrite and a pinhole_open
// for it); ftpalg is alive; no pinhole was opened for a spoofed source (log and kernel).
func TestHostileLoad(t *testing.T) {
	// Not parallel: the spray saturates both CPUs of the machine for seconds, which would
	// make the timing of the tests beside it (and the fail-open share here) a matter of luck.
	requireLab(t)
	requireFtpalg(t)
	peer := requireTool(t, "benchpeer")
	spray := requireTool(t, "spray")
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	const metricsAddr = "127.0.0.1:9122"
	d := startFtpalg(t, l, withArgs("--metrics-listen", metricsAddr))
	vs, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vs6, err := l.StartVsftpd(ctxT(t, 30*time.Second), lab.OutsideServer, x.OutsideServer6, t.TempDir(), lab.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The spray's target: benchpeer's cheap server on the outside client, apart from the
	// vsftpd the real client uses (after SNAT the IPv4 spray exhausts the router's source
	// ports toward its target).
	target4 := startBenchpeerServe(t, l, peer, netip.AddrPortFrom(x.OutsideClient, 21))
	target6 := startBenchpeerServe(t, l, peer, netip.AddrPortFrom(x.OutsideClient6, 21))
	real4 := []netip.Addr{x.RouterInside, x.Client, x.InsideServer, x.InsideGoServer}
	real6 := []netip.Addr{x.RouterInside6, x.Client6, x.InsideServer6}
	if err := l.Nft(ctxT(t, 10*time.Second), sprayTable(x, real4, real6)); err != nil {
		t.Fatal(err)
	}
	real := slices.Concat(real4, real6)

	for _, run := range []struct {
		name string
		src  netip.Prefix
		dst  netip.AddrPort
		seed int
	}{
		{name: "ipv6-one-64", src: x.Inside6, dst: target6, seed: 1},
		{name: "ipv4", src: x.Inside, dst: target4, seed: 2},
	} {
		t.Run(run.name, func(t *testing.T) {
			const n = 150000
			before, err := metricsOf(l, metricsAddr)
			if err != nil {
				t.Fatalf("metrics: %v", err)
			}
			cnt0, err := sprayCounters(l)
			if err != nil {
				t.Fatalf("counters: %v", err)
			}
			_, qd0, qu0, qid0, err := queueStats(l)
			if err != nil {
				t.Fatalf("queue stats: %v", err)
			}
			mark := d.Mark()
			runStart := time.Now()
			rss0, err := vmRSS(d.Proc.PID())
			if err != nil {
				t.Fatal(err)
			}
			stopRSS := rssSampler(d.Proc.PID())
			excl := make([]string, len(real))
			for i, a := range real {
				excl[i] = a.String()
			}
			res := l.Run(ctxT(t, 45*time.Second), lab.Client, spray, "-dst", run.dst.String(), "-src", run.src.String(),
				"-exclude", strings.Join(excl, ","), "-n", strconv.Itoa(n), "-seed", strconv.Itoa(run.seed))
			if res.Err != nil {
				stopRSS()
				t.Fatalf("spray: %v\n%s", res.Err, res.Stderr)
			}
			var sr struct {
				Sent, SYN, ACK, Errors int
				Seconds, Rate          float64
				LastErr                string `json:"last_err"`
			}
			if err := json.Unmarshal(res.Stdout, &sr); err != nil {
				stopRSS()
				t.Fatalf("spray output %q: %v", res.Stdout, err)
			}
			rssFlood, _ := vmRSS(d.Proc.PID())
			after, err := waitQuiet(l, metricsAddr, 8*time.Second)
			if err != nil {
				stopRSS()
				t.Fatalf("metrics: %v", err)
			}
			rss1, _ := vmRSS(d.Proc.PID())
			peak := stopRSS()
			cnt, _ := sprayCounters(l)
			_, qd1, qu1, qid1, _ := queueStats(l)
			fam := "4"
			if run.src.Addr().Is6() {
				fam = "6"
			}
			arrived := cnt["spoofed"+fam] - cnt0["spoofed"+fam]
			inspected := metricSum(after, "ftpalg_packets_total") - metricSum(before, "ftpalg_packets_total")
			t.Logf("spray %s -> %s: %d packets sent (%d SYN, %d ACK+PORT, %d send errors %s) in %.2fs = %.0f/s; %d reached the router; ftpalg inspected %.0f packets (both directions)",
				run.src, run.dst, sr.Sent, sr.SYN, sr.ACK, sr.Errors, sr.LastErr, sr.Seconds, sr.Rate, arrived, inspected)
			t.Logf("NFQUEUE 2121: %d packets queued to ftpalg, %d dropped by the kernel, %d for the socket (the rest of what arrived was accepted uninspected by fail-open when the queue was full)",
				qid1-qid0, qd1-qd0, qu1-qu0)
			t.Logf("ftpalg VmRSS %d KiB before, %d KiB at the end of the spray, %d KiB once quiet, peak %d KiB (growth %d KiB); sessions now %v, opened %v",
				rss0, rssFlood, rss1, peak, peak-rss0, after["ftpalg_sessions"], metricSum(after, "ftpalg_sessions_total")-metricSum(before, "ftpalg_sessions_total"))
			t.Logf("metrics that moved:\n%s", metricsDelta(before, after, "ftpalg_sessions", "ftpalg_rejections", "ftpalg_notes", "ftpalg_packets_total", "ftpalg_queue", "ftpalg_kernel_errors", "ftpalg_pinholes"))
			if sr.Sent < n*9/10 {
				t.Errorf("only %d of %d spoofed packets sent", sr.Sent, n)
			}
			if arrived < sr.Sent/2 {
				t.Errorf("only %d of %d spoofed packets reached the router: the spray did not load ftpalg", arrived, sr.Sent)
			}
			// (a) bounded memory.
			// DAEMON-BUG: failed for the IPv4 spray on main 56aecf1: the young cap (16,384
			// sessions per worker) is reached and held, at about 2.4 KiB each (VmRSS +46 to
			// +56 MiB at peak, +39 MiB once quiet); the /64 spray stays at +7 to +14 MiB
			// because the per-client limit (256 per /64) stops it first. (On f16c876 it
			// passes only because ftpalg gets through a few thousand packets, see (b).)
			if growth := peak - rss0; growth >= 32<<10 {
				t.Errorf("ftpalg VmRSS grew by %d KiB (%d -> peak %d) under %d spoofed sessions, want < 32 MiB", growth, rss0, peak, sr.Sent)
			}

			// (b) the real client right after: PASV and PORT downloads, inspected.
			// DAEMON-BUG: fails for both sprays on main f16c876 (passed on 56aecf1): a spoofed
			// ACK's LookupIn misses both Gets and falls back to findBySources, a CTA_FILTER
			// dump that walks the whole conntrack table (150,000+ entries here; such a dump
			// takes 20-60 ms, see conntrack's TestLiveFTPHelperFlowsStreams). ftpalg then
			// verdicts about 50-200 packets a second, its queue stays full (backlog 4096, the
			// rest accepted uninspected by fail-open), and the real client's control packets
			// wait behind it: curl times out (exit 28/30), no pinhole, no rewrite.
			tmark := d.Mark()
			for _, m := range []lab.Mode{lab.PASV, lab.PORT} {
				local := t.TempDir() + "/get"
				start := time.Now()
				r := l.RunClient(ctxT(t, 30*time.Second), lab.Client, lab.Curl, "", lab.Transfer{Op: lab.Get, Mode: m, Server: vs.URL(""), Local: local, Timeout: 10 * time.Second})
				if r.Err != nil {
					t.Errorf("real client's curl %s download after the spray: %v\n%s", m, r.Err, tail(r.Stderr, 800))
					continue
				}
				if err := sameFile(local, vs.SHA); err != nil {
					t.Errorf("real client's curl %s download: %v", m, err)
					continue
				}
				t.Logf("real client's curl %s download ok in %v", m, time.Since(start).Round(time.Millisecond))
			}
			fromClient := func(ev lab.Event) bool { return ev.Addr("client") == x.Client }
			tevs := d.Since(tmark)
			if got := lab.Filter(tevs, "pinhole_open", func(ev lab.Event) bool { return fromClient(ev) && ev.Str("cmd") == "227" }); len(got) == 0 {
				t.Errorf("no pinhole_open for the real client's PASV (227) after the spray: its session went uninspected")
			}
			if got := lab.Filter(tevs, "pinhole_open", func(ev lab.Event) bool { return fromClient(ev) && ev.Str("cmd") == "PORT" }); len(got) == 0 {
				t.Errorf("no pinhole_open for the real client's PORT after the spray")
			}
			if got := lab.Filter(tevs, "rewrite", fromClient); len(got) == 0 {
				t.Errorf("no rewrite of the real client's PORT after the spray (SNAT makes one)")
			} else {
				t.Logf("inspected: %s", got[0])
			}
			if limited := lab.Filter(tevs, "rejected", fromClient); len(limited) > 0 {
				t.Errorf("the real client was refused after the spray: %s", limited[0])
			}

			// (c) alive, and nothing opened for a spoofed source.
			daemonAlive(t, d)
			for _, ev := range d.Find("pinhole_open", nil) {
				if c := ev.Addr("client"); !slices.Contains(real, c) && run.src.Contains(c) {
					t.Errorf("pinhole opened for a spoofed source: %s", ev)
				}
			}
			for _, line := range strings.Split(pinholesListed(t, l), "\n") {
				f := strings.Fields(line)
				if len(f) < 4 || f[0] == "FROM" {
					continue
				}
				if m, err := netip.ParseAddrPort(f[3]); err == nil && run.src.Contains(m.Addr()) && !slices.Contains(real, m.Addr()) {
					t.Errorf("the kernel holds a pinhole of a spoofed source's session: %s", line)
				}
			}
			evs := d.Since(mark)
			runSecs := time.Since(runStart).Seconds()
			t.Logf("%d log lines during the run (%.1fs):%s", len(evs), runSecs, eventCounts(evs))
			// Session lines are rate-limited like session_open (200 a second per worker).
			// DAEMON-BUG: session_close is not: every young session evicted by the SYN flood
			// logs one (12,000-20,000 lines for the IPv4 spray on main 56aecf1).
			for _, name := range []string{"session_open", "session_close"} {
				if k, limit := len(lab.Filter(evs, name, nil)), 200*int(runSecs+1)+200; k > limit {
					t.Errorf("%d %s lines in %.1fs (bound %d): not rate-limited under a spoofed flood", k, name, runSecs, limit)
				}
			}

			if run.src.Addr().Is6() {
				// The real IPv6 client shares the attacker's /64, and ftpalg counts its per-client
				// limit by /64: say what that costs it right after the spray (not asserted).
				local := t.TempDir() + "/get6"
				m6 := d.Mark()
				r := l.RunClient(ctxT(t, 30*time.Second), lab.Client, lab.Curl, "", lab.Transfer{Op: lab.Get, Mode: lab.EPSV, Server: vs6.URL(""), Local: local, Timeout: 10 * time.Second})
				ev6 := d.Since(m6)
				pin := lab.Filter(ev6, "pinhole_open", func(ev lab.Event) bool { return ev.Addr("client") == x.Client6 })
				lim := lab.Filter(ev6, "rejected", func(ev lab.Event) bool { return ev.Str("reason") == "session_limit" })
				t.Logf("the real IPv6 client (same /64) right after: EPSV download err=%v, %d pinhole_open, %d session_limit lines", r.Err, len(pin), len(lim))
			}
		})
	}
}
