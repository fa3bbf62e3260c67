package alg

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Expected decisions for each transcript under testdata/transcripts, fed one line per
// segment. Spans are shown as the bytes they cover.
var transcriptWant = map[string][]string{
	"attacks": {
		"reject PORT client bounce 203.0.113.5:21 text=\"203,0,113,5,0,21\" neutral=\"PORT\">\"XXXX\"",
		"reject PORT client low_port 192.0.2.10:21 text=\"192,0,2,10,0,21\" neutral=\"PORT\">\"XXXX\"",
		"reject PORT client bad_syntax neutral=\"PORT\">\"XXXX\"",
		"reject PORT client bad_syntax neutral=\"PORT\">\"XXXX\"",
		"reject PORT client bad_syntax neutral=\"PORT\">\"XXXX\"",
		"reject EPRT client family [2001:db8::1]:5000 text=\"|2|2001:db8::1|5000|\" delim='|' neutral=\"EPRT\">\"XXXX\"",
		"reject EPRT client bad_syntax neutral=\"EPRT\">\"XXXX\"",
		"reject LPRT client unsupported neutral=\"LPRT\">\"XXXX\"",
		"reject LPSV client unsupported neutral=\"LPSV\">\"XXXX\"",
		"reject 227 server unsolicited",
		"reject 227 server bounce 203.0.113.5:1025 text=\"203,0,113,5,4,1\" neutral=\"227\">\"425\"",
		"reject 227 server low_port 198.51.100.20:80 text=\"198,51,100,20,0,80\" neutral=\"227\">\"425\"",
		"reject 227 server bad_syntax neutral=\"227\">\"425\"",
		"reject 229 server bad_syntax neutral=\"229\">\"425\"",
		"reject 229 server unsolicited",
		"reject 227 server unsolicited",
	},
	"auth_tls": {
		"tls 234 server",
	},
	"curl_ipv6": {
		"open 229 server [2001:db8:2::20]:41000 text=\"41000\" delim='|'",
		"open EPRT client [2001:db8:1::10]:41001 text=\"|2|2001:db8:1::10|41001|\" delim='|'",
		"reject 227 server family 198.51.100.20:41001 text=\"198,51,100,20,160,41\" neutral=\"227\">\"425\"",
	},
	"filezilla_server": {
		"open 227 server 198.51.100.20:50000 text=\"198,51,100,20,195,80\"",
	},
	"iis_feat": {
		"open 227 server 198.51.100.20:5001 text=\"198,51,100,20,19,137\"",
		"open 229 server 198.51.100.20:50001 text=\"50001\" delim='|'",
	},
	"lftp_eprt": {
		"open EPRT client 192.0.2.10:37295 text=\"|1|192.0.2.10|37295|\" delim='|'",
		"open EPRT client 192.0.2.10:37296 text=\"!1!192.0.2.10!37296!\" delim='!'",
	},
	"old_client_lowercase": {
		"open PORT client 192.0.2.10:1036 text=\"192,0,2,10,4,12\"",
		"open PORT client 192.0.2.10:1037 text=\"192,0,2,10,4,13\"",
		"open 227 server 198.51.100.20:1038 text=\"198,51,100,20,4,14\"",
	},
	"proftpd_pasv_epsv": {
		"open 227 server 198.51.100.20:50069 text=\"198,51,100,20,195,149\"",
		"open 229 server 198.51.100.20:50019 text=\"50019\" delim='|'",
	},
	"pureftpd_banner": {
		"open 227 server 198.51.100.20:30000 text=\"198,51,100,20,117,48\"",
		"open 229 server 198.51.100.20:30001 text=\"30001\" delim='|'",
	},
	"servu_variants": {
		"open 227 server 198.51.100.20:51227 text=\"198,51,100,20,200,27\"",
		"open 227 server 198.51.100.20:51228 text=\"198,51,100,20,200,28\"",
		"open 227 server 198.51.100.20:51229 text=\"198,51,100,20,200,29\"",
		"open 227 server 198.51.100.20:51230 text=\"198,51,100,20,200,30\"",
	},
	"vsftpd_curl_epsv": {
		"open 229 server 198.51.100.20:40123 text=\"40123\" delim='|'",
	},
	"vsftpd_lftp_pasv": {
		"open 227 server 198.51.100.20:40000 text=\"198,51,100,20,156,64\"",
	},
	"client_first": {
		"reject other client not_ftp",
	},
	"not_a_greeting": {
		"reject none server not_ftp",
	},
	"pickup_exchange": {
		"reject PORT client unproven neutral=\"PORT\">\"XXXX\"",
		"open PORT client 192.0.2.10:1026 text=\"192,0,2,10,4,2\"",
		"open 227 server 198.51.100.20:5001 text=\"198,51,100,20,19,137\"",
	},
	"pickup_http": {
		"reject other client not_ftp",
	},
	"pickup_resume": {
		"reject PORT client unproven neutral=\"PORT\">\"XXXX\"",
		"reject 227 server unproven neutral=\"227\">\"425\"",
		"open PORT client 192.0.2.10:1026 text=\"192,0,2,10,4,2\"",
	},
	"pickup_vouch": {
		"open PORT client 192.0.2.10:1025 text=\"192,0,2,10,4,1\"",
		"open 227 server 198.51.100.20:5001 text=\"198,51,100,20,19,137\"",
	},
	"python_ftplib": {
		"open 227 server 198.51.100.20:50020 text=\"198,51,100,20,195,100\"",
		"open 227 server 198.51.100.20:50021 text=\"198,51,100,20,195,101\"",
		"open PORT client 192.0.2.10:50022 text=\"192,0,2,10,195,102\"",
	},
	"slipstream_greeted": {
		"reject other client not_ftp",
	},
	"slipstream_method": {
		"reject other client not_ftp",
	},
	"slipstream_post": {
		"reject other client not_ftp",
	},
	"smtp": {
		"reject other client not_ftp",
	},
	"tnftp_abort": {
		"open EPRT client 192.0.2.10:50001 text=\"|1|192.0.2.10|50001|\" delim='|'",
		"open EPRT client 192.0.2.10:50002 text=\"|1|192.0.2.10|50002|\" delim='|'",
	},
	"winscp_active": {
		"open PORT client 192.0.2.10:51201 text=\"192,0,2,10,200,1\"",
		"open PORT client 192.0.2.10:51202 text=\"192,0,2,10,200,2\"",
	},
	"windows_ftpexe_active": {
		"open PORT client 192.0.2.10:49813 text=\"192,0,2,10,194,149\"",
		"open PORT client 192.0.2.10:49814 text=\"192,0,2,10,194,150\"",
	},
}

