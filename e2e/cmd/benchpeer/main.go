// Command benchpeer is the load generator and the cheap FTP server of the benchmark
// (e2e/bench). It runs as its own process under `ip netns exec`, because a socket belongs to
// the network namespace of the thread that creates it.
//
//	benchpeer serve     -listen ADDR:21 [-echo ADDR:8080]
//	benchpeer rtt       -server ADDR:21 -n N
//	benchpeer sessions  -server ADDR:21 -c C -duration D -mode pasv|port -size BYTES
//	benchpeer pinhole   -server ADDR:21 -n N -mode pasv|port
//	benchpeer bulk      -server ADDR:21 -size BYTES -runs R
//	benchpeer files     -server ADDR:21 -n N -size BYTES (one session, N passive RETRs in turn)
//	benchpeer unrelated -server ADDR:8080 -c C -duration D -from IP,IP,... (short TCP connections, no FTP)
//	benchpeer idle      -server ADDR:21 -n N -from IP,IP,... (holds the sessions until SIGTERM)
//
// The server speaks just enough FTP for the benchmark: USER, PASS, TYPE, NOOP, PASV, EPSV,
// PORT, EPRT, RETR and QUIT. RETR of any name ending in "-N" sends N zero bytes; nothing touches a
// disk. With -echo it also runs a non-FTP service: each connection's first bytes are sent back,
// and the server closes once the client has (the client closes first, so TIME_WAIT stays on the
// client's many addresses). Each goroutine of a session holds a small buffer only, so 10,000 idle sessions are
// cheap (vsftpd forks a process per session).
//
// Every client subcommand writes one JSON object to stdout.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchpeer serve|rtt|sessions|pinhole|bulk|files|unrelated|idle|flood [flags]")
		os.Exit(2)
	}
	raiseNoFile()
	cmds := map[string]func([]string) (any, error){
		"rtt":       cmdRTT,
		"sessions":  cmdSessions,
		"pinhole":   cmdPinhole,
		"bulk":      cmdBulk,
		"files":     cmdFiles,
		"unrelated": cmdUnrelated,
		"idle":      cmdIdle,
		"flood":     cmdFlood,
	}
	if os.Args[1] == "serve" {
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "benchpeer serve:", err)
			os.Exit(1)
		}
		return
	}
	fn, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "benchpeer: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	res, err := fn(os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchpeer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}

// raiseNoFile lifts the open-files limit as far as the process may: 10,000 sessions need
// 10,000 descriptors on each side. (Go raises the soft limit to the hard one by itself; as
// root the hard limit can be raised too.)
func raiseNoFile() {
	want := uint64(65536)
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return
	}
	if r.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return
		}
	}
	r.Cur = r.Max
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}

const opTimeout = 10 * time.Second

// ---- server ----

var zeros = make([]byte, 256<<10)

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "", "listen address (addr:port)")
	echo := fs.String("echo", "", "also run the non-FTP echo service on this address (addr:port)")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	var eln net.Listener
	if *echo != "" {
		if eln, err = net.Listen("tcp", *echo); err != nil {
			ln.Close()
			return fmt.Errorf("listen %s: %w", *echo, err)
		}
		go acceptLoop(eln, serveEcho)
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-ch
		ln.Close()
		if eln != nil {
			eln.Close()
		}
	}()
	return acceptLoop(ln, serveConn)
}

// acceptLoop serves every connection of ln in a goroutine of its own until ln is closed.
func acceptLoop(ln net.Listener, serve func(net.Conn)) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: wait a little, as net/http does.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serve(c)
	}
}

// serveEcho is the non-FTP service: it sends back what one read returns, then waits for the
// client to close and closes too.
func serveEcho(c net.Conn) {
	defer c.Close()
	var buf [64]byte
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	n, err := c.Read(buf[:])
	if err != nil {
		return
	}
	if _, err := c.Write(buf[:n]); err != nil {
		return
	}
	for {
		if _, err := c.Read(buf[:]); err != nil {
			return
		}
	}
}

type srvSession struct {
	c      net.Conn
	local  netip.Addr
	ln     net.Listener   // PASV/EPSV listener, nil otherwise
	active netip.AddrPort // PORT target, invalid otherwise
}

