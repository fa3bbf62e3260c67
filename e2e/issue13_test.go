package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// The sessions of issue 13 (hairpin NAT, FXP, zones, Nagle), each run three ways side by side:
// ftpalg on the router (must work), the kernel FTP helper (the reference: recorded) and
// nothing (the negative control: recorded, and asserted where the case cannot work without
// an ALG). Each test logs a table of outcomes, one row per case, one column per setup.

// setup13 is how the router handles FTP.
type setup13 struct {
	name   string
	ftpalg bool
	helper bool
}

var setups13 = []setup13{
	{name: "ftpalg", ftpalg: true},
	{name: "kernel-helper", helper: true},
	{name: "none"},
}

// results is a table of outcomes: rows are cases, columns the setups.
type results struct {
	mu    sync.Mutex
	rows  []string
	cells map[[2]string]string
}

// runSetups runs fn once per setup, in parallel, each in its own lab, and logs the table of
// what they recorded when all are done (also after failures).
func runSetups(t *testing.T, title string, fn func(t *testing.T, s setup13, res *results)) {
	res := &results{cells: map[[2]string]string{}}
	t.Cleanup(func() { t.Logf("%s: results\n%s", title, res.String()) })
	for _, s := range setups13 {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			if s.ftpalg {
				requireFtpalg(t)
			}
			fn(t, s, res)
		})
	}
}

// set records one outcome: "ok", or what went wrong.
func (r *results) set(row string, s setup13, outcome string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.cells[[2]string{row, s.name}]; !ok {
		seen := false
		for _, x := range r.rows {
			seen = seen || x == row
		}
		if !seen {
			r.rows = append(r.rows, row)
		}
	}
	r.cells[[2]string{row, s.name}] = outcome
}

// outcome turns an error into a table cell.
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 70 {
		s = s[:67] + "..."
	}
	return "FAIL: " + s
}

func (r *results) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rows := append([]string(nil), r.rows...)
	sort.Strings(rows)
	head := []string{"case"}
	for _, s := range setups13 {
		head = append(head, s.name)
	}
	table := [][]string{head}
	for _, row := range rows {
		line := []string{row}
		for _, s := range setups13 {
			c, ok := r.cells[[2]string{row, s.name}]
			if !ok {
				c = "-"
			}
			line = append(line, c)
		}
		table = append(table, line)
	}
	width := make([]int, len(head))
	for _, line := range table {
		for i, c := range line {
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	for n, line := range table {
		for i, c := range line {
			fmt.Fprintf(&b, "| %-*s ", width[i], c)
		}
		b.WriteString("|\n")
		if n == 0 {
			for i := range line {
				b.WriteString("|" + strings.Repeat("-", width[i]+2))
			}
			b.WriteString("|\n")
		}
	}
	return b.String()
}

// ftpc is a small FTP client over a real TCP connection that reports errors instead of
// failing the test, so that the reference and the negative control can record them.
type ftpc struct {
	c *net.TCPConn
	r *bufio.Reader
}

// dialFTP connects from a role's namespace, from local when it is valid (a fixed source
// port), with Nagle off (nodelay) or on.
func dialFTP(l *lab.Lab, from lab.Role, local, to netip.AddrPort, nodelay bool) (*ftpc, error) {
	var c net.Conn
	err := l.Do(from, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if local.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(local)
		}
		var err error
		c, err = d.Dial("tcp", to.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", to, err)
	}
	tc := c.(*net.TCPConn)
	if err := tc.SetNoDelay(nodelay); err != nil {
		tc.Close()
		return nil, err
	}
	return &ftpc{c: tc, r: bufio.NewReader(tc)}, nil
}

func (f *ftpc) close() { f.c.Close() }

func (f *ftpc) send(s string) error {
	_, err := f.c.Write([]byte(s))
	return err
}

// read reads one reply (multi-line ones included) within d.
func (f *ftpc) read(d time.Duration) (int, string, error) {
	_ = f.c.SetReadDeadline(time.Now().Add(d))
	code, text, err := readReply(f.r)
	if err != nil && text == "" {
		return 0, "", fmt.Errorf("no reply: %w", err)
	}
	return code, strings.TrimSpace(text), err
}

// expect reads a reply and wants code.
func (f *ftpc) expect(what string, code int, d time.Duration) (string, error) {
	got, text, err := f.read(d)
	if err != nil {
		return text, fmt.Errorf("%s: %w", what, err)
	}
	if got != code {
		return text, fmt.Errorf("%s: %q, want %d", what, text, code)
	}
	return text, nil
}

// cmd sends a command line and wants code.
func (f *ftpc) cmd(line string, code int) (string, error) {
	if err := f.send(line + "\r\n"); err != nil {
		return "", err
	}
	verb, _, _ := strings.Cut(line, " ")
	return f.expect(verb, code, 5*time.Second)
}

func (f *ftpc) login() error {
	if _, err := f.expect("banner", 220, 5*time.Second); err != nil {
		return err
	}
	if err := f.send("USER anonymous\r\n"); err != nil {
		return err
	}
	code, text, err := f.read(5 * time.Second)
	if err == nil && code == 331 {
		if err = f.send("PASS e2e@\r\n"); err == nil {
			code, text, err = f.read(5 * time.Second)
		}
	}
	if err != nil || code != 230 {
		return fmt.Errorf("login: %d %q %v", code, text, err)
	}
	_, err = f.cmd("TYPE I", 200)
	return err
}

// readData reads a data connection to its end and compares its sha256.
func readData(c net.Conn, want string) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read data: %w", err)
	}
	if got := sha(b); got != want {
		return fmt.Errorf("data: %d bytes, sha256 %.12s, want %.12s", len(b), got, want)
	}
	return nil
}

