package alg

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Seeds in code; more (and every crasher) under testdata/fuzz/<FuzzName>/.

func FuzzParsePORT(f *testing.F) {
	for _, s := range []string{"192,0,2,10,4,1", "255,255,255,255,255,255", "0,0,0,0,0,1", "1,2,3,4,0,0",
		"256,0,0,0,4,1", "1,2,3,4,5", "1,2,3,4,5,6,7", "0001,2,3,4,5,6", "-1,2,3,4,5,6", "+1,2,3,4,5,6",
		"1,2,3,4,5,6 ", " 1,2,3,4,5,6", "99999999999999999999,1,1,1,1,1", "", ",,,,,", "1,,3,4,5,6"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, arg []byte) {
		ep, err := ParsePORT(arg)
		if err != nil {
			return
		}
		if !ep.Addr().Is4() || ep.Port() == 0 {
			t.Fatalf("ParsePORT(%q) = %v: not IPv4 or port 0", arg, ep)
		}
		b := AppendPORT(nil, ep)
		ep2, err := ParsePORT(b)
		if err != nil || ep2 != ep {
			t.Fatalf("round trip %q → %v → %q → %v, %v", arg, ep, b, ep2, err)
		}
	})
}

func FuzzParseEPRT(f *testing.F) {
	for _, s := range []string{"|1|192.0.2.10|4000|", "|2|2001:db8::1|4000|", "!1!192.0.2.10!4000!",
		"|2|::ffff:192.0.2.1|4000|", "|2|fe80::1%eth0|4000|", "|1|2001:db8::1|4000|", "|2|192.0.2.1|4000|",
		"|1|192.0.2.10|0|", "|1|192.0.2.10|65536|", "|1|192.0.2.10|4000", "|3|192.0.2.10|4000|",
		"|1|192.0.2.10|4000||", "\x7f1\x7f192.0.2.10\x7f4000\x7f", "111111", "|1|01.2.3.4|4000|", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, arg []byte) {
		ep, delim, err := ParseEPRT(arg)
		if err != nil {
			return
		}
		if delim < 33 || delim > 126 || ep.Port() == 0 || ep.Addr().Zone() != "" || ep.Addr().Is4In6() {
			t.Fatalf("ParseEPRT(%q) = %v, %q: invalid result", arg, ep, delim)
		}
		b := AppendEPRT(nil, ep, delim)
		ep2, delim2, err := ParseEPRT(b)
		if err != nil || ep2 != ep || delim2 != delim {
			t.Fatalf("round trip %q → %v → %q → %v %q, %v", arg, ep, b, ep2, delim2, err)
		}
	})
}

func FuzzParse227(f *testing.F) {
	for _, s := range []string{" Entering Passive Mode (192,0,2,20,19,137).", " =192,0,2,20,19,137",
		" Entering Passive Mode 192,0,2,20,19,137", " Entering passive mode (192,0,2,20,19,137)",
		" Logout.", " Mode 2 (1,2,3,4,5,6)", " (1,2,3,4,5,6,7)", " (-1,2,3,4,5,6)", " (1,2,3,4,5,0)",
		" (256,2,3,4,5,6)", " (1,2,3,4,5)", " 1,2,3,4,5,6,", " (1,2,3,4,5,99999999999999999)"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		ep, start, end, err := Parse227(text)
		if err != nil {
			return
		}
		if start < 0 || end <= start || end > len(text) {
			t.Fatalf("Parse227(%q): span %d..%d out of text", text, start, end)
		}
		ep2, err := ParsePORT(text[start:end])
		if err != nil || ep2 != ep {
			t.Fatalf("Parse227(%q) = %v but its span %q parses to %v, %v", text, ep, text[start:end], ep2, err)
		}
		b := append([]byte(" Entering Passive Mode ("), AppendPORT(nil, ep)...)
		b = append(b, ")."...)
		ep3, _, _, err := Parse227(b)
		if err != nil || ep3 != ep {
			t.Fatalf("round trip %v → %q → %v, %v", ep, b, ep3, err)
		}
	})
}