func TestTranscripts(t *testing.T) {
	trs := loadTranscripts(t)
	if len(trs) != len(transcriptWant) {
		t.Errorf("%d transcripts, %d expectations", len(trs), len(transcriptWant))
	}
	for _, tr := range trs {
		t.Run(tr.name, func(t *testing.T) {
			want, ok := transcriptWant[tr.name]
			if !ok {
				t.Fatalf("no expectation for %s", tr.name)
			}
			f := newFeeder(tr, nil, 1000, 5000)
			f.feedLines(tr)
			if diff := cmp.Diff(want, f.describeAll()); diff != "" {
				t.Errorf("decisions (-want +got):\n%s", diff)
			}
		})
	}
}

var cmpAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// piece is a byte range [from, to) of one line, sent as one segment.
type piece struct{ from, to int }

// segmentation is one way to send a line as segments.
type segmentation struct {
	name   string
	pieces []piece
}

// segmentations calls fn, for a line of n bytes, with every 2-way split and (if threeWay)
// every 3-way split, each in several variants: in order, every piece twice, pieces reordered,
// overlapping retransmissions.
func segmentations(n int, threeWay bool, fn func(name func() string, pieces []piece)) {
	for a := 1; a < n; a++ {
		name2 := func(v string) func() string { return func() string { return fmt.Sprintf("2/%d/%s", a, v) } }
		fn(name2("inorder"), []piece{{0, a}, {a, n}})
		fn(name2("dup"), []piece{{0, a}, {0, a}, {a, n}, {a, n}})
		fn(name2("reorder"), []piece{{a, n}, {0, a}})
		fn(name2("overlap"), []piece{{0, a}, {a - 1, n}})
		if !threeWay {
			continue
		}
		for b := a + 1; b < n; b++ {
			name3 := func(v string) func() string { return func() string { return fmt.Sprintf("3/%d/%d/%s", a, b, v) } }
			fn(name3("inorder"), []piece{{0, a}, {a, b}, {b, n}})
			fn(name3("dup"), []piece{{0, a}, {a, b}, {0, a}, {a, b}, {b, n}, {a, n}})
			fn(name3("reorder"), []piece{{b, n}, {a, b}, {0, a}})
			fn(name3("middle"), []piece{{a, b}, {0, a}, {b, n}})
			fn(name3("overlap"), []piece{{0, b}, {a, n}})
		}
	}
}