// pasvGet downloads pub/data.bin in passive mode. With controlAddr the client dials the
// control connection's remote address with the announced port, as Python's ftplib does by
// default; else the announced endpoint.
func (f *ftpc) pasvGet(l *lab.Lab, from lab.Role, controlAddr bool, want string) (netip.AddrPort, error) {
	text, err := f.cmd("PASV", 227)
	if err != nil {
		return netip.AddrPort{}, err
	}
	announced, err := endpointOf227(text)
	if err != nil {
		return netip.AddrPort{}, err
	}
	to := announced
	if controlAddr {
		to = netip.AddrPortFrom(netip.MustParseAddrPort(f.c.RemoteAddr().String()).Addr(), announced.Port())
	}
	dc, err := dialFrom(l, from, to, 3*time.Second)
	if err != nil {
		return announced, fmt.Errorf("data connection to %s (227 said %s): %w", to, announced, err)
	}
	if _, err := f.cmd("RETR pub/"+lab.FileName, 150); err != nil {
		dc.Close()
		return announced, err
	}
	if err := readData(dc, want); err != nil {
		return announced, err
	}
	_, err = f.expect("transfer", 226, 10*time.Second)
	return announced, err
}

// portGet downloads pub/data.bin in active mode: the client listens on listen (port 0: any)
// in its namespace and sends PORT (or EPRT) naming it.
func (f *ftpc) portGet(t *testing.T, l *lab.Lab, from lab.Role, listen netip.AddrPort, eprt bool, want string) error {
	ln := listenIn(t, l, from, listen)
	defer ln.Close()
	lp := netip.MustParseAddrPort(ln.Addr().String())
	if eprt {
		if _, err := f.cmd(fmt.Sprintf("EPRT |1|%s|%d|", lp.Addr(), lp.Port()), 200); err != nil {
			return err
		}
	} else if _, err := f.cmd("PORT "+portArg(lp), 200); err != nil {
		return err
	}
	return f.retrActive(ln, want)
}

// retrActive sends RETR after an accepted PORT/EPRT and takes the server's data connection.
func (f *ftpc) retrActive(ln *net.TCPListener, want string) error {
	if err := f.send("RETR pub/" + lab.FileName + "\r\n"); err != nil {
		return err
	}
	dc, err := acceptWithin(ln, 5*time.Second)
	if err != nil {
		code, text, rerr := f.read(time.Second)
		return fmt.Errorf("the server never connected back (%v); reply %d %q %v", err, code, text, rerr)
	}
	if _, err := f.expect("RETR", 150, 5*time.Second); err != nil {
		dc.Close()
		return err
	}
	if err := readData(dc, want); err != nil {
		return err
	}
	_, err = f.expect("transfer", 226, 10*time.Second)
	return err
}

// noEvents reports the events after mark named name, as an error.
func noEvents(d *lab.Daemon, mark int, name string, keep func(lab.Event) bool) error {
	if evs := lab.Filter(d.Since(mark), name, keep); len(evs) > 0 {
		return fmt.Errorf("unexpected %s events:\n%s", name, eventLines(evs))
	}
	return nil
}