func FuzzParse229(f *testing.F) {
	for _, s := range []string{" Entering Extended Passive Mode (|||6446|)", " Extended Passive mode OK (|||30001|)",
		" Entering Extended Passive Mode (!!!6446!)", " Mode... (|||6446|)", " (|||0|)", " (|||65536|)",
		" (|||6446)", " (||6446|)", " (111164461)", " (|||123456|)"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		port, delim, start, end, err := Parse229(text)
		if err != nil {
			return
		}
		if start < 3 || end <= start || end >= len(text) || port == 0 || isDigit(delim) {
			t.Fatalf("Parse229(%q) = %d %q %d..%d: invalid", text, port, delim, start, end)
		}
		if text[start-1] != delim || text[end] != delim {
			t.Fatalf("Parse229(%q): span %d..%d not between delimiters", text, start, end)
		}
		b := Append229([]byte(" Entering Extended Passive Mode ("), port, delim)
		p2, d2, _, _, err := Parse229(append(b, ')'))
		if err != nil || p2 != port || d2 != delim {
			t.Fatalf("round trip %d %q → %q → %d %q, %v", port, delim, b, p2, d2, err)
		}
	})
}

// fuzzScript turns fuzz bytes into transcript lines: each '\n'-terminated line of script
// whose first byte is 'C' or 'c' is a client line, anything else a server line; the first
// byte is dropped and the rest, LF included, is the line.
func fuzzScript(script []byte) []tline {
	var lines []tline
	for len(script) > 0 {
		i := bytes.IndexByte(script, '\n')
		var l []byte
		if i < 0 {
			l, script = script, nil
		} else {
			l, script = script[:i+1], script[i+1:]
		}
		d := FromServer
		if l[0] == 'C' || l[0] == 'c' {
			d = FromClient
		}
		if len(l) > 1 {
			lines = append(lines, tline{dir: d, text: l[1:]})
		}
	}
	return lines
}