func serveConn(c net.Conn) {
	defer c.Close()
	s := &srvSession{c: c}
	if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
		s.local = ap.Addr().Unmap()
	}
	defer s.closeData()
	r := bufio.NewReaderSize(c, 128)
	if !s.reply("220 benchpeer ready") {
		return
	}
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		cmd, arg, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
		var ok bool
		switch strings.ToUpper(cmd) {
		case "USER":
			ok = s.reply("331 any password")
		case "PASS":
			ok = s.reply("230 logged in")
		case "TYPE", "NOOP", "MODE", "STRU":
			ok = s.reply("200 ok")
		case "PASV", "EPSV":
			ok = s.passive(strings.ToUpper(cmd) == "EPSV")
		case "PORT":
			ok = s.port(arg)
		case "EPRT":
			ok = s.eprt(arg)
		case "RETR":
			ok = s.retr(arg)
		case "QUIT":
			s.reply("221 bye")
			return
		default:
			ok = s.reply("502 not implemented")
		}
		if !ok {
			return
		}
	}
}

func (s *srvSession) reply(text string) bool {
	_, err := io.WriteString(s.c, text+"\r\n")
	return err == nil
}

func (s *srvSession) closeData() {
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	s.active = netip.AddrPort{}
}

func (s *srvSession) passive(epsv bool) bool {
	s.closeData()
	ln, err := net.Listen("tcp", netip.AddrPortFrom(s.local, 0).String())
	if err != nil {
		return s.reply("425 cannot listen")
	}
	s.ln = ln
	port := ln.Addr().(*net.TCPAddr).Port
	if epsv {
		return s.reply(fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", port))
	}
	if !s.local.Is4() {
		return s.reply("522 use EPSV")
	}
	a := s.local.As4()
	return s.reply(fmt.Sprintf("227 Entering Passive Mode (%d,%d,%d,%d,%d,%d).", a[0], a[1], a[2], a[3], port>>8, port&0xff))
}

func (s *srvSession) port(arg string) bool {
	s.closeData()
	ap, err := parsePORT(arg)
	if err != nil {
		return s.reply("501 bad PORT")
	}
	s.active = ap
	return s.reply("200 PORT ok")
}

func (s *srvSession) eprt(arg string) bool {
	s.closeData()
	ap, err := parseEPRT(arg)
	if err != nil {
		return s.reply("501 bad EPRT")
	}
	s.active = ap
	return s.reply("200 EPRT ok")
}

// parseEPRT parses RFC 2428's |proto|addr|port| (any delimiter).
func parseEPRT(arg string) (netip.AddrPort, error) {
	arg = strings.TrimSpace(arg)
	if len(arg) < 2 {
		return netip.AddrPort{}, errors.New("too short")
	}
	f := strings.Split(arg[1:], arg[:1])
	if len(f) != 4 || f[3] != "" {
		return netip.AddrPort{}, errors.New("want |proto|addr|port|")
	}
	a, err := netip.ParseAddr(f[1])
	if err != nil {
		return netip.AddrPort{}, err
	}
	if (f[0] == "1") != a.Is4() || (f[0] != "1" && f[0] != "2") {
		return netip.AddrPort{}, errors.New("protocol does not match the address")
	}
	p, err := strconv.ParseUint(f[2], 10, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, uint16(p)), nil
}

func parsePORT(arg string) (netip.AddrPort, error) {
	f := strings.Split(strings.TrimSpace(arg), ",")
	if len(f) != 6 {
		return netip.AddrPort{}, errors.New("want 6 numbers")
	}
	var n [6]byte
	for i, x := range f {
		v, err := strconv.ParseUint(x, 10, 8)
		if err != nil {
			return netip.AddrPort{}, err
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5])), nil
}

func (s *srvSession) retr(name string) bool {
	i := strings.LastIndexByte(name, '-')
	size, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil || size < 0 {
		return s.reply("550 no such file")
	}
	var dc net.Conn
	switch {
	case s.ln != nil:
		_ = s.ln.(*net.TCPListener).SetDeadline(time.Now().Add(opTimeout))
		if !s.reply("150 opening data connection") {
			return false
		}
		dc, err = s.ln.Accept()
	case s.active.IsValid():
		if !s.reply("150 opening data connection") {
			return false
		}
		d := net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: s.local.AsSlice()}}
		dc, err = d.Dial("tcp", s.active.String())
	default:
		return s.reply("425 use PASV or PORT first")
	}
	s.closeData()
	if err != nil {
		return s.reply("425 cannot open data connection")
	}
	for size > 0 && err == nil {
		n := int64(len(zeros))
		if size < n {
			n = size
		}
		_, err = dc.Write(zeros[:n])
		size -= n
	}
	dc.Close()
	if err != nil {
		return s.reply("426 transfer aborted")
	}
	return s.reply("226 transfer complete")
}

