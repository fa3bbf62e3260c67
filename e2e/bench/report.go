package bench

import (
	"fmt"
	"strings"
)

// Markdown renders the report as the tables of BENCHMARKS.md: one row per measurement with the
// three setups side by side and ftpalg's ratio to the kernel helper and to plain forwarding,
// then ftpalg's own footprint.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f+"\n", args...) }
	m := r.Machine
	w("Machine: `nproc` = %d, CPU %q, kernel %s, %s. Load average (1, 5, 15 min) %s before the run, %s after.",
		m.NProc, m.CPU, m.Kernel, m.Go, m.LoadBefore, m.LoadAfter)
	w("Run: %s, %s in all.", r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Elapsed.Round(1e9))
	o := r.Options
	w("Sizes: %d command round trips of each kind in %d rounds (each percentile: the median of the rounds), %d timed data connections per mode, %s per sessions cell (%d-byte transfer each), unrelated connections from %d workers for %s × %d rounds, %d files of %d bytes in one session, bulk %d MiB × %d, %d idle sessions. The setups' labs are up together and each measurement runs on all of them back to back, in rotating order. The plain forwarding column is the floor: the same router with no FTP handling at all.",
		o.RTTCount, o.RTTRounds, o.PinholeCount, o.SessionDuration, o.TransferBytes, o.UnrelatedConc, o.UnrelatedDuration, max(o.UnrelatedRounds, 1), o.Files, o.FileBytes, o.BulkBytes>>20, o.BulkRuns, o.IdleSessions)
	w("")
	fa, kh, pl := r.Result(Ftpalg), r.Result(KernelHelper), r.Result(Plain)
	w("| measurement | ftpalg | kernel helper | plain forwarding | ftpalg / kernel | ftpalg / plain | target |")
	w("|---|---:|---:|---:|---:|---:|---|")
	row := func(name, target string, get func(*Result) (float64, bool), prec int) {
		cell := func(x *Result) (string, float64, bool) {
			if x == nil {
				return "–", 0, false
			}
			v, ok := get(x)
			if !ok {
				return "–", 0, false
			}
			return fmt.Sprintf("%.*f", prec, v), v, true
		}
		fs, fv, fok := cell(fa)
		ks, kv, kok := cell(kh)
		ps, pv, pok := cell(pl)
		ratio := func(ok bool, d float64) string {
			if !fok || !ok || d == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f", fv/d)
		}
		w("| %s | %s | %s | %s | %s | %s | %s |", name, fs, ks, ps, ratio(kok, kv), ratio(pok, pv), target)
	}
	ok := func(v float64) (float64, bool) { return v, true }
	row("PASV→227 round trip p50 (µs)", "", func(x *Result) (float64, bool) { return ok(x.RTT.PASV.P50) }, 0)
	row("PASV→227 round trip p99 (µs)", "", func(x *Result) (float64, bool) { return ok(x.RTT.PASV.P99) }, 0)
	row("PORT→200 round trip p50 (µs)", "", func(x *Result) (float64, bool) { return ok(x.RTT.PORT.P50) }, 0)
	row("PORT→200 round trip p99 (µs)", "", func(x *Result) (float64, bool) { return ok(x.RTT.PORT.P99) }, 0)
	row("EPRT→200 round trip p50 (µs)", "", func(x *Result) (float64, bool) { return x.RTT.EPRT.P50, x.RTT.EPRT.N > 0 }, 0)
	row("EPRT→200 round trip p99 (µs)", "", func(x *Result) (float64, bool) { return x.RTT.EPRT.P99, x.RTT.EPRT.N > 0 }, 0)
	row("round trip p50, geometric mean of PASV, PORT, EPRT (µs)", "≤ 1.5× kernel", func(x *Result) (float64, bool) {
		g := x.RTT.GeoMeanP50()
		return g, g > 0
	}, 0)
	for _, mode := range []string{"pasv", "port"} {
		for _, c := range o.Concurrency {
			row(fmt.Sprintf("sessions/s, %s, %d concurrent", mode, c), "≥ 0.95× kernel", func(x *Result) (float64, bool) {
				for _, s := range x.Sessions {
					if s.Mode == mode && s.Concurrency == c {
						return s.PerSec, true
					}
				}
				return 0, false
			}, 0)
		}
	}
	row("ftpalg CPU per FTP session (µs; utime+stime over the sessions cells / sessions)", "≤ 300 µs", func(x *Result) (float64, bool) {
		return x.SessionCPUus, isFtpalg(x.Setup) && x.SessionCPUus > 0
	}, 0)
	row(fmt.Sprintf("unrelated TCP connections/s (port %d, %d workers)", UnrelatedPort, o.UnrelatedConc), "≥ 0.98× kernel", func(x *Result) (float64, bool) {
		return x.Unrelated.PerSec, x.Unrelated.OK > 0
	}, 0)
	row("unrelated connection, connect to close p50 (µs)", "", func(x *Result) (float64, bool) {
		return x.Unrelated.Conn.P50, x.Unrelated.Conn.N > 0
	}, 0)
	row("ftpalg CPU per 1,000 unrelated connections (ms)", "≤ 1 ms", func(x *Result) (float64, bool) {
		return x.Unrelated.CPUPer1000Conn, isFtpalg(x.Setup) && x.Unrelated.OK > 0
	}, 2)
	row(fmt.Sprintf("%d files in one session, one after the other: total (ms)", o.Files), "", func(x *Result) (float64, bool) {
		return x.Files.Seconds * 1e3, x.Files.Files > 0
	}, 0)
	row(fmt.Sprintf("%d files in one session: per file (PASV, connect, RETR, 226) p50 (µs)", o.Files), "", func(x *Result) (float64, bool) {
		return x.Files.PerFile.P50, x.Files.PerFile.N > 0
	}, 0)
	row("bulk passive download (MB/s, median)", "≥ 0.97× kernel", func(x *Result) (float64, bool) { return x.Bulk.Median, x.Bulk.Median > 0 }, 0)
	row("PASV: 227 read → data connected p50 (µs)", "", func(x *Result) (float64, bool) { return ok(x.PinPASV.Connect.P50) }, 0)
	row("PASV: 227 read → data connected p99 (µs)", "", func(x *Result) (float64, bool) { return ok(x.PinPASV.Connect.P99) }, 0)
	row("PASV sent → data connected p99 (µs)", "", func(x *Result) (float64, bool) { return ok(x.PinPASV.Total.P99) }, 0)
	row("PORT sent → server's data connection p50 (µs)", "", func(x *Result) (float64, bool) { return ok(x.PinPORT.Total.P50) }, 0)
	row("PORT sent → server's data connection p99 (µs)", "", func(x *Result) (float64, bool) { return ok(x.PinPORT.Total.P99) }, 0)
	w("| failed sessions / connections | %s | %s | %s | | | 0 |", failures(fa), failures(kh), failures(pl))
	w("")
	var rounds []string
	for _, x := range []*Result{fa, kh, pl} {
		if x == nil || len(x.Unrelated.PerSecRound) == 0 {
			continue
		}
		var v []string
		for _, f := range x.Unrelated.PerSecRound {
			v = append(v, fmt.Sprintf("%.0f", f))
		}
		rounds = append(rounds, fmt.Sprintf("%s %s", x.Setup, strings.Join(v, ", ")))
	}
	if len(rounds) > 0 {
		w("Unrelated connections/s per round (the spread is the noise on the ratio): %s.", strings.Join(rounds, "; "))
		w("")
	}
	if fa != nil && (fa.Idle != nil || len(fa.CPU) > 0) {
		w("ftpalg's own cost (`/proc/<pid>/status`, `/proc/<pid>/stat` utime+stime at 100 Hz, packet counts from `ftpalg_packets_total`):")
		w("")
		w("| measurement | value | target |")
		w("|---|---:|---|")
		if i := fa.Idle; i != nil {
			w("| idle control sessions held (opened / tracked by ftpalg / failed) | %d / %.0f / %d | 0 failed |", i.Sessions-i.Failed, i.Tracked, i.Failed)
			w("| VmRSS, fresh daemon | %.1f MB | |", float64(i.RSSBaseKB)/1024)
			w("| VmRSS with the sessions held | %.1f MB | ≤ 30 MB at 10,000 |", float64(i.RSSKB)/1024)
			w("| VmHWM (peak) | %.1f MB | |", float64(i.HWMKB)/1024)
			w("| CPU to set them up (%.0f control packets, opened in %.1f s) | %.2f s | |", i.PacketsQueued, i.OpenSeconds, i.CPUSeconds)
			w("| CPU per 1,000 control packets (session setup: SYN, SYN-ACK, ACK, 220, ACK) | %.1f ms | |", i.CPUPer1000Pkts)
		}
		for _, c := range fa.CPU {
			w("| CPU per 1,000 control packets (%s: %.0f packets, %.2f s) | %.1f ms | |", c.Phase, c.Packets, c.CPUSeconds, c.CPUPer1000Pkts)
			w("| context switches of ftpalg's threads per control packet (%s: %.0f switches) | %.2f | |", c.Phase, c.Switches, c.SwitchesPerPkt)
		}
		if u := fa.Unrelated; u.OK > 0 {
			w("| CPU over the unrelated connections (%d connections, utime+stime %.2f s) | %.2f ms per 1,000 | ≤ 1 ms |", u.OK, u.CPUSeconds, u.CPUPer1000Conn)
			w("| the same by the scheduler's clock (`/proc/<pid>/task/*/schedstat`, ns; %.4f s) | %.3f ms per 1,000 | |", u.RunSeconds, u.RunPer1000Conn)
		}
		w("")
	}
	var errs []string
	for _, x := range r.Results {
		for _, e := range x.Errors {
			errs = append(errs, fmt.Sprintf("%s: %s", x.Setup, e))
		}
		for _, s := range x.Sessions {
			for _, e := range s.Errors {
				errs = append(errs, fmt.Sprintf("%s sessions %s c=%d: %s", x.Setup, s.Mode, s.Concurrency, e))
			}
		}
		for _, e := range x.Unrelated.Errors {
			errs = append(errs, fmt.Sprintf("%s unrelated: %s", x.Setup, e))
		}
		if x.Files.Error != "" {
			errs = append(errs, fmt.Sprintf("%s files: %s", x.Setup, x.Files.Error))
		}
	}
	if len(errs) > 0 {
		w("Errors:")
		w("")
		for _, e := range errs {
			w("- %s", e)
		}
		w("")
	}
	return b.String()
}