// FuzzFeed drives a session with a transcript made of fuzz lines, each run of same-direction
// lines cut into random pieces that are sent reordered, duplicated and overlapping, with a
// random policy. mode picks how the session starts: bit 0 picked up mid-stream (a pure ACK
// first in each direction), bit 1 with Resume at each direction's first byte, bit 2 vouched
// for. Invariants: no panic; an ActOpen's endpoint is the sender's own address (or the server
// alias), unless Loose; only a proven session opens; a session found not FTP says so once and
// then decides nothing and holds nothing; a session from its SYN whose client speaks first,
// or whose server's first line is no 1xx/2xx reply, never opens; spans lie inside bytes that
// were fed; buffers and held bytes stay within their bounds; and when no bytes were given up
// (no gap), the decisions are exactly those of the line-per-segment feed.
func FuzzFeed(f *testing.F) {
	f.Add([]byte("S220 ready\r\nCPASV\r\nS227 Entering Passive Mode (198,51,100,20,19,137).\r\nCPORT 192,0,2,10,4,1\r\nS200 ok\r\n"), uint64(1), uint8(0), uint8(0))
	f.Add([]byte("S220 ready\r\nCEPSV\r\nS229 Entering Extended Passive Mode (|||6446|)\r\nCEPRT |1|192.0.2.10|5000|\r\n"), uint64(2), uint8(1), uint8(0))
	f.Add([]byte("S220-x\r\nS227 (198,51,100,20,19,137)\r\nS220 y\r\nCPORT 203,0,113,5,0,21\r\nCAUTH TLS\r\nS234 go\r\nCPORT 192,0,2,10,4,1\r\n"), uint64(3), uint8(0x1e), uint8(0))
	f.Add([]byte("S220 ready\nCPASV\nS227 =203,0,113,7,19,137\nCPASV\nS227 =203,0,113,5,19,137\n"), uint64(4), uint8(0x20), uint8(0))
	// Not FTP: a client first, HTTP after a greeting (PORT in the body), SMTP, a bad greeting.
	f.Add([]byte("CPOST / HTTP/1.1\r\nCHost: x\r\nC\r\nCPORT 192,0,2,10,12,234\r\nS200 ok\r\n"), uint64(5), uint8(0), uint8(0))
	f.Add([]byte("S220 ready\r\nCUSER / HTTP/1.1\r\nS331 pw\r\nCHost: x\r\nC\r\nCPORT 192,0,2,10,12,234\r\n"), uint64(6), uint8(0), uint8(0))
	f.Add([]byte("S220 mail ESMTP\r\nCEHLO x\r\nS250 ok\r\nCPORT 192,0,2,10,4,1\r\n"), uint64(7), uint8(0), uint8(0))
	f.Add([]byte("SSSH-2.0-x\r\nCPORT 192,0,2,10,4,1\r\nS227 (198,51,100,20,19,137)\r\n"), uint64(8), uint8(0), uint8(0))
	f.Add([]byte("S120 soon\r\nS220-a\r\nS227 (198,51,100,20,19,137)\r\nS220 b\r\nC\xff\xf4\xff\xf2ABOR\r\nS226 ok\r\nCPORT 192,0,2,10,4,1\r\n"), uint64(9), uint8(0), uint8(0))
	// Picked up mid-stream: plain (first lines skipped), resumed, resumed and vouched for.
	f.Add([]byte("CPE I\r\nSok.\r\nCPORT 192,0,2,10,4,1\r\nS500 no\r\nCNOOP\r\nS200 ok\r\nCPORT 192,0,2,10,4,2\r\nCPASV\r\nS227 (198,51,100,20,19,137)\r\n"), uint64(10), uint8(0), uint8(1))
	f.Add([]byte("CPORT 192,0,2,10,4,1\r\nS227 (198,51,100,20,19,137)\r\nCTYPE I\r\nS200 ok\r\nCPORT 192,0,2,10,4,2\r\n"), uint64(11), uint8(0), uint8(3))
	f.Add([]byte("CPORT 192,0,2,10,4,1\r\nS200 ok\r\nCPASV\r\nS227 (198,51,100,20,19,137)\r\n"), uint64(12), uint8(0), uint8(7))
	f.Add([]byte("Cngth: 0\r\nSTTP/1.1 200 OK\r\nCPOST /x HTTP/1.1\r\nCPORT 192,0,2,10,4,1\r\n"), uint64(13), uint8(0), uint8(1))
	f.Fuzz(func(t *testing.T, script []byte, seed uint64, flags uint8, mode uint8) {
		if len(script) > 1<<14 {
			return
		}
		lines := fuzzScript(script)
		client, server := netip.MustParseAddrPort("192.0.2.10:50000"), netip.MustParseAddrPort("198.51.100.20:21")
		if flags&1 != 0 {
			client, server = netip.MustParseAddrPort("[2001:db8:1::10]:50000"), netip.MustParseAddrPort("[2001:db8:2::20]:21")
		}
		alias := netip.MustParseAddr("203.0.113.7")
		cfg := &Config{
			AllowLowPorts: flags&2 != 0,
			Loose:         flags&4 != 0,
			MaxPending:    int(flags>>6) + 1,
			MaxLine:       []int{0, 12, 40, 100}[flags>>3&3],
			MaxHold:       []int{0, 64}[flags>>5&1],
		}
		tr := transcript{client: client, server: server, lines: lines,
			pickup: mode&1 != 0, resume: mode&3 == 3, vouch: mode&4 != 0}
		isnC, isnS := uint32(seed), uint32(seed>>32)

		ref := newFeeder(tr, cfg, isnC, isnS)
		ref.s.SetServerAlias(alias)
		for _, l := range tr.lines {
			n := len(ref.out)
			notFTP := ref.s.NotFTP()
			ref.feed(l.dir, ref.off[l.dir], ref.off[l.dir]+len(l.text))
			ref.off[l.dir] += len(l.text)
			checkProof(t, ref, n, notFTP)
		}
		if !tr.pickup && !tr.vouch && len(lines) > 0 && ref.s.stats.Gaps == 0 {
			// From the SYN, line by line: a client that speaks first (a complete line before
			// any server line), or a server whose first complete line is no 1xx/2xx reply,
			// is not FTP.
			first := lines[0]
			complete := bytes.HasSuffix(first.text, []byte("\n"))
			bad := first.dir == FromClient && complete
			if first.dir == FromServer && complete {
				l := bytes.TrimSuffix(bytes.TrimSuffix(first.text, []byte("\n")), []byte("\r"))
				c, ok := replyCode(l)
				bad = !ok || c >= 300 || (c >= 227 && c <= 229) || (len(l) > 3 && l[3] != ' ' && l[3] != '-')
			}
			if bad {
				for _, d := range ref.out {
					if d.Action == ActOpen {
						t.Fatalf("open in a session whose first line is %q: %+v", first.text, d)
					}
				}
				if !ref.s.NotFTP() {
					t.Fatalf("first line %q, session not found not FTP", first.text)
				}
			}
		}

		rng := rand.New(rand.NewPCG(seed, uint64(flags)))
		got := newFeeder(tr, cfg, isnC, isnS)
		got.s.SetServerAlias(alias)
		for g := 0; g < len(lines); {
			d := lines[g].dir
			n := 0
			for ; g < len(lines) && lines[g].dir == d; g++ {
				n += len(lines[g].text)
			}
			start := got.off[d]
			for _, p := range randomPieces(rng, n) {
				k := len(got.out)
				notFTP := got.s.NotFTP()
				got.feed(d, start+p.from, start+p.to)
				checkInvariants(t, got, cfg)
				checkProof(t, got, k, notFTP)
			}
			got.off[d] += n
		}
		for _, fd := range []*feeder{ref, got} {
			for _, dec := range fd.out {
				checkDecision(t, fd, cfg, dec, alias)
			}
		}
		if ref.s.stats.Gaps == 0 && got.s.stats.Gaps == 0 && !slices.Equal(ref.out, got.out) {
			t.Fatalf("decisions differ from the line-per-segment feed (-ref +got):\n%s",
				cmp.Diff(ref.out, got.out, cmpAddrPort, cmpopts.EquateEmpty()))
		}
	})
}

