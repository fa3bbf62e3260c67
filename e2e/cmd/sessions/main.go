// Command sessions is the e2e lab's load generator for FTP control connections, run as its
// own process inside a lab namespace.
//
//	sessions serve -listen ADDR:21
//	    a cheap FTP look-alike: greets with 220 and answers every line with 200 (500 for
//	    lines whose verb is not a known one), holding any number of connections
//	sessions open -server ADDR:21 -n 10000 [-hold 30s] [-src A,B,...]
//	    opens n control connections (from the -src addresses in turn), reads each greeting, prints "ready <opened> <failed>
//	    <seconds>", keeps them open until -hold passes or stdin closes, then closes them
//	sessions flood -server ADDR:21 -rate 10000 -duration 3s
//	    one control connection sending PORT commands announcing its own address (ports
//	    1024-65535 in turn) at the given rate, draining the replies; prints
//	    "sent <n> replies <n> seconds <s>"
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sessions serve|open|flood [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "open":
		err = open(os.Args[2:])
	case "flood":
		err = flood(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sessions:", err)
		os.Exit(1)
	}
}

// raiseNoFile lifts the soft descriptor limit to the hard one.
func raiseNoFile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "address:port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseNoFile()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if _, err := io.WriteString(c, "220 sessions ready\r\n"); err != nil {
				return
			}
			r := bufio.NewReader(c)
			w := bufio.NewWriter(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				verb, _, _ := strings.Cut(strings.TrimSpace(line), " ")
				reply := "200 ok\r\n"
				switch strings.ToUpper(verb) {
				case "PORT", "EPRT", "NOOP", "USER", "TYPE":
				case "QUIT":
					_, _ = io.WriteString(w, "221 bye\r\n")
					w.Flush()
					return
				default:
					reply = "500 unknown\r\n"
				}
				_, _ = io.WriteString(w, reply)
				// Flush only when no more input is buffered: pipelined floods get batched replies.
				if r.Buffered() == 0 {
					if err := w.Flush(); err != nil {
						return
					}
				}
			}
		}()
	}
}

func open(args []string) error {
	fs := flag.NewFlagSet("open", flag.ContinueOnError)
	server := fs.String("server", "", "address:port")
	n := fs.Int("n", 10000, "connections")
	hold := fs.Duration("hold", 30*time.Second, "how long to keep them open (stdin closing ends it earlier)")
	par := fs.Int("parallel", 256, "concurrent dials")
	srcs := fs.String("src", "", "comma-separated source addresses, used in turn (default: any)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	raiseNoFile()
	var dialers []*net.Dialer
	for _, a := range strings.Split(*srcs, ",") {
		if a == "" {
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("-src: %w", err)
		}
		dialers = append(dialers, &net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))})
	}
	if len(dialers) == 0 {
		dialers = append(dialers, &net.Dialer{Timeout: 10 * time.Second})
	}
	start := time.Now()
	conns := make([]net.Conn, *n)
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	sem := make(chan struct{}, *par)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dialers[i%len(dialers)].Dial("tcp", *server)
			if err == nil {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 64)
				var k int
				k, err = c.Read(b)
				if err == nil && !strings.HasPrefix(string(b[:k]), "220") {
					err = fmt.Errorf("greeting %q", b[:k])
				}
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	opened := *n - int(failed.Load())
	fmt.Printf("ready %d %d %.2f\n", opened, failed.Load(), time.Since(start).Seconds())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(os.Stderr, "first error: %v\n", e)
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	// A last NOOP on every connection: all still answered?
	var alive atomic.Int64
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, "NOOP\r\n"); err == nil {
				b := make([]byte, 64)
				if k, err := c.Read(b); err == nil && strings.HasPrefix(string(b[:k]), "200") {
					alive.Add(1)
				}
			}
			c.Close()
			conns[i] = nil
		}()
	}
	wg.Wait()
	fmt.Printf("alive %d\n", alive.Load())
	return nil
}

func flood(args []string) error {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	server := fs.String("server", "", "address:port")
	rate := fs.Int("rate", 10000, "PORT commands per second")
	dur := fs.Duration("duration", 3*time.Second, "how long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", *server, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	self := netip.MustParseAddrPort(c.LocalAddr().String()).Addr()
	if !self.Is4() {
		return fmt.Errorf("flood needs IPv4 (PORT), got %s", self)
	}
	a := self.As4()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	var replies atomic.Int64
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			replies.Add(1)
		}
	}()
	// Batches every millisecond keep the rate without a syscall per command.
	const tick = time.Millisecond
	perTick := max(*rate/1000, 1)
	start := time.Now()
	sent := 0
	port := 1024
	var buf []byte
	for time.Since(start) < *dur {
		want := int(time.Since(start)/tick+1) * perTick
		buf = buf[:0]
		for sent < want {
			buf = fmt.Appendf(buf, "PORT %d,%d,%d,%d,%d,%d\r\n", a[0], a[1], a[2], a[3], port>>8, port&0xff)
			sent++
			if port++; port > 65535 {
				port = 1024
			}
		}
		if len(buf) > 0 {
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(buf); err != nil {
				return fmt.Errorf("after %d commands: %w", sent, err)
			}
		}
		time.Sleep(tick)
	}
	elapsed := time.Since(start)
	// Let the replies drain.
	deadline := time.Now().Add(5 * time.Second)
	for replies.Load() < int64(sent) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("sent %d replies %d seconds %.2f\n", sent, replies.Load(), elapsed.Seconds())
	return nil
}
