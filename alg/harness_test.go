package alg

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A transcript is a control connection written line by line, in the order the lines crossed
// the queue point. File format (testdata/transcripts/*.txt):
//
//	# comment
//	client 192.0.2.10:50312      endpoints as seen in the packets
//	server 198.51.100.20:21
//	pickup [resume] [vouch]      picked up mid-stream: no SYN, a pure ACK first in each
//	                             direction; then Resume at the first byte of each direction,
//	                             Vouch
//	S: text                      server line, CRLF appended
//	s: text                      server line, bare LF
//	C: text / c: text            client line, CRLF / bare LF
//
// A text in double quotes is unquoted as a Go string ("\xff\xf4ABOR").
type transcript struct {
	name           string
	client, server netip.AddrPort
	pickup         bool // no SYN: the session starts mid-stream
	resume, vouch  bool // with pickup: Resume both directions at their first byte; Vouch
	lines          []tline
}

type tline struct {
	dir  Dir
	text []byte // with its line end
}

func loadTranscript(t testing.TB, path string) transcript {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := transcript{name: strings.TrimSuffix(filepath.Base(path), ".txt")}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "client "):
			tr.client = netip.MustParseAddrPort(l[len("client "):])
		case strings.HasPrefix(l, "server "):
			tr.server = netip.MustParseAddrPort(l[len("server "):])
		case l == "pickup" || strings.HasPrefix(l, "pickup "):
			tr.pickup = true
			for _, w := range strings.Fields(l)[1:] {
				switch w {
				case "resume":
					tr.resume = true
				case "vouch":
					tr.vouch = true
				default:
					t.Fatalf("%s: bad pickup option %q", path, w)
				}
			}
		case len(l) >= 3 && l[1:3] == ": ":
			text := l[3:]
			if strings.HasPrefix(text, `"`) {
				u, err := strconv.Unquote(text)
				if err != nil {
					t.Fatalf("%s: bad quoted line %q: %v", path, l, err)
				}
				text = u
			}
			tl := tline{text: []byte(text)}
			switch l[0] {
			case 'C', 'c':
				tl.dir = FromClient
			case 'S', 's':
				tl.dir = FromServer
			default:
				t.Fatalf("%s: bad line %q", path, l)
			}
			if l[0] == 'C' || l[0] == 'S' {
				tl.text = append(tl.text, '\r')
			}
			tl.text = append(tl.text, '\n')
			tr.lines = append(tr.lines, tl)
		default:
			t.Fatalf("%s: bad line %q", path, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !tr.client.IsValid() || !tr.server.IsValid() {
		t.Fatalf("%s: client or server missing", path)
	}
	return tr
}

// feeder drives a session and remembers every byte fed per direction, by stream position,
// so that spans can be checked and shown.
type feeder struct {
	s      *Session
	isn    [2]uint32
	off    [2]int      // stream offset (from ISN+1) of the next line
	stream [2][]byte   // the whole stream of each direction
	fed    [2][]bool   // which stream bytes were fed at least once
	out    []Decision  // all decisions so far
	segs   [][]Segment // for diagnostics
}

func newFeeder(tr transcript, cfg *Config, isnC, isnS uint32) *feeder {
	f := &feeder{s: NewSession(tr.client, tr.server, cfg), isn: [2]uint32{isnC, isnS}}
	for _, l := range tr.lines {
		f.stream[l.dir] = append(f.stream[l.dir], l.text...)
	}
	for d := range 2 {
		f.fed[d] = make([]bool, len(f.stream[d]))
		if !tr.pickup {
			f.out = f.s.Feed(Segment{Dir: Dir(d), Seq: f.isn[d], SYN: true}, f.out)
			continue
		}
		// Picked up mid-stream: the first segment seen is a pure ACK at the first byte.
		f.out = f.s.Feed(Segment{Dir: Dir(d), Seq: f.isn[d] + 1}, f.out)
		if tr.resume {
			f.s.Resume(Dir(d), f.isn[d]+1)
		}
	}
	if tr.vouch {
		f.s.Vouch()
	}
	return f
}

// feed sends stream bytes [from, to) of direction d as one segment.
func (f *feeder) feed(d Dir, from, to int) {
	seq := f.isn[d] + 1 + uint32(from)
	p := bytes.Clone(f.stream[d][from:to])
	f.out = f.s.Feed(Segment{Dir: d, Seq: seq, Payload: p}, f.out)
	clear(p) // Feed must not retain the payload
	for i := from; i < to; i++ {
		f.fed[d][i] = true
	}
}

// span returns the bytes of span sp in direction d, or an error if it lies outside the bytes
// fed so far.
func (f *feeder) span(d Dir, sp Span) (string, error) {
	start := int(int32(sp.Seq - f.isn[d] - 1))
	if start < 0 || sp.Len < 0 || start+sp.Len > len(f.stream[d]) {
		return "", fmt.Errorf("span %+v outside the stream of %v (len %d)", sp, d, len(f.stream[d]))
	}
	for i := start; i < start+sp.Len; i++ {
		if !f.fed[d][i] {
			return "", fmt.Errorf("span %+v covers a byte not fed", sp)
		}
	}
	return string(f.stream[d][start : start+sp.Len]), nil
}

// feedLines feeds the transcript one line per segment.
func (f *feeder) feedLines(tr transcript) {
	for _, l := range tr.lines {
		f.feed(l.dir, f.off[l.dir], f.off[l.dir]+len(l.text))
		f.off[l.dir] += len(l.text)
	}
}

// describe renders a decision with its spans resolved to the bytes they cover.
func (f *feeder) describe(d Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v %v %v", d.Action, d.Cmd, d.Dir)
	if d.Reason != ReasonNone {
		fmt.Fprintf(&b, " %v", d.Reason)
	}
	if d.Endpoint.IsValid() {
		fmt.Fprintf(&b, " %v", d.Endpoint)
	}
	if d.Loose {
		b.WriteString(" loose")
	}
	if d.Text.Len > 0 {
		s, err := f.span(d.Dir, d.Text)
		if err != nil {
			s = err.Error()
		}
		fmt.Fprintf(&b, " text=%q", s)
	}
	if d.Delim != 0 {
		fmt.Fprintf(&b, " delim=%q", d.Delim)
	}
	if d.Action == ActOpen {
		// An open carries the span to neutralise should the daemon fail to carry it: the
		// verb or reply code itself.
		if s, err := f.span(d.Dir, d.Neutral); err != nil || !strings.EqualFold(s, d.Cmd.String()) || len(d.NeutralWith) != len(s) {
			fmt.Fprintf(&b, " BAD-neutral=%q>%q (%v)", s, d.NeutralWith, err)
		}
	} else if d.Neutral.Len > 0 || d.NeutralWith != "" {
		s, err := f.span(d.Dir, d.Neutral)
		if err != nil {
			s = err.Error()
		}
		fmt.Fprintf(&b, " neutral=%q>%q", s, d.NeutralWith)
	}
	return b.String()
}

func (f *feeder) describeAll() []string {
	var r []string
	for _, d := range f.out {
		r = append(r, f.describe(d))
	}
	return r
}

func loadTranscripts(t testing.TB) []transcript {
	t.Helper()
	paths, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	var trs []transcript
	for _, p := range paths {
		trs = append(trs, loadTranscript(t, p))
	}
	return trs
}
