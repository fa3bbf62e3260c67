package alg

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

var (
	testClient = netip.MustParseAddrPort("192.0.2.10:50000")
	testServer = netip.MustParseAddrPort("198.51.100.20:21")
)

const (
	isnClient = 0xfffffff0 // the client stream wraps after 15 bytes
	isnServer = 7000
)

// step is one segment of a scripted exchange: off is the stream offset of its first byte
// (ISN+1 is offset 0, or the first byte after the greeting when run feeds one).
type step struct {
	dir      Dir
	off      int
	text     string
	fin, rst bool
}

// greeting is the server's first line in sessions followed from their start.
const greeting = "220 ready\r\n"

// start is how a scripted session begins.
type start uint8

const (
	greeted start = iota // both SYNs, then the server's greeting; step offsets follow it
	synOnly              // both SYNs, nothing else
	noSyn                // picked up mid-stream: no SYN, no greeting
)

// run feeds the steps (after the start, then setup if not nil) and describes every decision,
// spans resolved against the text of the steps.
func run(t *testing.T, cfg *Config, alias netip.Addr, how start, setup func(*Session), steps []step) ([]string, *Session) {
	t.Helper()
	s := NewSession(testClient, testServer, cfg)
	if alias.IsValid() {
		s.SetServerAlias(alias)
	}
	isn := [2]uint32{isnClient, isnServer}
	var out []Decision
	var stream [2][]byte
	if how != noSyn {
		for d := range 2 {
			out = s.Feed(Segment{Dir: Dir(d), Seq: isn[d], SYN: true}, out)
		}
	}
	if how == greeted {
		out = s.Feed(Segment{Dir: FromServer, Seq: isn[FromServer] + 1, Payload: []byte(greeting)}, out)
		stream[FromServer] = []byte(greeting)
		isn[FromServer] += uint32(len(greeting))
	}
	if setup != nil {
		setup(s)
	}
	base := len(stream[FromServer])
	for _, st := range steps {
		o := st.off
		if st.dir == FromServer {
			o += base
		}
		if n := o + len(st.text); n > len(stream[st.dir]) {
			stream[st.dir] = append(stream[st.dir], make([]byte, n-len(stream[st.dir]))...)
		}
		copy(stream[st.dir][o:], st.text)
		out = s.Feed(Segment{Dir: st.dir, Seq: isn[st.dir] + 1 + uint32(st.off), Payload: []byte(st.text), FIN: st.fin, RST: st.rst}, out)
	}
	isn[FromServer] -= uint32(base)
	var r []string
	for _, d := range out {
		str := d.Action.String() + " " + d.Cmd.String() + " " + d.Dir.String()
		if d.Reason != ReasonNone {
			str += " " + d.Reason.String()
		}
		if d.Endpoint.IsValid() {
			str += " " + d.Endpoint.String()
		}
		if d.Loose {
			str += " loose"
		}
		text := func(sp Span) string {
			o := int(int32(sp.Seq - isn[d.Dir] - 1))
			if o < 0 || o+sp.Len > len(stream[d.Dir]) {
				t.Fatalf("span %+v outside the stream", sp)
			}
			return string(stream[d.Dir][o : o+sp.Len])
		}
		if d.Text.Len > 0 {
			str += " text=" + text(d.Text)
		}
		if d.Neutral.Len > 0 && d.Action != ActOpen {
			str += " neutral=" + text(d.Neutral) + ">" + d.NeutralWith
		}
		r = append(r, str)
	}
	return r, s
}

