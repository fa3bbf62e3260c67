// Command bench runs ftpalg's end-to-end benchmark (package e2e/bench): ftpalg, the kernel FTP
// helper and plain forwarding measured side by side in one run in the namespace lab, and
// prints the Markdown table of BENCHMARKS.md. It needs root (network namespaces).
//
//	go run ./e2e/cmd/bench -ftpalg bin/ftpalg [-short] [-setups ftpalg,kernel-helper,plain] [-json FILE]
//	    [-idle N] [-unrelated D] [-unrelated-c C] [-files N]
//
// It exits 1 when any transfer or connection failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/e2e/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	ftpalg := flag.String("ftpalg", "bin/ftpalg", "ftpalg binary")
	peer := flag.String("peer", "", "benchpeer binary (built from e2e/cmd/benchpeer when empty)")
	short := flag.Bool("short", false, "the short mode (CI): every measurement with small counts")
	setups := flag.String("setups", "", "comma-separated subset of ftpalg,kernel-helper,plain")
	jsonOut := flag.String("json", "", "also write the full report as JSON to this file")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	logDir := flag.String("log-dir", "", "keep ftpalg's JSON logs in this directory")
	ftpalgArgs := flag.String("ftpalg-args", "", "extra ftpalg arguments (space-separated) in the ftpalg setup")
	ftpalgB := flag.String("ftpalg-b", "", "ftpalg binary of the ftpalg-b setup (A/B runs; default -ftpalg)")
	ftpalgBArgs := flag.String("ftpalg-b-args", "", "extra ftpalg arguments (space-separated) in the ftpalg-b setup")
	idle := flag.Int("idle", -1, "idle sessions for the footprint measurement (-1: the mode's default; 0: skip)")
	unrelated := flag.Duration("unrelated", 0, "duration of each round of unrelated connections (0: the mode's default)")
	unrelatedConc := flag.Int("unrelated-c", 0, "workers opening unrelated connections (0: the mode's default)")
	files := flag.Int("files", 0, "small files fetched in the one-session measurement (0: the mode's default)")
	flag.Parse()

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (it creates network namespaces, veth links and nftables rules)")
		return 2
	}
	opt := bench.Full()
	if *short {
		opt = bench.Short()
	}
	opt.Ftpalg = *ftpalg
	opt.LogDir = *logDir
	opt.FtpalgArgs = strings.Fields(*ftpalgArgs)
	opt.FtpalgB = *ftpalgB
	opt.FtpalgBArgs = strings.Fields(*ftpalgBArgs)
	if *idle >= 0 {
		opt.IdleSessions = *idle
	}
	if *unrelated > 0 {
		opt.UnrelatedDuration = *unrelated
	}
	if *unrelatedConc > 0 {
		opt.UnrelatedConc = *unrelatedConc
	}
	if *files > 0 {
		opt.Files = *files
	}
	if !*quiet {
		opt.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
		}
	}
	if *setups != "" {
		for _, s := range strings.Split(*setups, ",") {
			opt.Setups = append(opt.Setups, bench.Setup(strings.TrimSpace(s)))
		}
	}
	if *peer == "" {
		dir, err := os.MkdirTemp("", "ftpalg-bench-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		if *peer, err = bench.Build(dir, "benchpeer", "./e2e/cmd/benchpeer"); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}
	opt.Peer = *peer

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, opt)
	if rep != nil {
		fmt.Print(rep.Markdown())
		fmt.Print(rep.Summary())
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(*jsonOut, b, 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "bench:", werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if n := rep.Failures(); n > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d failures\n", n)
		return 1
	}
	return 0
}