// ---- client ----

type ctl struct {
	c     net.Conn
	r     *bufio.Reader
	local netip.Addr
}

func dialCtl(server string, from netip.Addr) (*ctl, error) {
	d := net.Dialer{Timeout: opTimeout}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	c, err := d.Dial("tcp", server)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", server, err)
	}
	_ = c.(*net.TCPConn).SetNoDelay(true)
	k := &ctl{c: c, r: bufio.NewReaderSize(c, 256)}
	if ap, err := netip.ParseAddrPort(c.LocalAddr().String()); err == nil {
		k.local = ap.Addr().Unmap()
	}
	if _, _, err := k.read("220"); err != nil {
		c.Close()
		return nil, err
	}
	return k, nil
}

func (k *ctl) login() error {
	for _, x := range [][2]string{{"USER anonymous", "331"}, {"PASS bench@", "230"}, {"TYPE I", "200"}} {
		if _, err := k.cmd(x[0], x[1]); err != nil {
			return err
		}
	}
	return nil
}

// read reads one reply (the last line of a multi-line one) and checks its code.
func (k *ctl) read(want string) (string, time.Time, error) {
	_ = k.c.SetReadDeadline(time.Now().Add(opTimeout))
	for {
		line, err := k.r.ReadString('\n')
		if err != nil {
			return "", time.Time{}, fmt.Errorf("read reply (want %s): %w", want, err)
		}
		if len(line) >= 4 && line[3] == ' ' {
			if line[:3] != want {
				return line, time.Now(), fmt.Errorf("got reply %q, want %s", strings.TrimSpace(line), want)
			}
			return line, time.Now(), nil
		}
	}
}

func (k *ctl) send(cmd string) error {
	_ = k.c.SetWriteDeadline(time.Now().Add(opTimeout))
	_, err := io.WriteString(k.c, cmd+"\r\n")
	if err != nil {
		return fmt.Errorf("send %s: %w", strings.Fields(cmd)[0], err)
	}
	return nil
}

func (k *ctl) cmd(cmd, want string) (string, error) {
	if err := k.send(cmd); err != nil {
		return "", err
	}
	line, _, err := k.read(want)
	return line, err
}

// quit sends QUIT and waits for the server to close first, so that TIME_WAIT stays on the
// server's side and the client never runs out of ports.
func (k *ctl) quit() error {
	defer k.c.Close()
	if _, err := k.cmd("QUIT", "221"); err != nil {
		return err
	}
	_ = k.c.SetReadDeadline(time.Now().Add(opTimeout))
	_, _ = io.Copy(io.Discard, k.r)
	return nil
}

func parse227(line string) (netip.AddrPort, error) {
	i, j := strings.IndexByte(line, '('), strings.IndexByte(line, ')')
	if i < 0 || j < i {
		return netip.AddrPort{}, fmt.Errorf("bad 227 %q", strings.TrimSpace(line))
	}
	return parsePORT(line[i+1 : j])
}

func portArg(ap netip.AddrPort) string {
	a := ap.Addr().As4()
	return fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], ap.Port()>>8, ap.Port()&0xff)
}

func eprtArg(ap netip.AddrPort) string {
	proto := 1
	if ap.Addr().Is6() {
		proto = 2
	}
	return fmt.Sprintf("EPRT |%d|%s|%d|", proto, ap.Addr(), ap.Port())
}

func dialData(ap netip.AddrPort, from netip.Addr) (net.Conn, error) {
	d := net.Dialer{Timeout: opTimeout}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	c, err := d.Dial("tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("data dial %s: %w", ap, err)
	}
	return c, nil
}

// Lat is a latency distribution in microseconds.
type Lat struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	Max float64 `json:"max_us"`
}