func TestSessionStream(t *testing.T) {
	const C, S = FromClient, FromServer
	pasv := "PASV\r\n"
	r227 := "227 Entering Passive Mode (198,51,100,20,19,137).\r\n"
	tests := []struct {
		name  string
		cfg   *Config
		alias netip.Addr
		how   start
		steps []step
		want  []string
		check func(t *testing.T, s *Session)
	}{
		{
			name: "hold overflow gives up the gap and resyncs at the next LF",
			cfg:  &Config{MaxHold: 64},
			steps: []step{
				{dir: C, off: 0, text: "PORT 192,0,2,10,4,1\r\n"},
				// 100 bytes missing before this one: beyond the 64-byte hold.
				{dir: C, off: 121, text: "OOP\r\nPORT 192,0,2,10,4,2\r\n"},
				// The gap filler arrives late: already given up, ignored.
				{dir: C, off: 21, text: strings.Repeat("N", 98) + "\r\nN"},
				{dir: S, off: 0, text: r227},
			},
			want: []string{
				"open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1",
				"note none client resync",
				"open PORT client 192.0.2.10:1026 text=192,0,2,10,4,2",
				"reject 227 server unpaired",
			},
			check: func(t *testing.T, s *Session) {
				st := s.Stats()
				if st.Gaps != 1 || st.Resyncs != 1 {
					t.Errorf("gaps %d resyncs %d, want 1 1", st.Gaps, st.Resyncs)
				}
			},
		},
		{
			name: "held bytes dropped by a jump are counted",
			cfg:  &Config{MaxHold: 64},
			steps: []step{
				{dir: C, off: 10, text: "held\r\n"},
				{dir: C, off: 200, text: "x\r\nPORT 192,0,2,10,4,3\r\n"},
			},
			want: []string{
				"note none client resync",
				"open PORT client 192.0.2.10:1027 text=192,0,2,10,4,3",
			},
			check: func(t *testing.T, s *Session) {
				if got := s.Stats().HeldBytesDropped; got != 6 {
					t.Errorf("held bytes dropped %d, want 6", got)
				}
			},
		},
		{
			name: "mid-stream start: unsynchronised until the first LF, unproven until an exchange, pairing unknown",
			how:  noSyn,
			steps: []step{
				{dir: C, off: 100, text: "ORT 203,0,113,5,0,21\r\nPORT 192,0,2,10,4,1\r\n"},
				{dir: C, off: 143, text: pasv},
				{dir: S, off: 500, text: r227},
				{dir: S, off: 500 + len(r227), text: r227},
			},
			want: []string{
				"reject PORT client unproven neutral=PORT>XXXX",
				// The second 227 follows PASV: an exchange, so the session is proven; but the
				// server was not synchronised when PASV went, so the pairing is still unknown.
				"reject 227 server unpaired",
			},
			check: func(t *testing.T, s *Session) {
				if !s.Proven() {
					t.Error("not proven after PASV and a reply")
				}
			},
		},
		{
			name: "after a mid-stream start, pairing recovers at the next PASV once the server is synchronised",
			how:  noSyn,
			steps: []step{
				{dir: S, off: 500, text: "ing.\r\n200 NOOP ok.\r\n"},
				{dir: C, off: 100, text: "P\r\n"},
				{dir: C, off: 103, text: pasv},
				{dir: S, off: 520, text: r227},
			},
			want: []string{
				"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137",
			},
			check: func(t *testing.T, s *Session) {
				if st := s.Stats(); st.Repaired != 1 {
					t.Errorf("repaired %d, want 1", st.Repaired)
				}
			},
		},
		{
			name: "a stale reply after the recovering PASV fails closed",
			how:  noSyn,
			steps: []step{
				{dir: S, off: 500, text: "ing.\r\n"},
				{dir: C, off: 100, text: "P\r\n" + pasv},
				// The answer to a command sent before ftpalg came back, then the 227.
				{dir: S, off: 506, text: "226 Transfer complete.\r\n" + r227},
			},
			want: []string{
				"reject 227 server unsolicited",
			},
		},
		{
			name: "long line noted once, split or not; next line parsed",
			steps: []step{
				{dir: C, off: 0, text: "NOOP " + strings.Repeat("x", 300)},
				{dir: C, off: 305, text: strings.Repeat("x", 300)},
				{dir: C, off: 605, text: strings.Repeat("x", 300) + "\r\nPORT 192,0,2,10,4,1\r\n"},
				{dir: S, off: 0, text: "500 Input line too long.\r\n200 PORT command successful.\r\n"},
			},
			want: []string{
				"note none client line_too_long",
				"open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1",
			},
		},
		{
			name: "over-long PORT is neutralised, over-long 227 answering PASV too",
			steps: []step{
				{dir: C, off: 0, text: "PORT 203,0,113,5,0,21" + strings.Repeat(" ", 600) + "\r\n"},
				{dir: S, off: 0, text: "500 Unknown command.\r\n"},
				{dir: C, off: 623, text: pasv},
				{dir: S, off: 22, text: "227 " + strings.Repeat("=", 600) + "(198,51,100,20,19,137)\r\n"},
			},
			want: []string{
				"reject PORT client line_too_long neutral=PORT>XXXX",
				"reject 227 server line_too_long neutral=227>425",
			},
		},
		{
			name: "more than 8 unanswered commands: unknown kinds are never guessed",
			steps: []step{
				{dir: C, off: 0, text: strings.Repeat("NOOP\r\n", 8) + pasv},
				{dir: S, off: 0, text: strings.Repeat("200 ok\r\n", 8) + r227},
				{dir: C, off: 54, text: pasv},
				{dir: S, off: 64 + len(r227), text: r227},
			},
			want: []string{
				"reject 227 server unpaired",
				"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137",
			},
		},
		{
			name: "pipelined commands pair in order",
			steps: []step{
				{dir: C, off: 0, text: "TYPE I\r\nPASV\r\nEPSV\r\n"},
				{dir: S, off: 0, text: "200 Switching to Binary mode.\r\n" + r227 + "229 Entering Extended Passive Mode (|||6446|)\r\n"},
			},
			want: []string{
				"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137",
				"open 229 server 198.51.100.20:6446 text=6446",
			},
		},
		{
			name: "limit, then Release frees a slot",
			cfg:  &Config{MaxPending: 1},
			steps: []step{
				{dir: C, off: 0, text: pasv},
				{dir: S, off: 0, text: r227},
				{dir: C, off: 6, text: "PORT 192,0,2,10,4,1\r\n"},
			},
			want: []string{
				"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137",
				"reject PORT client limit 192.0.2.10:1025 text=192,0,2,10,4,1 neutral=PORT>XXXX",
			},
			check: func(t *testing.T, s *Session) {
				s.Release()
				s.Release() // extra releases never go negative
				if s.Pending() != 0 {
					t.Fatalf("pending %d after release", s.Pending())
				}
				seq := uint32(isnClient)
				out := s.Feed(Segment{Dir: FromClient, Seq: seq + 1 + 27, Payload: []byte("PORT 192,0,2,10,4,2\r\n")}, nil)
				if len(out) != 1 || out[0].Action != ActOpen {
					t.Fatalf("after Release: %+v, want one open", out)
				}
			},
		},
		{
			name: "loose accepts a foreign address and says so",
			cfg:  &Config{Loose: true},
			steps: []step{
				{dir: C, off: 0, text: "PORT 203,0,113,5,4,1\r\nPORT 203,0,113,5,0,21\r\n"},
			},
			want: []string{
				"open PORT client 203.0.113.5:1025 loose text=203,0,113,5,4,1",
				"reject PORT client low_port 203.0.113.5:21 text=203,0,113,5,0,21 neutral=PORT>XXXX",
			},
		},
		{
			name:  "server alias (port-forward DNAT) is the server's own address",
			alias: netip.MustParseAddr("203.0.113.7"),
			steps: []step{
				{dir: C, off: 0, text: pasv + pasv},
				{dir: S, off: 0, text: "227 =203,0,113,7,19,137\r\n227 =203,0,113,8,19,137\r\n"},
			},
			want: []string{
				"open 227 server 203.0.113.7:5001 text=203,0,113,7,19,137",
				"reject 227 server bounce 203.0.113.8:5001 text=203,0,113,8,19,137 neutral=227>425",
			},
		},
		{
			name: "low ports allowed by config",
			cfg:  &Config{AllowLowPorts: true},
			steps: []step{
				{dir: C, off: 0, text: "PORT 192,0,2,10,0,20\r\n"},
			},
			want: []string{"open PORT client 192.0.2.10:20 text=192,0,2,10,0,20"},
		},
		{
			name: "multi-line: continuation 227- ignored, closing 227 counts; 1xx multi-line pairs nothing",
			steps: []step{
				{dir: C, off: 0, text: pasv},
				{dir: S, off: 0, text: "150-about to\r\n227 (198,51,100,20,1,1)\r\n150 go\r\n227-Entering Passive Mode (198,51,100,20,19,1)\r\n 227 x\r\n227-(198,51,100,20,19,2)\r\n227 Entering Passive Mode (198,51,100,20,19,137)\r\n"},
			},
			want: []string{"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137"},
		},
		{
			name: "AUTH TLS + 234: passthrough from the next byte, both directions",
			steps: []step{
				{dir: C, off: 0, text: "AUTH TLS\r\n"},
				{dir: S, off: 0, text: "234 Proceed with negotiation.\r\n227 (203,0,113,5,0,21)\r\n"},
				{dir: C, off: 10, text: "PORT 203,0,113,5,0,21\r\n"},
			},
			want: []string{"tls 234 server"},
			check: func(t *testing.T, s *Session) {
				if !s.Passthrough() {
					t.Error("not passthrough")
				}
			},
		},
		{
			name: "234 to something else than AUTH is nothing",
			steps: []step{
				{dir: C, off: 0, text: "NOOP\r\n"},
				{dir: S, off: 0, text: "234 hmm\r\n"},
			},
			check: func(t *testing.T, s *Session) {
				if s.Passthrough() {
					t.Error("passthrough without AUTH")
				}
			},
		},
		{
			name: "binary and NUL bytes from the client: not FTP, nothing parsed after",
			steps: []step{
				{dir: C, off: 0, text: "\x00\xff\xfe\r\nPASV\x00\r\n"},
				{dir: S, off: 0, text: "227 (198,51,100,20,19,137)\r\n"},
				{dir: C, off: 11, text: "PORT 192,0,2,10,4,1\r\n"},
			},
			want: []string{"reject other client not_ftp"},
			check: func(t *testing.T, s *Session) {
				if !s.NotFTP() || s.Proven() {
					t.Errorf("NotFTP %v Proven %v, want true false", s.NotFTP(), s.Proven())
				}
			},
		},
		{
			name: "Telnet IP and DM before ABOR; binary server lines: no pinhole, no panic",
			steps: []step{
				{dir: C, off: 0, text: "NOOP\r\n\xff\xf4\xff\xf2ABOR\r\n"},
				{dir: S, off: 0, text: "\x00227 (198,51,100,20,19,137)\r\n500 a\r\n227\x00(198,51,100,20,19,137)\r\n227 (198,51,100,20,19,137)\r\n"},
			},
			want: []string{"reject 227 server unsolicited"},
		},
		{
			name: "Telnet IP, then DM alone, then ABOR (BSD ftp sends IAC IP IAC urgent, then DM ABOR)",
			steps: []step{
				{dir: C, off: 0, text: "\xff\xf4\xff"},
				{dir: C, off: 3, text: "\xf2ABOR\r\n\xf2abor\r\nPORT 192,0,2,10,4,1\r\n"},
			},
			want: []string{"open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1"},
		},
		{
			name: "a verb after Telnet commands is inspected; its span starts at the verb",
			steps: []step{
				{dir: C, off: 0, text: "\xff\xf4\xff\xf2PORT 203,0,113,5,4,1\r\n"},
			},
			want: []string{"reject PORT client bounce 203.0.113.5:1025 text=203,0,113,5,4,1 neutral=PORT>XXXX"},
		},
		{
			name: "FIN both ways closes; nothing parsed after",
			steps: []step{
				{dir: C, off: 0, text: "QUIT\r\n", fin: true},
				{dir: S, off: 0, text: "221 Goodbye.\r\n", fin: true},
				{dir: C, off: 6, text: "PORT 192,0,2,10,4,1\r\n"},
			},
			check: func(t *testing.T, s *Session) {
				if !s.Closed() {
					t.Error("not closed")
				}
			},
		},
		{
			name: "RST closes",
			steps: []step{
				{dir: S, off: 0, rst: true},
				{dir: C, off: 0, text: "PORT 192,0,2,10,4,1\r\n"},
			},
			check: func(t *testing.T, s *Session) {
				if !s.Closed() {
					t.Error("not closed")
				}
			},
		},
		{
			name: "a segment implausibly far ahead is ignored, not taken as a gap",
			steps: []step{
				{dir: C, off: 1 << 25, text: "\r\nPORT 192,0,2,10,4,9\r\n"},
				{dir: C, off: 0, text: "PORT 192,0,2,10,4,1\r\n"},
			},
			want: []string{"open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1"},
			check: func(t *testing.T, s *Session) {
				if st := s.Stats(); st.Ignored != 23 || st.Gaps != 0 {
					t.Errorf("ignored %d gaps %d, want 23 0", st.Ignored, st.Gaps)
				}
			},
		},
		{
			name: "tab after the verb is a separator",
			steps: []step{
				{dir: C, off: 0, text: "PORT\t203,0,113,5,4,1\r\n"},
			},
			want: []string{"reject PORT client bounce 203.0.113.5:1025 text=203,0,113,5,4,1 neutral=PORT>XXXX"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, s := run(t, tt.cfg, tt.alias, tt.how, nil, tt.steps)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

func TestPartial(t *testing.T) {
	tests := []struct {
		name      string
		noGreet   bool   // the server has not greeted yet
		before    []step // complete exchange first (after the greeting)
		dir       Dir
		partial   string
		candidate bool
	}{
		{name: "PORT prefix", dir: FromClient, partial: "PO", candidate: true},
		{name: "port lower case with argument", dir: FromClient, partial: "port 192,0,2", candidate: true},
		{name: "EPRT", dir: FromClient, partial: "EPRT |1|", candidate: true},
		{name: "LPRT", dir: FromClient, partial: "LPRT 4", candidate: true},
		{name: "RETR", dir: FromClient, partial: "RETR fi", candidate: false},
		{name: "PORTS is another verb", dir: FromClient, partial: "PORTS", candidate: false},
		{name: "227 while PASV outstanding", before: []step{{dir: FromClient, text: "PASV\r\n"}},
			dir: FromServer, partial: "227 Entering Pa", candidate: true},
		{name: "22 while PASV outstanding", before: []step{{dir: FromClient, text: "PASV\r\n"}},
			dir: FromServer, partial: "22", candidate: true},
		{name: "229 while PASV outstanding", before: []step{{dir: FromClient, text: "PASV\r\n"}},
			dir: FromServer, partial: "229 (", candidate: false},
		{name: "229 while EPSV outstanding", before: []step{{dir: FromClient, text: "EPSV\r\n"}},
			dir: FromServer, partial: "229 Entering", candidate: true},
		{name: "227 without PASV", dir: FromServer, partial: "227 Entering Pa", candidate: false},
		{name: "PORT before the greeting is no candidate: the session is not FTP", noGreet: true,
			dir: FromClient, partial: "PORT 192", candidate: false},
		{name: "a PORT after Telnet IP and DM", dir: FromClient, partial: "\xff\xf4\xff\xf2PO", candidate: true},
		{name: "a PORT may follow an incomplete Telnet command", dir: FromClient, partial: "\xff", candidate: true},
		{name: "inside a multi-line reply", before: []step{{dir: FromClient, text: "PASV\r\n"}, {dir: FromServer, text: "211-x\r\n"}},
			dir: FromServer, partial: "227 (", candidate: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSession(testClient, testServer, nil)
			isn := [2]uint32{isnClient, isnServer}
			var off [2]int
			for d := range 2 {
				s.Feed(Segment{Dir: Dir(d), Seq: isn[d], SYN: true}, nil)
			}
			if !tt.noGreet {
				s.Feed(Segment{Dir: FromServer, Seq: isn[FromServer] + 1, Payload: []byte(greeting)}, nil)
				off[FromServer] = len(greeting)
			}
			for _, st := range append(tt.before, step{dir: tt.dir, text: tt.partial}) {
				s.Feed(Segment{Dir: st.dir, Seq: isn[st.dir] + 1 + uint32(off[st.dir]), Payload: []byte(st.text)}, nil)
				off[st.dir] += len(st.text)
			}
			start, n, cand := s.Partial(tt.dir)
			wantStart := isn[tt.dir] + 1 + uint32(off[tt.dir]-len(tt.partial))
			type res struct {
				Start     uint32
				N         int
				Candidate bool
			}
			if diff := cmp.Diff(res{wantStart, len(tt.partial), tt.candidate}, res{start, n, cand}); diff != "" {
				t.Errorf("Partial (-want +got):\n%s", diff)
			}
		})
	}
}

// noCommandSegments are segments that complete no command needing a decision.
var noCommandSegments = []struct {
	name string
	dir  Dir
	text string
}{
	{name: "150 reply", dir: FromServer, text: "150 Opening BINARY mode data connection for file.bin (4096 bytes).\r\n"},
	{name: "226 reply", dir: FromServer, text: "226 Transfer complete.\r\n"},
	{name: "RETR", dir: FromClient, text: "RETR pub/file.bin\r\n"},
	{name: "LIST", dir: FromClient, text: "LIST -a\r\n"},
	{name: "FEAT list", dir: FromServer, text: "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n UTF8\r\n211 End\r\n"},
}

// greetedSession returns a session between testClient and testServer, both ISNs 0, whose
// server has sent the greeting: the client stream is at 1, the server's at 1+len(greeting).
func greetedSession(cfg *Config) *Session {
	s := NewSession(testClient, testServer, cfg)
	s.Feed(Segment{Dir: FromClient, Seq: 0, SYN: true}, nil)
	s.Feed(Segment{Dir: FromServer, Seq: 0, SYN: true}, nil)
	s.Feed(Segment{Dir: FromServer, Seq: 1, Payload: []byte(greeting)}, nil)
	return s
}

// TestNoCommandZeroAlloc asserts the hot-path claim: a segment with no command allocates
// nothing, also when it continues a line split across segments (once the buffer exists).
func TestNoCommandZeroAlloc(t *testing.T) {
	for _, tt := range noCommandSegments {
		t.Run(tt.name, func(t *testing.T) {
			s := greetedSession(nil)
			seq := uint32(1)
			if tt.dir == FromServer {
				seq += uint32(len(greeting))
			}
			out := make([]Decision, 0, 4)
			p := []byte(tt.text)
			half := len(p) / 2
			allocs := testing.AllocsPerRun(100, func() {
				out = s.Feed(Segment{Dir: tt.dir, Seq: seq, Payload: p}, out[:0])
				seq += uint32(len(p))
				out = s.Feed(Segment{Dir: tt.dir, Seq: seq, Payload: p[:half]}, out[:0])
				out = s.Feed(Segment{Dir: tt.dir, Seq: seq + uint32(half), Payload: p[half:]}, out[:0])
				seq += uint32(len(p))
			})
			if allocs != 0 || len(out) != 0 {
				t.Errorf("%v allocs per run, %d decisions; want 0, 0", allocs, len(out))
			}
		})
	}
}

// TestCommandZeroAlloc: PORT and 227 segments allocate nothing either when out has room.
func TestCommandZeroAlloc(t *testing.T) {
	s := greetedSession(&Config{MaxPending: 1 << 30})
	port := []byte("PORT 192,0,2,10,4,1\r\n")
	pasv := []byte("PASV\r\n")
	r227 := []byte("200 PORT command successful.\r\n227 Entering Passive Mode (198,51,100,20,19,137).\r\n")
	cseq, sseq := uint32(1), uint32(1+len(greeting))
	out := make([]Decision, 0, 4)
	allocs := testing.AllocsPerRun(100, func() {
		out = s.Feed(Segment{Dir: FromClient, Seq: cseq, Payload: port}, out[:0])
		cseq += uint32(len(port))
		out = s.Feed(Segment{Dir: FromClient, Seq: cseq, Payload: pasv}, out)
		cseq += uint32(len(pasv))
		out = s.Feed(Segment{Dir: FromServer, Seq: sseq, Payload: r227}, out)
		sseq += uint32(len(r227))
	})
	if allocs != 0 || len(out) != 2 || out[0].Action != ActOpen || out[1].Action != ActOpen {
		t.Errorf("%v allocs per run, decisions %+v; want 0 allocs, two opens", allocs, out)
	}
}

// TestSessionMemory checks the footprint target: an idle session after a typical login
// exchange stays well under 2 KB, so 10,000 sessions fit in a few tens of MB.
func TestSessionMemory(t *testing.T) {
	size := unsafe.Sizeof(Session{})
	t.Logf("Session struct: %d bytes", size)
	if size > 512 {
		t.Errorf("Session is %d bytes, want <= 512", size)
	}
	const n = 10000
	login := []struct {
		dir  Dir
		text string
	}{
		{FromServer, "220 (vsFTPd 3.0.3)\r\n"}, {FromClient, "USER anonymous\r\n"},
		{FromServer, "331 Please specify the password.\r\n"}, {FromClient, "PASS ftp@\r\n"},
		{FromServer, "230 Login successful.\r\n"},
		{FromClient, "PW"}, {FromClient, "D\r\n"}, // one split line: the client buffer exists
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	sessions := make([]*Session, n)
	for i := range sessions {
		s := NewSession(testClient, testServer, nil)
		seq := [2]uint32{}
		for d := range 2 {
			s.Feed(Segment{Dir: Dir(d), SYN: true}, nil)
			seq[d] = 1
		}
		for _, l := range login {
			s.Feed(Segment{Dir: l.dir, Seq: seq[l.dir], Payload: []byte(l.text)}, nil)
			seq[l.dir] += uint32(len(l.text))
		}
		sessions[i] = s
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per := (m1.HeapAlloc - m0.HeapAlloc) / n
	t.Logf("%d bytes per session (%d sessions: %.1f MB)", per, n, float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20))
	if per > 2048 {
		t.Errorf("%d bytes per session, want <= 2048", per)
	}
	runtime.KeepAlive(sessions)
}

func TestStrings(t *testing.T) {
	got := []string{ActOpen.String(), ActReject.String(), ActTLS.String(), ActNote.String(), Action(0).String(),
		CmdPORT.String(), Cmd229.String(), CmdLPSV.String(), Cmd(200).String(),
		ReasonBounce.String(), ReasonLowPort.String(), ReasonBadSyntax.String(), ReasonLineTooLong.String(), Reason(200).String(),
		FromClient.String(), FromServer.String()}
	want := []string{"open", "reject", "tls", "note", "invalid", "PORT", "229", "LPSV", "invalid",
		"bounce", "low_port", "bad_syntax", "line_too_long", "invalid", "client", "server"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