func failures(x *Result) string {
	if x == nil {
		return "–"
	}
	return fmt.Sprint(x.Failures())
}

// Summary is one line per setup with the headline figures: the A/B view of runs with the
// ftpalg-b setup (which the Markdown tables do not show).
func (r *Report) Summary() string {
	var b strings.Builder
	b.WriteString("\n| setup | PASV p50 (µs) | PORT p50 (µs) | EPRT p50 (µs) | geo. mean p50 (µs) | PASV p99 (µs) | PORT p99 (µs) | sessions/s pasv c=1,16,256 | sessions/s port c=1,16,256 | CPU per session (µs) | unrelated conn/s | CPU per 1,000 unrelated (ms) | files total (ms) | failures |\n|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Results {
		var pasv, port []string
		for _, s := range x.Sessions {
			v := fmt.Sprintf("%.0f", s.PerSec)
			if s.Mode == "pasv" {
				pasv = append(pasv, v)
			} else {
				port = append(port, v)
			}
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %s | %s | %.0f | %.0f | %.2f | %.0f | %d |\n", x.Setup, x.RTT.PASV.P50, x.RTT.PORT.P50,
			x.RTT.EPRT.P50, x.RTT.GeoMeanP50(), x.RTT.PASV.P99, x.RTT.PORT.P99, strings.Join(pasv, ", "), strings.Join(port, ", "),
			x.SessionCPUus, x.Unrelated.PerSec, x.Unrelated.CPUPer1000Conn, x.Files.Seconds*1e3, x.Failures())
	}
	return b.String()
}