func lat(d []time.Duration) Lat {
	if len(d) == 0 {
		return Lat{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		i = max(0, min(i, len(s)-1))
		return float64(s[i].Nanoseconds()) / 1e3
	}
	return Lat{N: len(s), P50: q(0.50), P99: q(0.99), Max: float64(s[len(s)-1].Nanoseconds()) / 1e3}
}

// RTTResult is the output of rtt.
type RTTResult struct {
	PASV Lat `json:"pasv"`
	PORT Lat `json:"port"`
	EPRT Lat `json:"eprt"`
}

func cmdRTT(args []string) (any, error) {
	fs := flag.NewFlagSet("rtt", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	n := fs.Int("n", 1000, "round trips of each command")
	warm := fs.Int("warmup", 50, "round trips not counted")
	_ = fs.Parse(args)
	k, err := dialCtl(*server, netip.Addr{})
	if err != nil {
		return nil, err
	}
	if err := k.login(); err != nil {
		return nil, err
	}
	var pasv, port, eprt []time.Duration
	for i := 0; i < *warm+*n; i++ {
		t0 := time.Now()
		if err := k.send("PASV"); err != nil {
			return nil, err
		}
		_, t1, err := k.read("227")
		if err != nil {
			return nil, err
		}
		t2 := time.Now()
		if err := k.send(portArg(netip.AddrPortFrom(k.local, uint16(20000+i%40000)))); err != nil {
			return nil, err
		}
		_, t3, err := k.read("200")
		if err != nil {
			return nil, err
		}
		t4 := time.Now()
		if err := k.send(eprtArg(netip.AddrPortFrom(k.local, uint16(20000+(i+20000)%40000)))); err != nil {
			return nil, err
		}
		_, t5, err := k.read("200")
		if err != nil {
			return nil, err
		}
		if i >= *warm {
			pasv = append(pasv, t1.Sub(t0))
			port = append(port, t3.Sub(t2))
			eprt = append(eprt, t5.Sub(t4))
		}
	}
	if err := k.quit(); err != nil {
		return nil, err
	}
	return RTTResult{PASV: lat(pasv), PORT: lat(port), EPRT: lat(eprt)}, nil
}

// one runs one session with one transfer of size bytes, from local address from (any when
// invalid).
func one(server string, from netip.Addr, active bool, size int64) error {
	k, err := dialCtl(server, from)
	if err != nil {
		return err
	}
	defer k.c.Close()
	if err := k.login(); err != nil {
		return err
	}
	var dc net.Conn
	if active {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(k.local, 0).String())
		if err != nil {
			return err
		}
		defer ln.Close()
		ap, _ := netip.ParseAddrPort(ln.Addr().String())
		if _, err := k.cmd(portArg(ap), "200"); err != nil {
			return err
		}
		if _, err := k.cmd(fmt.Sprintf("RETR f-%d", size), "150"); err != nil {
			return err
		}
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(opTimeout))
		if dc, err = ln.Accept(); err != nil {
			return fmt.Errorf("data accept: %w", err)
		}
	} else {
		line, err := k.cmd("PASV", "227")
		if err != nil {
			return err
		}
		ap, err := parse227(line)
		if err != nil {
			return err
		}
		if dc, err = dialData(ap, k.local); err != nil {
			return err
		}
		if _, err := k.cmd(fmt.Sprintf("RETR f-%d", size), "150"); err != nil {
			dc.Close()
			return err
		}
	}
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	got, err := io.Copy(io.Discard, dc)
	dc.Close()
	if err != nil {
		return fmt.Errorf("data read: %w", err)
	}
	if got != size {
		return fmt.Errorf("data: got %d bytes, want %d", got, size)
	}
	if _, _, err := k.read("226"); err != nil {
		return err
	}
	return k.quit()
}

// SessionsResult is the output of sessions.
type SessionsResult struct {
	Concurrency int      `json:"concurrency"`
	Mode        string   `json:"mode"`
	OK          int64    `json:"ok"`
	Failed      int64    `json:"failed"`
	Seconds     float64  `json:"seconds"`
	PerSec      float64  `json:"per_sec"`
	Errors      []string `json:"errors,omitempty"` // the first few
}