// randomPieces cuts [0, n) into pieces and returns them shuffled within a small window, some
// duplicated, some extended backwards to overlap their predecessor. Every byte is covered.
func randomPieces(rng *rand.Rand, n int) []piece {
	if n == 0 {
		return nil
	}
	var ps []piece
	for from := 0; from < n; {
		to := min(n, from+1+rng.IntN(40))
		ps = append(ps, piece{from, to})
		from = to
	}
	for i := range ps {
		switch rng.IntN(6) {
		case 0:
			ps[i].from = max(0, ps[i].from-rng.IntN(8))
		case 1:
			if j := i + 1 + rng.IntN(3); j < len(ps) {
				ps[i], ps[j] = ps[j], ps[i]
			}
		case 2:
			ps = append(ps, ps[rng.IntN(i+1)])
		}
	}
	return ps
}

func checkInvariants(t *testing.T, f *feeder, cfg *Config) {
	t.Helper()
	s := f.s
	maxHold := orDefault(cfg.MaxHold, defaultMaxHold)
	maxLine := orDefault(cfg.MaxLine, defaultMaxLine)
	for i, d := range s.dirs {
		if d.hold != nil && (d.hold.n > maxHold || len(d.hold.data) > 2*maxHold+64) {
			t.Fatalf("dir %d holds %d bytes in %d, bound %d", i, d.hold.n, len(d.hold.data), maxHold)
		}
		if d.plen >= maxLine || cap(d.buf) > maxLine {
			t.Fatalf("dir %d partial line %d bytes, buffer %d, bound %d", i, d.plen, cap(d.buf), maxLine)
		}
	}
	if s.pending > orDefault(cfg.MaxPending, defaultMaxPending) {
		t.Fatalf("pending %d over the limit", s.pending)
	}
}

