// Command demo shows ftpalg at work: it builds the namespace lab (a NAT router with a
// default-deny firewall between an inside client and an outside vsftpd), runs ftpalg on the
// router, moves files with curl in passive and active mode, prints ftpalg's pinhole lines and
// a summary, and tears everything down, also on Ctrl-C. It exits 0 only if every transfer
// arrived intact.
//
//	go run ./e2e/cmd/demo -ftpalg bin/ftpalg     (as root; `make demo` does this)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

func main() {
	os.Exit(run())
}

type row struct {
	mode     lab.Mode
	op       lab.Op
	bytes    int64
	match    bool
	pinholes []lab.Event
	dur      time.Duration
	err      error
}

func run() int {
	bin := flag.String("ftpalg", "bin/ftpalg", "path of the ftpalg binary")
	verbose := flag.Bool("v", false, "print every ftpalg log line")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces and nftables rules)")
		return 1
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	if _, err := os.Stat(abs); err != nil {
		fmt.Fprintf(os.Stderr, "demo: ftpalg binary: %v (run make build)\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the demo the hard way
	}()

	start := time.Now()
	logf := func(f string, args ...any) { fmt.Printf("demo: "+f+"\n", args...) }
	l, err := lab.New(ctx, lab.Config{Addrs: lab.Grow(), Logf: logf})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: lab:", err)
		return 1
	}
	defer func() {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: teardown:", err)
		}
		logf("lab torn down")
	}()
	x := l.Addrs
	work, err := os.MkdirTemp("", "ftpalg-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer os.RemoveAll(work)

	srv, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer, filepath.Join(work, "vsftpd"), lab.VsftpdOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	logf("vsftpd on %s (outside), client %s (inside, SNAT to %s), firewall: forward policy drop + ct state established,related accept", x.OutsideServer, x.Client, x.RouterPublic)
	d, err := l.StartFtpalg(ctx, abs, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: ftpalg:", err)
		return 1
	}
	logf("ftpalg running in the router: %s %s", abs, strings.Join(d.Args, " "))

	var rows []row
	for _, t := range []struct {
		mode lab.Mode
		op   lab.Op
	}{{lab.PASV, lab.Get}, {lab.PASV, lab.Put}, {lab.PORT, lab.Get}, {lab.PORT, lab.Put}} {
		if ctx.Err() != nil {
			break
		}
		rows = append(rows, transfer(ctx, l, d, srv, work, t.mode, t.op))
	}
	stopErr := d.Stop()
	if stopErr == nil {
		// The table stays across restarts; the demo removes it as an operator would.
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		stopErr = l.FtpalgCleanup(cctx, abs)
		cancel()
	}

	if *verbose {
		fmt.Println("\nftpalg log:")
		for _, line := range d.Lines() {
			fmt.Println("  " + line)
		}
	}
	fmt.Println("\nftpalg pinhole lines:")
	for _, r := range rows {
		for _, ev := range r.pinholes {
			fmt.Println("  " + ev.String())
		}
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MODE\tOP\tBYTES\tSHA256\tPINHOLE LINES\tTIME\tRESULT")
	ok := stopErr == nil && ctx.Err() == nil && len(rows) == 4
	for _, r := range rows {
		res := "ok"
		if r.err != nil || !r.match {
			res = fmt.Sprintf("FAIL %v", r.err)
			ok = false
		}
		match := "match"
		if !r.match {
			match = "MISMATCH"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%v\t%s\n", strings.ToUpper(string(r.mode)), r.op, r.bytes, match, len(r.pinholes), r.dur.Round(time.Millisecond), res)
	}
	tw.Flush()
	if stopErr != nil {
		fmt.Println("ftpalg shutdown:", stopErr)
	}
	if ctx.Err() != nil {
		fmt.Println("interrupted")
	}
	fmt.Printf("total %v: %s\n", time.Since(start).Round(time.Millisecond), map[bool]string{true: "PASS", false: "FAIL"}[ok])
	if !ok {
		return 1
	}
	return 0
}

func transfer(ctx context.Context, l *lab.Lab, d *lab.Daemon, srv *lab.FTPServer, work string, mode lab.Mode, op lab.Op) row {
	r := row{mode: mode, op: op}
	local := filepath.Join(work, fmt.Sprintf("%s-%s.bin", mode, op))
	remote := fmt.Sprintf("demo-%s.bin", mode)
	var want string
	if op == lab.Put {
		var err error
		if want, err = lab.RandomFile(local, lab.FileSize); err != nil {
			r.err = err
			return r
		}
	} else {
		want = srv.SHA
	}
	mark := d.Mark()
	tr := lab.Transfer{Op: op, Mode: mode, Server: srv.URL(""), Local: local, Remote: remote, Timeout: 20 * time.Second}
	res := l.RunClient(ctx, lab.Client, lab.Curl, "", tr)
	r.dur = res.Duration
	if res.Err != nil {
		r.err = fmt.Errorf("%w: %s", res.Err, strings.TrimSpace(lastLine(res.Stderr)))
	}
	check := local
	if op == lab.Put {
		check = srv.Incoming(remote)
	}
	got, n, err := lab.FileSHA(check)
	if err != nil && r.err == nil {
		r.err = err
	}
	r.bytes, r.match = n, err == nil && got == want
	// pinhole_used comes from conntrack events, a moment after the transfer started.
	time.Sleep(200 * time.Millisecond)
	r.pinholes = lab.Filter(d.Since(mark), "", func(ev lab.Event) bool {
		return strings.HasPrefix(ev.Name(), "pinhole_") || ev.Name() == "rewrite" || ev.Name() == "rejected"
	})
	return r
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