func cmdSessions(args []string) (any, error) {
	fs := flag.NewFlagSet("sessions", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	conc := fs.Int("c", 1, "concurrent clients")
	dur := fs.Duration("duration", 5*time.Second, "how long new sessions are started")
	mode := fs.String("mode", "pasv", "pasv or port")
	size := fs.Int64("size", 1024, "bytes per transfer")
	from := fs.String("from", "", "comma-separated local addresses, one per session in turn")
	_ = fs.Parse(args)
	srcs, err := addrList(*from)
	if err != nil {
		return nil, err
	}
	var turn atomic.Uint64
	active := *mode == "port"
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				src := srcs[turn.Add(1)%uint64(len(srcs))]
				if err := one(*server, src, active, *size); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	return SessionsResult{Concurrency: *conc, Mode: *mode, OK: ok.Load(), Failed: failed.Load(),
		Seconds: secs, PerSec: float64(ok.Load()) / secs, Errors: errs}, nil
}

// PinholeResult is the output of pinhole: for pasv, Connect is the data connection's connect
// time right after the 227 was read and Total the time from sending PASV until connected; for
// port, Total is the time from sending PORT (then RETR after its 200) until the server's data
// connection is accepted.
type PinholeResult struct {
	Mode    string `json:"mode"`
	Connect Lat    `json:"connect"`
	Total   Lat    `json:"total"`
	Failed  int    `json:"failed"`
}

func cmdPinhole(args []string) (any, error) {
	fs := flag.NewFlagSet("pinhole", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	n := fs.Int("n", 200, "data connections")
	mode := fs.String("mode", "pasv", "pasv or port")
	_ = fs.Parse(args)
	k, err := dialCtl(*server, netip.Addr{})
	if err != nil {
		return nil, err
	}
	if err := k.login(); err != nil {
		return nil, err
	}
	res := PinholeResult{Mode: *mode}
	var conn, total []time.Duration
	for range *n {
		if *mode == "port" {
			d, err := pinholePort(k)
			if err != nil {
				return nil, err
			}
			total = append(total, d)
			continue
		}
		t0 := time.Now()
		if err := k.send("PASV"); err != nil {
			return nil, err
		}
		line, t1, err := k.read("227")
		if err != nil {
			return nil, err
		}
		ap, err := parse227(line)
		if err != nil {
			return nil, err
		}
		dc, err := dialData(ap, k.local)
		t2 := time.Now()
		if err != nil {
			res.Failed++
			continue
		}
		dc.Close()
		conn = append(conn, t2.Sub(t1))
		total = append(total, t2.Sub(t0))
	}
	res.Connect, res.Total = lat(conn), lat(total)
	return res, k.quit()
}

func pinholePort(k *ctl) (time.Duration, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(k.local, 0).String())
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	ap, _ := netip.ParseAddrPort(ln.Addr().String())
	t0 := time.Now()
	if _, err := k.cmd(portArg(ap), "200"); err != nil {
		return 0, err
	}
	if err := k.send("RETR f-0"); err != nil {
		return 0, err
	}
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(opTimeout))
	dc, err := ln.Accept()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("data accept: %w", err)
	}
	_, _ = io.Copy(io.Discard, dc)
	dc.Close()
	if _, _, err := k.read("150"); err != nil {
		return 0, err
	}
	if _, _, err := k.read("226"); err != nil {
		return 0, err
	}
	return d, nil
}

// BulkResult is the output of bulk.
type BulkResult struct {
	Bytes  int64     `json:"bytes"`
	MBps   []float64 `json:"mbps"` // per run, 10^6 bytes per second
	Median float64   `json:"median_mbps"`
}