// checkProof checks the decisions from index from on, made by one Feed: only a proven session
// opens; a session found not FTP says so once, then decides nothing and holds nothing.
func checkProof(t *testing.T, f *feeder, from int, wasNotFTP bool) {
	t.Helper()
	s := f.s
	if wasNotFTP && len(f.out) > from {
		t.Fatalf("decisions after not_ftp: %+v", f.out[from:])
	}
	for i, d := range f.out[from:] {
		switch {
		case d.Action == ActOpen && !s.Proven():
			t.Fatalf("open in a session not proven: %+v", d)
		case d.Reason == ReasonNotFTP:
			if !s.NotFTP() || from+i != len(f.out)-1 || d.Action != ActReject || d.Neutral.Len != 0 {
				t.Fatalf("not_ftp %+v: NotFTP %v, decision %d of %d", d, s.NotFTP(), from+i, len(f.out))
			}
		case d.Reason == ReasonUnproven && (s.Proven() && d.Action == ActOpen || d.Neutral.Len == 0):
			t.Fatalf("unproven decision %+v not neutralised", d)
		}
	}
	if s.NotFTP() {
		if s.Proven() {
			t.Fatal("proven and not FTP")
		}
		for d := range 2 {
			if _, n, cand := s.Partial(Dir(d)); n != 0 || cand {
				t.Fatalf("Partial(%v) = %d, %v on a session not FTP", Dir(d), n, cand)
			}
		}
	}
}

func checkDecision(t *testing.T, f *feeder, cfg *Config, d Decision, alias netip.Addr) {
	t.Helper()
	if d.Action == ActOpen {
		var own bool
		if d.Dir == FromClient {
			own = d.Endpoint.Addr() == f.s.Client().Addr()
		} else {
			own = d.Endpoint.Addr() == f.s.Server().Addr() || d.Endpoint.Addr() == alias
		}
		if !own && !(cfg.Loose && d.Loose) {
			t.Fatalf("open to %v from %v: not the sender's address (client %v server %v)", d.Endpoint, d.Dir, f.s.Client(), f.s.Server())
		}
		if own && d.Loose {
			t.Fatalf("open to own address %v marked loose", d.Endpoint)
		}
		if d.Endpoint.Port() < 1024 && !cfg.AllowLowPorts {
			t.Fatalf("open to low port %v", d.Endpoint)
		}
		if d.Text.Len == 0 {
			t.Fatalf("open without a text span: %+v", d)
		}
	}
	for _, sp := range []Span{d.Text, d.Neutral} {
		if sp.Len == 0 {
			continue
		}
		if _, err := f.span(d.Dir, sp); err != nil {
			t.Fatalf("%+v: %v", d, err)
		}
	}
	if len(d.NeutralWith) != d.Neutral.Len {
		t.Fatalf("neutral %+v with %q: lengths differ", d.Neutral, d.NeutralWith)
	}
	if d.Text.Len > 0 && (d.Action == ActOpen || d.Reason == ReasonBounce || d.Reason == ReasonLowPort) {
		// The text re-parses to the endpoint.
		txt, _ := f.span(d.Dir, d.Text)
		var ep netip.AddrPort
		switch d.Cmd {
		case CmdPORT, Cmd227:
			ep, _ = ParsePORT([]byte(txt))
		case CmdEPRT:
			ep, _, _ = ParseEPRT([]byte(txt))
		case Cmd229:
			_, _, st, en, err := Parse229(append(append([]byte{d.Delim, d.Delim, d.Delim}, txt...), d.Delim))
			if err == nil && st == 3 && en == 3+len(txt) {
				ep = d.Endpoint
			}
		}
		if ep != d.Endpoint {
			t.Fatalf("%+v: text %q does not parse to the endpoint (%v)", d, txt, ep)
		}
	}
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