// sessionState is the part of a session that decides the future: stream positions, line
// state, pairing, pending pinholes. Buffers and counters are left out.
type sessionState struct {
	Dirs                  [2]dirProj
	Ring                  [ringSize]Cmd
	RHead, RLen           uint8
	Over                  uint32
	Lost                  bool
	Multi                 uint16
	Pending               int
	Passthrough, Closed   bool
	HeldClient, HeldSever int
}

type dirProj struct {
	Init, Sync, Long, Fin bool
	Next, PStart          uint32
	PLen                  int
}

func stateOf(s *Session) sessionState {
	st := sessionState{Ring: s.ring, RHead: s.rHead, RLen: s.rLen, Over: s.over, Lost: s.lost,
		Multi: s.multi, Pending: s.pending, Passthrough: s.passthrough, Closed: s.closed}
	for i, d := range s.dirs {
		st.Dirs[i] = dirProj{d.init, d.sync, d.long, d.fin, d.next, d.pstart, d.plen}
	}
	if h := s.dirs[0].hold; h != nil {
		st.HeldClient = h.n
	}
	if h := s.dirs[1].hold; h != nil {
		st.HeldSever = h.n
	}
	return st
}

// TestSegmentations feeds every line of every transcript split at every byte offset in every
// 2- and 3-way segmentation (in order, duplicated, reordered, overlapping), with ordinary
// ISNs and with ISNs just below 2^32 so that sequence numbers wrap inside the stream. Each
// line is fed to a copy of the session as it stood before that line in the line-per-segment
// feed: the decisions (spans included) and the resulting session state must be the same.
func TestSegmentations(t *testing.T) {
	isns := []struct {
		name     string
		c, s     uint32
		threeWay bool
	}{
		{name: "isn_low", c: 1000, s: 5000, threeWay: true},
		{name: "isn_wrap", c: 0xffffff00, s: 0xffffffc0, threeWay: !testing.Short()},
	}
	for _, tr := range loadTranscripts(t) {
		for _, isn := range isns {
			t.Run(tr.name+"/"+isn.name, func(t *testing.T) {
				base := newFeeder(tr, nil, isn.c, isn.s)
				before := make([]Session, len(tr.lines)+1)
				outAt := make([]int, len(tr.lines)+1)
				before[0], outAt[0] = *base.s, len(base.out)
				for k, l := range tr.lines {
					base.feed(l.dir, base.off[l.dir], base.off[l.dir]+len(l.text))
					base.off[l.dir] += len(l.text)
					before[k+1], outAt[k+1] = *base.s, len(base.out)
				}
				var out []Decision
				off := [2]int{}
				runs := 0
				for k, l := range tr.lines {
					wantOut := base.out[outAt[k]:outAt[k+1]]
					wantState := stateOf(&before[k+1])
					seq0 := isn.c + 1
					if l.dir == FromServer {
						seq0 = isn.s + 1
					}
					seq0 += uint32(off[l.dir])
					segmentations(len(l.text), isn.threeWay, func(name func() string, pieces []piece) {
						runs++
						s := before[k]
						s.dirs[0].buf, s.dirs[0].hold, s.dirs[1].buf, s.dirs[1].hold = nil, nil, nil, nil
						out = out[:0]
						for _, p := range pieces {
							out = s.Feed(Segment{Dir: l.dir, Seq: seq0 + uint32(p.from), Payload: l.text[p.from:p.to]}, out)
						}
						// Decision and sessionState are comparable; cmp.Diff only to explain.
						if !slices.Equal(wantOut, out) {
							diff := cmp.Diff(wantOut, out, cmpAddrPort, cmpopts.EquateEmpty())
							t.Fatalf("line %d %q split %s: decisions (-want +got):\n%s", k, l.text, name(), diff)
						}
						if got := stateOf(&s); got != wantState {
							t.Fatalf("line %d %q split %s: state (-want +got):\n%s", k, l.text, name(), cmp.Diff(wantState, got))
						}
					})
					off[l.dir] += len(l.text)
				}
				if runs == 0 {
					t.Fatal("no segmentation ran")
				}
			})
		}
	}
}