func cmdBulk(args []string) (any, error) {
	fs := flag.NewFlagSet("bulk", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	size := fs.Int64("size", 512<<20, "bytes per run")
	runs := fs.Int("runs", 3, "runs")
	_ = fs.Parse(args)
	res := BulkResult{Bytes: *size}
	buf := make([]byte, 256<<10)
	for range *runs {
		k, err := dialCtl(*server, netip.Addr{})
		if err != nil {
			return nil, err
		}
		if err := k.login(); err != nil {
			return nil, err
		}
		line, err := k.cmd("PASV", "227")
		if err != nil {
			return nil, err
		}
		ap, err := parse227(line)
		if err != nil {
			return nil, err
		}
		dc, err := dialData(ap, k.local)
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		if _, err := k.cmd(fmt.Sprintf("RETR f-%d", *size), "150"); err != nil {
			return nil, err
		}
		_ = dc.SetReadDeadline(time.Now().Add(2 * time.Minute))
		got, err := io.CopyBuffer(io.Discard, onlyReader{dc}, buf)
		secs := time.Since(t0).Seconds()
		dc.Close()
		if err != nil || got != *size {
			return nil, fmt.Errorf("bulk read %d of %d bytes: %v", got, *size, err)
		}
		if _, _, err := k.read("226"); err != nil {
			return nil, err
		}
		if err := k.quit(); err != nil {
			return nil, err
		}
		res.MBps = append(res.MBps, float64(*size)/1e6/secs)
	}
	s := slices.Clone(res.MBps)
	slices.Sort(s)
	res.Median = s[len(s)/2]
	return res, nil
}

// FilesResult is the output of files.
type FilesResult struct {
	Files   int     `json:"files"` // fetched
	Failed  int     `json:"failed"`
	Seconds float64 `json:"seconds"` // from the first PASV to the last 226
	PerFile Lat     `json:"per_file"`
	Error   string  `json:"error,omitempty"`
}

// cmdFiles fetches n small files one after the other on one control session, each with PASV,
// a data connection and RETR: a client mirroring a directory of small files. A failed
// transfer ends the session (its control connection is in an unknown state); the rest count
// as failed.
func cmdFiles(args []string) (any, error) {
	fs := flag.NewFlagSet("files", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	n := fs.Int("n", 300, "files")
	size := fs.Int64("size", 1024, "bytes per file")
	_ = fs.Parse(args)
	k, err := dialCtl(*server, netip.Addr{})
	if err != nil {
		return nil, err
	}
	defer k.c.Close()
	if err := k.login(); err != nil {
		return nil, err
	}
	res := FilesResult{}
	var per []time.Duration
	start := time.Now()
	for i := range *n {
		t0 := time.Now()
		if err := fetchPassive(k, fmt.Sprintf("RETR file%03d-%d", i, *size), *size); err != nil {
			res.Failed = *n - i
			res.Error = err.Error()
			break
		}
		per = append(per, time.Since(t0))
	}
	res.Seconds = time.Since(start).Seconds()
	res.Files, res.PerFile = len(per), lat(per)
	if res.Failed == 0 {
		if err := k.quit(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// fetchPassive runs PASV, connects, sends retr and reads size bytes and the 226.
func fetchPassive(k *ctl, retr string, size int64) error {
	line, err := k.cmd("PASV", "227")
	if err != nil {
		return err
	}
	ap, err := parse227(line)
	if err != nil {
		return err
	}
	// No local address: connect(2) picks the source port by the 4-tuple, where bind(2) to
	// the address would search for a port free on that address, a search that grows with the
	// TIME_WAIT sockets the earlier phases left (the route gives the control connection's
	// source address anyway).
	dc, err := dialData(ap, netip.Addr{})
	if err != nil {
		return err
	}
	defer dc.Close()
	if _, err := k.cmd(retr, "150"); err != nil {
		return err
	}
	_ = dc.SetReadDeadline(time.Now().Add(opTimeout))
	got, err := io.Copy(io.Discard, dc)
	if err != nil {
		return fmt.Errorf("data read: %w", err)
	}
	if got != size {
		return fmt.Errorf("data: got %d bytes, want %d", got, size)
	}
	_, _, err = k.read("226")
	return err
}

// UnrelatedResult is the output of unrelated.
type UnrelatedResult struct {
	Concurrency int      `json:"concurrency"`
	OK          int64    `json:"ok"`
	Failed      int64    `json:"failed"`
	Seconds     float64  `json:"seconds"`
	PerSec      float64  `json:"per_sec"`
	Conn        Lat      `json:"conn"` // connect to close, per connection
	Errors      []string `json:"errors,omitempty"`
}

// cmdUnrelated opens short TCP connections to a non-FTP service from c workers for a duration:
// connect, send a few bytes, read them back, close. Traffic an FTP ALG has no business with.
func cmdUnrelated(args []string) (any, error) {
	fs := flag.NewFlagSet("unrelated", flag.ExitOnError)
	server := fs.String("server", "", "echo server addr:port")
	conc := fs.Int("c", 16, "concurrent workers")
	dur := fs.Duration("duration", 2*time.Second, "how long new connections are started")
	from := fs.String("from", "", "comma-separated local addresses, one per connection in turn")
	_ = fs.Parse(args)
	srcs, err := addrList(*from)
	if err != nil {
		return nil, err
	}
	var turn atomic.Uint64
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	var durs []time.Duration
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := echoOnce(*server, srcs[turn.Add(1)%uint64(len(srcs))]); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t0))
				ok.Add(1)
			}
			mu.Lock()
			durs = append(durs, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	return UnrelatedResult{Concurrency: *conc, OK: ok.Load(), Failed: failed.Load(), Seconds: secs,
		PerSec: float64(ok.Load()) / secs, Conn: lat(durs), Errors: errs}, nil
}

var echoMsg = []byte("ping\r\n")

// echoOnce is one unrelated connection; the client closes first.
func echoOnce(server string, from netip.Addr) error {
	d := net.Dialer{Timeout: opTimeout}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	c, err := d.Dial("tcp", server)
	if err != nil {
		return fmt.Errorf("dial %s: %w", server, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	if _, err := c.Write(echoMsg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	var buf [16]byte
	if _, err := io.ReadFull(c, buf[:len(echoMsg)]); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	return nil
}

// addrList parses a comma-separated address list; empty means one invalid address (any).
func addrList(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("local address %q: %w", f, err)
			}
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []netip.Addr{{}}
	}
	return out, nil
}

// onlyReader hides WriterTo/ReaderFrom so that io.CopyBuffer uses the given buffer.
type onlyReader struct{ io.Reader }

// IdleResult is what idle prints once every session is open (and again, nothing, at exit).
type IdleResult struct {
	Ready   int      `json:"ready"`
	Failed  int      `json:"failed"`
	Seconds float64  `json:"seconds"`
	Errors  []string `json:"errors,omitempty"`
}

func cmdIdle(args []string) (any, error) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	n := fs.Int("n", 10000, "sessions")
	from := fs.String("from", "", "comma-separated local addresses, used round-robin")
	conc := fs.Int("c", 64, "sessions opened at once")
	_ = fs.Parse(args)
	srcs, err := addrList(*from)
	if err != nil {
		return nil, err
	}
	conns := make([]*ctl, *n)
	var failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	next := atomic.Int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				k, err := dialCtl(*server, srcs[i%len(srcs)])
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				_ = k.c.SetReadDeadline(time.Time{})
				conns[i] = k
			}
		}()
	}
	wg.Wait()
	res := IdleResult{Ready: *n - int(failed.Load()), Failed: int(failed.Load()), Seconds: time.Since(start).Seconds(), Errors: errs}
	// Print now: the caller measures while the sessions are held.
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return nil, err
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	for _, k := range conns {
		if k != nil {
			k.c.Close()
		}
	}
	os.Exit(0)
	return nil, nil
}

