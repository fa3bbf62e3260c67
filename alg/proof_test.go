package alg

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestProof: only a proven FTP dialogue opens pinholes (doc.go, "Proof").
func TestProof(t *testing.T) {
	const C, S = FromClient, FromServer
	port := "PORT 192,0,2,10,4,1\r\n"
	open := "open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1"
	notFTPClient := "reject other client not_ftp"
	body := "POST /upload HTTP/1.1\r\nHost: 198.51.100.20:21\r\nContent-Length: 22\r\n\r\nPORT 192,0,2,10,12,234\r\n"
	resume := func(c, s int) func(*Session) {
		return func(ss *Session) {
			if c >= 0 {
				ss.Resume(FromClient, isnClient+1+uint32(c))
			}
			if s >= 0 {
				ss.Resume(FromServer, isnServer+1+uint32(s))
			}
		}
	}
	tests := []struct {
		name   string
		how    start
		setup  func(*Session)
		steps  []step
		want   []string
		proven bool
		notFTP bool
	}{
		{
			name:   "greeting then PORT: proven by the PORT",
			steps:  []step{{dir: C, off: 0, text: "USER a\r\nPASS b\r\n" + port}},
			want:   []string{open},
			proven: true,
		},
		{
			name:  "greeted, known verbs, no PORT yet: not proven, not refused",
			steps: []step{{dir: C, off: 0, text: "USER a\r\nPASS b\r\nCWD /\r\nxpwd\r\n"}},
		},
		{
			name:   "HTTP POST in one segment after the greeting, PORT mid-segment: one not_ftp, nothing after",
			steps:  []step{{dir: C, off: 0, text: body}, {dir: S, off: 0, text: "227 Entering Passive Mode (198,51,100,20,19,137).\r\n"}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:   "HTTP POST before any greeting, PORT at a segment start",
			how:    synOnly,
			steps:  []step{{dir: C, off: 0, text: body[:len(body)-len("PORT 192,0,2,10,12,234\r\n")]}, {dir: C, off: len(body) - 24, text: "PORT 192,0,2,10,12,234\r\n"}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:   "PORT before the greeting: not FTP, no neutralisation",
			how:    synOnly,
			steps:  []step{{dir: C, off: 0, text: port}, {dir: S, off: 0, text: "220 ready\r\n"}, {dir: C, off: len(port), text: port}},
			want:   []string{"reject PORT client not_ftp"},
			notFTP: true,
		},
		{
			name:   "227 as the first server line: not FTP",
			how:    synOnly,
			steps:  []step{{dir: S, off: 0, text: "227 Entering Passive Mode (198,51,100,20,19,137).\r\n"}},
			want:   []string{"reject 227 server not_ftp"},
			notFTP: true,
		},
		{
			name:   "421 greeting: not a 1xx/2xx reply, not FTP",
			how:    synOnly,
			steps:  []step{{dir: S, off: 0, text: "421 Too many users, try later.\r\n"}},
			want:   []string{"reject none server not_ftp"},
			notFTP: true,
		},
		{
			name: "120 then 220 is a greeting",
			how:  synOnly,
			steps: []step{
				{dir: S, off: 0, text: "120 Service ready in 1 minute.\r\n220 ready\r\n"},
				{dir: C, off: 0, text: port},
			},
			want:   []string{open},
			proven: true,
		},
		{
			name: "a client line before a multi-line 220 is closed: not FTP",
			how:  synOnly,
			steps: []step{
				{dir: S, off: 0, text: "220-Welcome\r\n"},
				{dir: C, off: 0, text: "USER a\r\n"},
				{dir: S, off: 13, text: "220 ready\r\n"},
			},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name: "a multi-line 220 with a fake 227 inside, then PORT",
			how:  synOnly,
			steps: []step{
				{dir: S, off: 0, text: "220-Welcome\r\n227 (198,51,100,20,19,137)\r\n220 ready\r\n"},
				{dir: C, off: 0, text: port},
			},
			want:   []string{open},
			proven: true,
		},
		{
			name:   "an unknown verb after the greeting: not FTP",
			steps:  []step{{dir: C, off: 0, text: "USER a\r\nEHLO x\r\n" + port}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:   "a line starting with a space has no verb",
			steps:  []step{{dir: C, off: 0, text: " USER a\r\n"}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:   "an empty line or Telnet commands alone neither prove nor refuse",
			steps:  []step{{dir: C, off: 0, text: "\r\n\xff\xf1\r\n" + port}},
			want:   []string{open},
			proven: true,
		},
		{
			name:   "once proven, an unknown verb is passed on",
			steps:  []step{{dir: C, off: 0, text: port + "XYZZY\r\nPORT 192,0,2,10,4,2\r\n"}},
			want:   []string{open, "open PORT client 192.0.2.10:1026 text=192,0,2,10,4,2"},
			proven: true,
		},
		{
			name:   "an over-long line of garbage before the proof: not FTP",
			steps:  []step{{dir: C, off: 0, text: strings.Repeat("x", 600) + "\r\n" + port}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name: "bytes lost before the greeting is over: an exchange is needed instead",
			how:  synOnly,
			steps: []step{
				{dir: S, off: 3000, text: "ome\r\n"}, // beyond the hold: the greeting is lost
				{dir: C, off: 0, text: port},
				{dir: S, off: 3005, text: "500 no\r\n"},
				{dir: C, off: len(port), text: "NOOP\r\n"},
				{dir: S, off: 3013, text: "200 ok\r\n"},
				{dir: C, off: len(port) + 6, text: port},
			},
			want: []string{
				"note none server resync",
				"reject PORT client unproven neutral=PORT>XXXX",
				"open PORT client 192.0.2.10:1025 text=192,0,2,10,4,1",
			},
			proven: true,
		},
		{
			name: "mid-stream: a reply that started before the command does not count",
			how:  noSyn,
			steps: []step{
				{dir: S, off: 0, text: "x\r\n200 o"},
				{dir: C, off: 0, text: "x\r\nNOOP\r\n"},
				{dir: S, off: 8, text: "k\r\n"},
				{dir: C, off: 9, text: port},
				{dir: S, off: 11, text: "200 NOOP ok\r\n"},
				{dir: C, off: 9 + len(port), text: port},
			},
			want: []string{
				"reject PORT client unproven neutral=PORT>XXXX",
				open,
			},
			proven: true,
		},
		{
			name:  "mid-stream: PASV and its 227 are an exchange, so the 227 opens (pairing recovered at PASV)",
			how:   noSyn,
			setup: resume(0, 0),
			steps: []step{
				{dir: C, off: 0, text: "PASV\r\n"},
				{dir: S, off: 0, text: "227 Entering Passive Mode (198,51,100,20,19,137).\r\n"},
				{dir: C, off: 6, text: port},
			},
			want:   []string{"open 227 server 198.51.100.20:5001 text=198,51,100,20,19,137", open},
			proven: true,
		},
		{
			name:  "mid-stream: LPRT is no exchange (the server gets it neutralised)",
			how:   noSyn,
			setup: resume(0, 0),
			steps: []step{
				{dir: C, off: 0, text: "LPRT 4,4,192,0,2,10,2,4,1\r\n"},
				{dir: S, off: 0, text: "500 Unknown command.\r\n"},
				{dir: C, off: 27, text: port},
			},
			want: []string{
				"reject LPRT client unsupported neutral=LPRT>XXXX",
				"reject PORT client unproven neutral=PORT>XXXX",
			},
		},
		{
			name:  "mid-stream: SMTP after a pickup",
			how:   noSyn,
			setup: resume(0, 0),
			steps: []step{
				{dir: C, off: 0, text: "RSET\r\n"},
				{dir: C, off: 6, text: "MAIL FROM:<a@example.com>\r\n"},
			},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:  "mid-stream: Resume guessed wrong (a command's tail): skipped, not refused; the next line is",
			how:   noSyn,
			setup: resume(0, 0),
			steps: []step{
				{dir: C, off: 0, text: "OR file.bin\r\n"},
				{dir: S, off: 0, text: "150 Opening data connection.\r\n"},
				{dir: C, off: 13, text: "NOOP\r\n"},
				{dir: S, off: 30, text: "200 ok\r\n"},
				{dir: C, off: 19, text: "GET / HTTP/1.1\r\n"},
			},
			want:   []string{notFTPClient},
			notFTP: true,
		},
		{
			name:   "vouched and resumed: PORT opens at once",
			how:    noSyn,
			setup:  func(s *Session) { s.Vouch(); resume(0, -1)(s) },
			steps:  []step{{dir: C, off: 0, text: port}},
			want:   []string{open},
			proven: true,
		},
		{
			name:  "vouched without Resume: the first line is skipped to its LF",
			how:   noSyn,
			setup: func(s *Session) { s.Vouch() },
			steps: []step{{dir: C, off: 0, text: port + port}},
			want:  []string{open},
			// The first PORT was skipped (no line start known), the second opened.
			proven: true,
		},
		{
			name:   "GET request after the greeting (the loop checks that Vouch does not revive it)",
			steps:  []step{{dir: C, off: 0, text: "GET / HTTP/1.1\r\n"}},
			want:   []string{notFTPClient},
			notFTP: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, s := run(t, nil, netip.Addr{}, tt.how, tt.setup, tt.steps)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
			if s.Proven() != tt.proven || s.NotFTP() != tt.notFTP {
				t.Errorf("Proven %v NotFTP %v, want %v %v", s.Proven(), s.NotFTP(), tt.proven, tt.notFTP)
			}
			if tt.notFTP {
				s.Vouch()
				if s.Proven() || !s.NotFTP() {
					t.Error("Vouch revived a session found not FTP")
				}
				for d := range 2 {
					if _, n, cand := s.Partial(Dir(d)); n != 0 || cand {
						t.Errorf("Partial(%v) = %d, %v on a session not FTP", Dir(d), n, cand)
					}
				}
			}
		})
	}
}

// TestVouchResume: a session picked up mid-stream, vouched for, its client direction resumed
// at seq: a PORT at seq opens.
func TestVouchResume(t *testing.T) {
	s := NewSession(netip.MustParseAddrPort("192.0.2.5:50000"), testServer, nil)
	const seq = 0x7fff_fff0
	s.Vouch()
	s.Resume(FromClient, seq)
	out := s.Feed(Segment{Dir: FromClient, Seq: seq, Payload: []byte("PORT 192,0,2,5,4,1\r\n")}, nil)
	want := netip.MustParseAddrPort("192.0.2.5:1025")
	if len(out) != 1 || out[0].Action != ActOpen || out[0].Endpoint != want {
		t.Fatalf("decisions %+v, want one open for %v", out, want)
	}
	if !s.Proven() {
		t.Error("not proven")
	}
}

// TestResumeAfterAck: Resume still applies after pure ACKs of the direction were fed (the
// first packets seen of a picked-up connection are often ACKs), not after payload or a SYN.
func TestResumeAfterAck(t *testing.T) {
	port := []byte("PORT 192,0,2,10,4,1\r\n")
	s := NewSession(testClient, testServer, nil)
	s.Vouch()
	s.Feed(Segment{Dir: FromClient, Seq: 100}, nil)
	s.Resume(FromClient, 100)
	if out := s.Feed(Segment{Dir: FromClient, Seq: 100, Payload: port}, nil); len(out) != 1 || out[0].Action != ActOpen {
		t.Fatalf("after ACK and Resume: %+v, want one open", out)
	}
	s.Resume(FromClient, 200) // no-op: payload seen
	if out := s.Feed(Segment{Dir: FromClient, Seq: 121, Payload: port}, nil); len(out) != 1 || out[0].Action != ActOpen {
		t.Fatalf("after a no-op Resume: %+v, want one open", out)
	}

	s = NewSession(testClient, testServer, nil)
	s.Feed(Segment{Dir: FromClient, Seq: 99, SYN: true}, nil)
	s.Resume(FromClient, 500) // no-op: SYN seen
	if _, n, _ := s.Partial(FromClient); n != 0 {
		t.Fatal("partial line after Resume")
	}
	if start, _, _ := s.Partial(FromClient); start != 100 {
		t.Errorf("next seq %d after a no-op Resume, want 100", start)
	}
}

// TestTranscriptsNeedGreeting: every FTP transcript followed from its start, with the
// greeting taken out (the server lines before the first client line), is not FTP and opens
// nothing: the proof rule is not weakened to let the transcripts pass.
func TestTranscriptsNeedGreeting(t *testing.T) {
	for _, tr := range loadTranscripts(t) {
		if tr.pickup || len(tr.lines) == 0 || tr.lines[0].dir != FromServer {
			continue
		}
		t.Run(tr.name, func(t *testing.T) {
			i := 0
			for i < len(tr.lines) && tr.lines[i].dir == FromServer {
				i++
			}
			tr.lines = tr.lines[i:]
			f := newFeeder(tr, nil, 1000, 5000)
			f.feedLines(tr)
			if len(f.out) != 1 || f.out[0].Reason != ReasonNotFTP {
				t.Errorf("decisions %q, want one not_ftp", f.describeAll())
			}
		})
	}
}

// TestPartialUnproven: while a picked-up session is unproven, a server line that may become a
// 227/229 is a candidate (it will be refused and its code neutralised, so the caller must be
// able to hold it); once vouched for, only one answering PASV/EPSV is (the pairing is lost).
func TestPartialUnproven(t *testing.T) {
	for _, vouch := range []bool{false, true} {
		s := NewSession(testClient, testServer, nil)
		if vouch {
			s.Vouch()
		}
		s.Resume(FromServer, 1000)
		s.Feed(Segment{Dir: FromServer, Seq: 1000, Payload: []byte("227 Entering")}, nil)
		if _, n, cand := s.Partial(FromServer); n != 12 || cand != !vouch {
			t.Errorf("vouched %v: Partial = %d, %v; want 12, %v", vouch, n, cand, !vouch)
		}
	}
}
