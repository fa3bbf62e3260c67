package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// fakeFTP is a scripted FTP server in a lab namespace: it greets, records every line it
// receives and answers each with answer(line). It serves any number of connections.
type fakeFTP struct {
	mu    sync.Mutex
	lines []string
}

func (f *fakeFTP) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func startFake(t *testing.T, l *lab.Lab, r lab.Role, addrs []netip.Addr, answer func(line string) string) *fakeFTP {
	t.Helper()
	f := &fakeFTP{}
	for _, a := range addrs {
		ln := listenIn(t, l, r, netip.AddrPortFrom(a, 21))
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = c.Write([]byte("220 fake ready\r\n"))
					br := bufio.NewReaderSize(c, 256<<10)
					for {
						line, err := br.ReadString('\n')
						if err != nil {
							return
						}
						line = strings.TrimRight(line, "\r\n")
						f.mu.Lock()
						f.lines = append(f.lines, line)
						f.mu.Unlock()
						if _, err := c.Write([]byte(answer(line))); err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	return f
}

// pinholesListed returns `ftpalg pinholes` run in the router (the kernel's expectations).
func pinholesListed(t *testing.T, l *lab.Lab) string {
	t.Helper()
	out, err := l.Exec(context.Background(), lab.Router, ftpalgBin, "pinholes")
	if err != nil {
		t.Errorf("ftpalg pinholes: %v: %s", err, out)
	}
	return string(out)
}

// TestHostile sends hostile commands (client side) and replies (a fake server) over real
// TCP through ftpalg (grow plan: the IPv4 client is behind SNAT; IPv6 is routed). For each:
// no pinhole (no pinhole_open, nothing in `ftpalg pinholes`), a rejected event with the
// engine's reason where the engine rejects, the command neutralised before the server sees
// it, and the session unharmed (NOOP still answered).
func TestHostile(t *testing.T) {
	t.Parallel()
	requireLab(t)
	requireFtpalg(t)
	l := newLab(t, lab.Config{Addrs: lab.Grow()})
	x := l.Addrs
	d := startFtpalg(t, l, nil)

	dataPort := uint16(30000) // 117,48
	fake227 := fmt.Sprintf("227 Entering Passive Mode (%s)", portArg(netip.AddrPortFrom(x.OutsideClient, dataPort)))
	fake229 := fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", dataPort)
	// Genuine answers use another port, so that their pinholes never match a later case's.
	real227 := fmt.Sprintf("227 Entering Passive Mode (%s)\r\n", portArg(netip.AddrPortFrom(x.OutsideClient, 31000)))
	real229 := "229 Entering Extended Passive Mode (|||31000|)\r\n"
	var pasvReply, epsvReply, noopReply string // set per case, under mu
	var mu sync.Mutex
	srv := startFake(t, l, lab.OutsideClient, []netip.Addr{x.OutsideClient, x.OutsideClient6}, func(line string) string {
		mu.Lock()
		defer mu.Unlock()
		verb, _, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "USER":
			return "230 ok\r\n"
		case "NOOP":
			if noopReply != "" {
				r := noopReply
				noopReply = ""
				return r
			}
			return "200 NOOP ok\r\n"
		case "PORT", "EPRT":
			return "200 ok, would connect\r\n"
		case "PASV":
			return pasvReply
		case "EPSV":
			return epsvReply
		case "AUTH":
			return "234 go ahead\r\n"
		case "QUIT":
			return "221 bye\r\n"
		}
		return "500 unknown command\r\n"
	})
	session := func(t *testing.T, v6 bool) (*rawFTP, netip.AddrPort) {
		t.Helper()
		dst := netip.AddrPortFrom(x.OutsideClient, 21)
		if v6 {
			dst = netip.AddrPortFrom(x.OutsideClient6, 21)
		}
		f := dialRaw(t, l, lab.Client, dst)
		f.expect(220)
		f.write("USER anonymous\r\n")
		f.expect(230)
		return f, netip.MustParseAddrPort(f.c.LocalAddr().String())
	}
	ofSession := func(self netip.AddrPort) func(lab.Event) bool {
		return func(ev lab.Event) bool { return ev.AddrPort("client") == self }
	}
	unharmed := func(t *testing.T, f *rawFTP) {
		t.Helper()
		f.write("NOOP\r\n")
		if code, text, err := f.reply(); err != nil || code != 200 {
			t.Errorf("NOOP after the hostile input: %d %q %v (session harmed)", code, text, err)
		}
	}
	noPinhole := func(t *testing.T, mark int, self netip.AddrPort, port string) {
		t.Helper()
		if evs := lab.Filter(d.Since(mark), "pinhole_open", ofSession(self)); len(evs) > 0 {
			t.Errorf("pinhole opened:\n%s", eventLines(evs))
		}
		if out := pinholesListed(t, l); strings.Contains(out, ":"+port+" ") || strings.Contains(out, "]:"+port) {
			t.Errorf("ftpalg pinholes lists port %s:\n%s", port, out)
		}
	}

	t.Run("client", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			v6      bool
			line    string
			reasons []string // acceptable rejected reasons
		}{
			{name: "port-bounce", line: "PORT 203,0,113,66,156,64", reasons: []string{"bounce"}},
			{name: "eprt-bounce", line: "EPRT |1|203.0.113.66|40000|", reasons: []string{"bounce"}},
			{name: "eprt-bounce-v6", v6: true, line: "EPRT |2|2001:db8:3::66|40000|", reasons: []string{"bounce"}},
			{name: "eprt-ipv4-mapped", v6: true, line: "EPRT |2|::ffff:192.0.2.5|40000|", reasons: []string{"bounce", "family", "bad_syntax"}},
			{name: "eprt-link-local", v6: true, line: "EPRT |2|fe80::5|40000|", reasons: []string{"bounce"}},
			{name: "eprt-link-local-zone", v6: true, line: "EPRT |2|fe80::5%eth0|40000|", reasons: []string{"bounce", "bad_syntax"}},
			{name: "eprt-af1-on-ipv6", v6: true, line: "EPRT |1|192.0.2.5|40000|", reasons: []string{"family"}},
			{name: "eprt-af2-on-ipv4", line: "EPRT |2|2001:db8:1::5|40000|", reasons: []string{"family"}},
			{name: "eprt-af1-with-v6-text", line: "EPRT |1|2001:db8:1::5|40000|", reasons: []string{"bad_syntax", "family"}},
			{name: "port-octet-256", line: "PORT 192,0,2,256,156,64", reasons: []string{"bad_syntax"}},
			{name: "port-octet-huge", line: "PORT 192,0,2,99999999999999999999,156,64", reasons: []string{"bad_syntax"}},
			{name: "port-port-0", line: "PORT 192,0,2,5,0,0", reasons: []string{"bad_syntax", "low_port"}},
			{name: "port-p1-256", line: "PORT 192,0,2,5,256,0", reasons: []string{"bad_syntax"}},
			{name: "port-negative", line: "PORT 192,0,2,5,-1,64", reasons: []string{"bad_syntax"}},
			{name: "eprt-port-65536", line: "EPRT |1|192.0.2.5|65536|", reasons: []string{"bad_syntax"}},
			{name: "eprt-port-0", line: "EPRT |1|192.0.2.5|0|", reasons: []string{"bad_syntax", "low_port"}},
			{name: "eprt-port-0-v6", v6: true, line: "EPRT |2|2001:db8:1::5|0|", reasons: []string{"bad_syntax", "low_port"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				f, self := session(t, tc.v6)
				mark := d.Mark()
				f.write(tc.line + "\r\n")
				code, text, err := f.reply()
				if err != nil || code != 500 {
					t.Errorf("reply %d %q %v, want 500 (the server must see a neutralised verb)", code, text, err)
				}
				got, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", ofSession(self))
				if err != nil {
					t.Errorf("rejected: %v\n%s", err, eventLines(d.Since(mark)))
				} else if r := got[0].Str("reason"); !slices.Contains(tc.reasons, r) {
					t.Errorf("rejected reason %q, want one of %v: %v", r, tc.reasons, got[0])
				}
				// What reached the server: the neutralised verb, never the command.
				for _, sl := range srv.got() {
					if sl == tc.line {
						t.Errorf("the server received the hostile command intact: %q", sl)
					}
				}
				unharmed(t, f)
				noPinhole(t, mark, self, "40000")
			})
		}
	})

	t.Run("server", func(t *testing.T) {
		type step struct {
			send   string // client line
			want   int    // reply code the client must see
			reason string // rejected reason expected ("" none)
		}
		for _, tc := range []struct {
			name       string
			v6         bool
			pasv, epsv string
			noop       string
			steps      []step
		}{
			{name: "227-without-pasv", noop: fake227 + "\r\n",
				steps: []step{{send: "NOOP", want: 227, reason: "unsolicited"}}},
			{name: "229-without-epsv", noop: fake229 + "\r\n",
				steps: []step{{send: "NOOP", want: 229, reason: "unsolicited"}}},
			{name: "229-answering-pasv", pasv: fake229 + "\r\n",
				steps: []step{{send: "PASV", want: 229, reason: "unsolicited"}}},
			{name: "227-in-5xx-text", pasv: "550 " + fake227 + "\r\n",
				steps: []step{{send: "PASV", want: 550}}},
			{name: "227-in-5xx-text-v6", v6: true, epsv: "500 " + fake229 + "\r\n",
				steps: []step{{send: "EPSV", want: 500}}},
			{name: "227-in-multiline", pasv: "211-Status\r\n" + fake227 + "\r\n" + fake229 + "\r\n211 End\r\n",
				steps: []step{{send: "PASV", want: 211}}},
			{name: "227-bounce-address", pasv: fmt.Sprintf("227 Entering Passive Mode (%s)\r\n", portArg(netip.AddrPortFrom(x.ThirdParty, dataPort))),
				steps: []step{{send: "PASV", want: 425, reason: "bounce"}}},
			{name: "227-octet-300", pasv: "227 Entering Passive Mode (198,51,100,300,117,48)\r\n",
				steps: []step{{send: "PASV", want: 425, reason: "bad_syntax"}}},
			{name: "229-port-65536", v6: true, epsv: "229 Entering Extended Passive Mode (|||65536|)\r\n",
				steps: []step{{send: "EPSV", want: 425, reason: "bad_syntax"}}},
			{name: "229-port-0", v6: true, epsv: "229 Entering Extended Passive Mode (|||0|)\r\n",
				steps: []step{{send: "EPSV", want: 425, reason: "bad_syntax"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				mu.Lock()
				pasvReply, epsvReply, noopReply = tc.pasv, tc.epsv, tc.noop
				mu.Unlock()
				f, self := session(t, tc.v6)
				mark := d.Mark()
				for _, s := range tc.steps {
					f.write(s.send + "\r\n")
					code, text, err := f.reply()
					if err != nil || code != s.want {
						t.Errorf("%s: reply %d %q %v, want %d", s.send, code, text, err, s.want)
					}
					if s.reason == "" {
						continue
					}
					got, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "rejected", ofSession(self))
					if err != nil {
						t.Errorf("rejected: %v\n%s", err, eventLines(d.Since(mark)))
					} else if r := got[0].Str("reason"); r != s.reason {
						t.Errorf("rejected reason %q, want %q: %v", r, s.reason, got[0])
					}
				}
				unharmed(t, f)
				noPinhole(t, mark, self, "30000")
				// The pairing stayed exact: a genuine PASV/EPSV still gets its pinhole.
				mu.Lock()
				pasvReply, epsvReply = real227, real229
				mu.Unlock()
				m2 := d.Mark()
				real := "PASV"
				if tc.v6 {
					real = "EPSV"
				}
				f.write(real + "\r\n")
				if code, text, err := f.reply(); err != nil || (code != 227 && code != 229) {
					t.Fatalf("genuine %s: %d %q %v", real, code, text, err)
				}
				if _, err := d.WaitFor(ctxT(t, 3*time.Second), m2, 1, "pinhole_open", ofSession(self)); err != nil {
					t.Errorf("genuine %s after the hostile reply opened no pinhole: %v\n%s", real, err, eventLines(d.Since(m2)))
				}
			})
		}
	})

	t.Run("auth-tls-then-plaintext", func(t *testing.T) {
		for _, v6 := range []bool{false, true} {
			t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
				mu.Lock()
				pasvReply, epsvReply, noopReply = fake227+"\r\n", fake229+"\r\n", ""
				mu.Unlock()
				f, self := session(t, v6)
				mark := d.Mark()
				f.write("AUTH TLS\r\n")
				f.expect(234)
				if _, err := d.WaitFor(ctxT(t, 3*time.Second), mark, 1, "tls_passthrough", ofSession(self)); err != nil {
					t.Errorf("tls_passthrough: %v\n%s", err, eventLines(d.Since(mark)))
				}
				// Bytes that look like commands after 234: never parsed (the session is
				// encrypted as far as ftpalg knows).
				own := netip.MustParseAddrPort(f.c.LocalAddr().String()).Addr()
				lines := []string{
					"PORT " + portArg(netip.AddrPortFrom(x.Client, 30000)),
					"PORT 203,0,113,66,117,48",
					fmt.Sprintf("EPRT |%d|%s|30000|", map[bool]int{false: 1, true: 2}[v6], own),
					"PASV", "EPSV",
				}
				for _, line := range lines {
					f.write(line + "\r\n")
					if _, _, err := f.reply(); err != nil {
						t.Errorf("%s after AUTH TLS: %v", line, err)
					}
				}
				unharmed(t, f)
				time.Sleep(200 * time.Millisecond)
				for _, name := range []string{"pinhole_open", "rejected", "rewrite"} {
					if evs := lab.Filter(d.Since(mark), name, ofSession(self)); len(evs) > 0 {
						t.Errorf("%s after tls_passthrough (must not parse):\n%s", name, eventLines(evs))
					}
				}
				// The PORTs reached the server intact (no neutralisation after 234).
				if !slices.Contains(srv.got(), lines[1]) {
					t.Errorf("the server never got %q intact: ftpalg touched the passthrough stream", lines[1])
				}
				noPinhole(t, mark, self, "30000")
			})
		}
	})
}