// FloodResult is what flood prints.
type FloodResult struct {
	Sent    int     `json:"sent"`
	Replies int64   `json:"replies"`
	Seconds float64 `json:"seconds"`
}

// cmdFlood sends PORT commands naming the client's own address at -rate per second for
// -duration on one control connection (no login: the server answers each one) and counts the
// replies: the reliability tests' hostile client.
func cmdFlood(args []string) (any, error) {
	fs := flag.NewFlagSet("flood", flag.ExitOnError)
	server := fs.String("server", "", "server addr:port")
	rate := fs.Int("rate", 10000, "PORT commands per second")
	dur := fs.Duration("duration", 3*time.Second, "how long")
	_ = fs.Parse(args)
	k, err := dialCtl(*server, netip.Addr{})
	if err != nil {
		return nil, err
	}
	defer k.c.Close()
	if !k.local.Is4() {
		return nil, fmt.Errorf("flood needs IPv4 (PORT), got %s", k.local)
	}
	var replies atomic.Int64
	go func() {
		for {
			if _, err := k.r.ReadString('\n'); err != nil {
				return
			}
			replies.Add(1)
		}
	}()
	// Batches every millisecond keep the rate without a system call per command.
	const tick = time.Millisecond
	perTick := max(*rate/1000, 1)
	start := time.Now()
	sent, port := 0, 1024
	var buf []byte
	for time.Since(start) < *dur {
		want := int(time.Since(start)/tick+1) * perTick
		buf = buf[:0]
		for sent < want {
			buf = append(buf, portArg(netip.AddrPortFrom(k.local, uint16(port)))...) // "PORT a,b,c,d,p1,p2"
			buf = append(buf, "\r\n"...)
			sent++
			if port++; port > 65535 {
				port = 1024
			}
		}
		if len(buf) > 0 {
			_ = k.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := k.c.Write(buf); err != nil {
				return nil, fmt.Errorf("after %d commands: %w", sent, err)
			}
		}
		time.Sleep(tick)
	}
	elapsed := time.Since(start)
	for deadline := time.Now().Add(5 * time.Second); replies.Load() < int64(sent) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return FloodResult{Sent: sent, Replies: replies.Load(), Seconds: elapsed.Seconds()}, nil
}
