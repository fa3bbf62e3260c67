package alg

import (
	"bytes"
	"net/netip"
)

// ringSize bounds the client commands whose replies are tracked by kind. Commands beyond it
// are still counted, as kind unknown, so that pairing stays exact without guessing.
const ringSize = 8

// maxJump bounds how far ahead of the next expected byte a segment may start and still be
// taken as part of the stream. A control connection never has megabytes in flight; a segment
// that far ahead is bogus (or from another incarnation) and is ignored rather than allowed to
// move the stream position.
const maxJump = 1 << 24

// phase is how far a session has come in proving that it carries an FTP dialogue. It only
// moves forward: greet → greeting → ready → proven, or exchange → answer → ready → proven
// (a session picked up mid-stream, or one that lost bytes before its greeting was complete);
// any phase before proven can end in notFTP instead, which is final.
type phase uint8

const (
	phaseGreet    phase = iota // from the SYN: no server line yet; the first must be a 1xx/2xx reply
	phaseGreeting              // the greeting began (1xx, or an open multi-line 2xx); not over yet
	phaseExchange              // mid-stream: waiting for a client command with a known verb
	phaseAnswer                // mid-stream: known verb seen; waiting for a server reply after it
	phaseReady                 // greeted or exchanged: the first PORT/EPRT/227/229 proves the session
	phaseProven                // proven (or vouched for): no more checks
	phaseNotFTP                // not an FTP dialogue: nothing is parsed any more
)

// Session is the state of one FTP control connection. It is not safe for concurrent use.
// An idle session holds no buffers: the line buffer and the hold buffer of a direction are
// allocated the first time a line spans segments or a segment arrives out of order.
type Session struct {
	client, server netip.AddrPort
	alias          netip.Addr

	maxPending int
	maxLine    int
	maxHold    int
	allowLow   bool
	loose      bool

	dirs [2]dirState

	// Commands sent by the client and not yet answered by a final reply, oldest first.
	ring  [ringSize]Cmd
	rHead uint8
	rLen  uint8
	// opened marks the ring's PORT/EPRT commands that opened a pinhole; popOpened is the
	// mark of the command the last final reply answered.
	opened    [ringSize]bool
	popOpened bool
	over      uint32 // commands beyond the ring (kind unknown), queued after the ring's
	lost      bool   // pairing unknown for good: a direction started mid-stream or lost bytes

	multi       uint16 // code of the multi-line reply in progress, 0 if none
	pending     int
	passthrough bool
	mute        bool // nothing is parsed any more: passthrough (TLS) or not FTP
	closed      bool

	// Proof that the connection is an FTP dialogue (see doc.go, "Proof").
	phase    phase
	answerAt uint32 // phaseAnswer: a server reply proves the exchange if it starts here or later
	answerOK bool   // answerAt is meaningful (the server direction had been seen)
	guess    bool   // the client's next line starts where Resume guessed a line starts

	stats Stats
}

type dirState struct {
	init bool   // next is known
	seen bool   // payload was fed (Resume no longer applies)
	sync bool   // at a true line boundary: lines are parsed; else skipping to the next LF
	long bool   // skipping the rest of a line longer than maxLine (already reported)
	fin  bool   // FIN seen
	next uint32 // sequence number of the next byte to consume

	pstart uint32 // sequence number of the first byte of the partial line
	plen   int    // bytes of the partial line, kept in buf

	buf  []byte // partial line spanning segments; cap maxLine, allocated on first use
	hold *holdBuf
}

// NewSession returns the session of a control connection. client and server are the
// endpoints AS SEEN IN THE PACKETS at the queue point (client = source of FromClient packets,
// server = their destination). Addresses are stored unmapped and without zone. cfg may be nil.
func NewSession(client, server netip.AddrPort, cfg *Config) *Session {
	s := &Session{
		client:     netip.AddrPortFrom(client.Addr().Unmap().WithZone(""), client.Port()),
		server:     netip.AddrPortFrom(server.Addr().Unmap().WithZone(""), server.Port()),
		maxPending: defaultMaxPending,
		maxLine:    defaultMaxLine,
		maxHold:    defaultMaxHold,
	}
	if cfg != nil {
		s.allowLow = cfg.AllowLowPorts
		s.loose = cfg.Loose
		if cfg.MaxPending > 0 {
			s.maxPending = cfg.MaxPending
		}
		if cfg.MaxLine > 0 {
			s.maxLine = min(max(cfg.MaxLine, 8), maxMaxLine)
		}
		if cfg.MaxHold > 0 {
			s.maxHold = min(cfg.MaxHold, maxMaxHold)
		}
	}
	return s
}

// Client is the client endpoint as seen in the packets.
func (s *Session) Client() netip.AddrPort { return s.client }

// Server is the server endpoint as seen in the packets.
func (s *Session) Server() netip.AddrPort { return s.server }

// SetServerAlias sets the address the client connected to (conntrack's original destination),
// when it differs from Server() (port-forward DNAT). A server may announce either address.
func (s *Session) SetServerAlias(a netip.Addr) { s.alias = a.Unmap().WithZone("") }

// Passthrough reports whether AUTH was answered by 234: the session is encrypted and nothing
// is parsed any more in either direction.
func (s *Session) Passthrough() bool { return s.passthrough }

// Closed reports whether the connection is over (RST, or FIN in both directions). Feed does
// nothing on a closed session.
func (s *Session) Closed() bool { return s.closed }

// Stats returns the session's counters.
func (s *Session) Stats() Stats { return s.stats }

// Pending is the number of pinholes opened and not yet Released.
func (s *Session) Pending() int { return s.pending }

// Release tells the session that one pinhole it opened is gone (used, expired, replaced).
func (s *Session) Release() {
	if s.pending > 0 {
		s.pending--
	}
}

// Proven reports whether the session has proven to be an FTP dialogue (or was vouched for):
// only then does it open pinholes. A proven session stays proven.
func (s *Session) Proven() bool { return s.phase == phaseProven }

// NotFTP reports whether the session was found not to be an FTP dialogue (the one Decision
// with ReasonNotFTP was returned): from then on nothing is parsed, nothing is decided, and the
// caller may stop holding or inspecting its packets.
func (s *Session) NotFTP() bool { return s.phase == phaseNotFTP }

// Vouch declares, from state outside the stream, that the session is an FTP dialogue: the
// caller knows (say, from the conntrack entry) that ftpalg already inspected and rewrote this
// connection before it picked it up again. The session is proven from now on. It does not
// revive a session already found not to be FTP.
func (s *Session) Vouch() {
	if s.phase != phaseNotFTP {
		s.phase = phaseProven
	}
}

// Resume declares, for a session picked up mid-stream, that direction d is at a true line
// boundary at stream position seq: its first line is parsed from seq instead of being skipped
// up to the first LF. The caller knows it when the first segment it sees of that direction
// looks like whole lines (it starts a line and ends with LF). It is a no-op once the direction
// has been fed payload or its SYN (pure ACKs fed before do not count), and after Sync. The
// pairing of replies with commands stays unknown, as for any mid-stream start, and the session
// is not proven by it: see Vouch. The caller's line start is a guess: if the client's first
// line after it has no known verb, it is taken as the tail of a line (skipped), not as a sign
// that the session is not FTP.
func (s *Session) Resume(d Dir, seq uint32) {
	if d > FromServer {
		return
	}
	ds := &s.dirs[d]
	if ds.seen || (ds.init && ds.sync) {
		return
	}
	ds.init, ds.sync, ds.long, ds.next, ds.plen = true, true, false, seq, 0
	s.guess = d == FromClient
	s.midStream()
}

// midStream notes that a direction started (or went on) from bytes not seen from the start:
// the pairing is unknown and the greeting cannot be checked, so the session must show an
// exchange instead.
func (s *Session) midStream() {
	s.lost = true
	if s.phase == phaseGreet || s.phase == phaseGreeting {
		s.phase = phaseExchange
	}
}

// Sync declares that the stream of direction d starts after isn (the SYN's sequence number),
// for a caller that learnt the ISN without feeding the SYN itself. It is a no-op once the
// direction has seen a segment.
func (s *Session) Sync(d Dir, isn uint32) {
	if d > FromServer || s.dirs[d].init {
		return
	}
	ds := &s.dirs[d]
	ds.init, ds.sync, ds.next = true, true, isn+1
}

// Partial reports an incomplete line buffered in direction d: the stream seq of its first
// byte, its length so far, and whether it could still become a line that must be rewritten or
// neutralised: its prefix (after Telnet commands) matches "PORT ", "EPRT ", "LPRT " (client,
// verbs case-insensitive), or "227 " / "229 " while PASV / EPSV is the command the next final
// reply answers, or while a picked-up session is unproven (any 227/229 is then neutralised).
// Before the server's greeting is over a client line is no candidate (it will make the
// session not FTP), and a session found not FTP has none at all. When nothing is buffered (or
// the session is not FTP) it returns the next expected seq, 0 and false.
func (s *Session) Partial(d Dir) (start uint32, n int, candidate bool) {
	if d > FromServer {
		return 0, 0, false
	}
	ds := &s.dirs[d]
	if !ds.sync || ds.plen == 0 || s.mute || s.closed {
		return ds.next, 0, false
	}
	b := ds.buf[:ds.plen]
	if d == FromClient {
		if s.phase == phaseGreet || s.phase == phaseGreeting {
			// A command before the greeting makes the session not FTP: nothing to rewrite.
			return ds.pstart, ds.plen, false
		}
		b = b[skipTelnet(b):]
		candidate = prefixFold(b, "PORT ") || prefixFold(b, "EPRT ") || prefixFold(b, "LPRT ") ||
			(len(b) > 0 && b[0] == iac) // a Telnet command not complete yet: could still precede PORT
	} else if s.phase == phaseExchange || s.phase == phaseAnswer {
		// Unproven: any 227/229 reply line is refused and its code neutralised.
		candidate = (s.multi == 0 || s.multi == 227) && prefixFold(b, "227 ") ||
			(s.multi == 0 || s.multi == 229) && prefixFold(b, "229 ")
	} else if s.phase != phaseGreet && s.phase != phaseGreeting {
		front := s.front()
		want := uint16(0)
		switch {
		case s.multi != 0:
			want = s.multi // only the closing line of the multi-line reply can count
		case front == CmdPASV:
			want = 227
		case front == CmdEPSV:
			want = 229
		}
		switch {
		case want == 227 && front == CmdPASV:
			candidate = prefixFold(b, "227 ")
		case want == 229 && front == CmdEPSV:
			candidate = prefixFold(b, "229 ")
		}
	}
	return ds.pstart, ds.plen, candidate
}

// prefixFold reports whether b and pat agree (ASCII case-insensitively) on their common
// length: b could still become a line starting with pat, or already does.
func prefixFold(b []byte, pat string) bool {
	n := min(len(b), len(pat))
	for i := range n {
		if upper(b[i]) != pat[i] {
			return false
		}
	}
	return true
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// Feed consumes one TCP segment (the ORIGINAL bytes as the sender sent them) and appends one
// Decision per event completed by this segment to out, returning it. It never retains
// seg.Payload. It allocates only when a line first spans segments in a direction (the line
// buffer, kept), when a segment first arrives out of order (the hold buffer, kept), when it
// parses an EPRT address (one small string), and when out lacks capacity for a Decision.
func (s *Session) Feed(seg Segment, out []Decision) []Decision {
	if s.closed || seg.Dir > FromServer {
		return out
	}
	s.stats.Segments++
	if seg.RST {
		s.closed = true
		return out
	}
	d := &s.dirs[seg.Dir]
	seq := seg.Seq
	if seg.SYN {
		if !d.init {
			d.init, d.sync, d.next = true, true, seq+1
		}
		seq++
	}
	if !d.init {
		// Mid-stream start: position known, line boundary not; replies and commands
		// before this point are unknown, so the pairing is too, and so is the greeting.
		d.init, d.sync, d.next = true, false, seq
		s.midStream()
	}
	if len(seg.Payload) > 0 && !s.mute {
		d.seen = true
		out = s.segment(seg.Dir, d, seq, seg.Payload, out)
	}
	if seg.FIN {
		d.fin = true
		if s.dirs[0].fin && s.dirs[1].fin {
			s.closed = true
		}
	}
	return out
}

func (s *Session) segment(dir Dir, d *dirState, seq uint32, p []byte, out []Decision) []Decision {
	off := int64(int32(seq - d.next))
	if off <= 0 {
		skip := -off
		if skip >= int64(len(p)) {
			s.stats.DupBytes += uint64(len(p))
			return out
		}
		s.stats.DupBytes += uint64(skip)
		return s.inOrder(dir, d, p[skip:], out)
	}
	if off > maxJump {
		s.stats.Ignored += uint64(len(p))
		return out
	}
	if off+int64(len(p)) <= int64(s.maxHold) {
		if d.hold == nil {
			d.hold = newHold(s.maxHold)
		}
		s.stats.Held += uint64(d.hold.put(seq, p))
		return out
	}
	// Beyond the hold bound: give up the bytes before this segment for good, drop what was
	// held for them, and resynchronise at the first LF seen from here on.
	s.stats.Gaps++
	if d.hold != nil {
		s.stats.HeldBytesDropped += uint64(d.hold.clear(d.next, int(off)))
	}
	d.next = seq
	d.plen, d.sync, d.long = 0, false, false
	s.midStream()
	out = append(out, Decision{Action: ActNote, Dir: dir, Reason: ReasonResync})
	return s.inOrder(dir, d, p, out)
}

// inOrder consumes p, which starts at d.next, then whatever held bytes it makes contiguous.
func (s *Session) inOrder(dir Dir, d *dirState, p []byte, out []Decision) []Decision {
	if d.hold != nil && d.hold.n > 0 {
		d.hold.clear(d.next, len(p))
	}
	out = s.consume(dir, d, p, out)
	for d.hold != nil && d.hold.n > 0 && !s.mute {
		chunk := d.hold.run(d.next)
		if len(chunk) == 0 {
			break
		}
		d.hold.clear(d.next, len(chunk))
		out = s.consume(dir, d, chunk, out)
	}
	return out
}

// consume splits in-order bytes into lines. A line wholly inside p is parsed in place; only a
// line that spans segments is copied into d.buf.
func (s *Session) consume(dir Dir, d *dirState, p []byte, out []Decision) []Decision {
	pos := d.next
	d.next += uint32(len(p))
	s.stats.Bytes += uint64(len(p))
	for len(p) > 0 && !s.mute {
		i := bytes.IndexByte(p, '\n')
		if !d.sync {
			if i < 0 {
				return out
			}
			if !d.long {
				s.stats.Resyncs++
			}
			d.sync, d.long, d.plen = true, false, 0
			p, pos = p[i+1:], pos+uint32(i+1)
			continue
		}
		if d.plen == 0 {
			d.pstart = pos
		}
		if i < 0 {
			if d.plen+len(p) >= s.maxLine { // cannot end within maxLine bytes
				out = s.tooLong(dir, d, p, out)
				d.sync, d.long, d.plen = false, true, 0
				return out
			}
			if d.buf == nil {
				d.buf = make([]byte, 0, s.maxLine)
			}
			d.buf = append(d.buf[:d.plen], p...)
			d.plen += len(p)
			return out
		}
		n := d.plen + i + 1
		switch {
		case n > s.maxLine:
			out = s.tooLong(dir, d, p[:i], out)
		case d.plen == 0:
			out = s.line(dir, p[:i+1], d.pstart, out)
		default:
			d.buf = append(d.buf[:d.plen], p[:i+1]...)
			out = s.line(dir, d.buf[:n], d.pstart, out)
		}
		d.plen = 0
		p, pos = p[i+1:], pos+uint32(i+1)
	}
	return out
}

// tooLong reports a line longer than maxLine; rest is the part of it in the current chunk.
// Only the head of the line (code or verb) is looked at, to keep replies paired and to
// neutralise an over-long PORT/EPRT/LPRT that a lenient server might still act on.
func (s *Session) tooLong(dir Dir, d *dirState, rest []byte, out []Decision) []Decision {
	s.stats.LongLines++
	var hb [16]byte // room for Telnet commands before the longest verb and its separator
	h := append(hb[:0], d.buf[:min(d.plen, len(hb))]...)
	h = append(h, rest[:min(len(rest), len(hb)-len(h))]...)
	if dir == FromClient {
		return s.clientLine(h, d.pstart, true, out)
	}
	return s.serverLine(h, d.pstart, true, out)
}

// line handles one complete line (with its LF) starting at stream position start.
func (s *Session) line(dir Dir, b []byte, start uint32, out []Decision) []Decision {
	s.stats.Lines++
	b = b[:len(b)-1] // LF
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	if dir == FromClient {
		return s.clientLine(b, start, false, out)
	}
	return s.serverLine(b, start, false, out)
}

func (s *Session) clientLine(b []byte, start uint32, long bool, out []Decision) []Decision {
	// The verb starts after Telnet commands (IAC IP, IAC DM before ABOR) and ends at a space
	// or a tab: some servers split on any white space, and a verb they would act on must not
	// escape inspection.
	t := skipTelnet(b)
	v := bytes.IndexAny(b[t:], " \t")
	if v < 0 {
		v = len(b)
	} else {
		v += t
	}
	kind, known := classify(b[t:v])
	verb := Span{Seq: start + uint32(t), Len: v - t}
	guess := s.guess
	s.guess = false
	if s.phase < phaseProven {
		switch {
		case s.phase == phaseGreet || s.phase == phaseGreeting:
			return s.refuseSession(FromClient, kind, out) // the client spoke first
		case !known && t < len(b) && guess:
			return out // Resume guessed wrong: the tail of a line
		case !known && t < len(b):
			return s.refuseSession(FromClient, kind, out) // not an FTP command
		case kind == CmdPORT || kind == CmdEPRT:
			if s.phase == phaseReady {
				s.phase = phaseProven
			}
		case s.phase == phaseExchange && known && !long && kind != CmdLPRT && kind != CmdLPSV:
			// A command the server gets as sent (LPRT/LPSV are neutralised): its reply,
			// or any reply that starts after it, completes an exchange.
			sd := &s.dirs[FromServer]
			s.phase, s.answerAt, s.answerOK = phaseAnswer, sd.next, sd.init
		}
	}
	if long {
		s.push(CmdUnknown)
		dec := Decision{Action: ActNote, Cmd: CmdNone, Dir: FromClient, Reason: ReasonLineTooLong}
		if v < len(b) && (kind == CmdPORT || kind == CmdEPRT || kind == CmdLPRT) {
			dec.Action, dec.Cmd = ActReject, kind
			dec.Neutral, dec.NeutralWith = verb, neutralVerb
			s.stats.Rejects++
		}
		return append(out, dec)
	}
	s.push(kind)
	// The argument: after one or more spaces, trailing spaces and tabs ignored.
	a := v
	for a < len(b) && (b[a] == ' ' || b[a] == '\t') {
		a++
	}
	e := len(b)
	for e > a && (b[e-1] == ' ' || b[e-1] == '\t') {
		e--
	}
	arg := b[a:e]
	switch kind {
	case CmdPORT, CmdEPRT:
		if s.phase != phaseProven {
			s.stats.Rejects++
			return append(out, Decision{Action: ActReject, Cmd: kind, Dir: FromClient,
				Reason: ReasonUnproven, Neutral: verb, NeutralWith: neutralVerb})
		}
		dec := Decision{Cmd: kind, Dir: FromClient, Text: Span{Seq: start + uint32(a), Len: len(arg)}}
		var err error
		if kind == CmdPORT {
			dec.Endpoint, err = ParsePORT(arg)
		} else {
			dec.Endpoint, dec.Delim, err = ParseEPRT(arg)
		}
		if err != nil || a == v {
			dec.Endpoint, dec.Delim = netip.AddrPort{}, 0
			dec.Reason = ReasonBadSyntax
		} else {
			dec.Reason, dec.Loose = s.check(dec.Endpoint, s.client.Addr(), netip.Addr{})
		}
		// Also for an open: the daemon neutralises the command when it cannot carry the
		// pinhole (the private address must not reach the server).
		dec.Neutral, dec.NeutralWith = verb, neutralVerb
		return s.decide(dec, out)
	case CmdLPRT, CmdLPSV:
		s.stats.Rejects++
		return append(out, Decision{Action: ActReject, Cmd: kind, Dir: FromClient,
			Reason: ReasonUnsupported, Neutral: verb, NeutralWith: neutralVerb})
	}
	return out
}

// refuseSession marks the session as not FTP, for good, and says so once.
func (s *Session) refuseSession(dir Dir, cmd Cmd, out []Decision) []Decision {
	s.phase, s.mute = phaseNotFTP, true
	s.stats.Rejects++
	return append(out, Decision{Action: ActReject, Cmd: cmd, Dir: dir, Reason: ReasonNotFTP})
}

// check applies the pinhole policy to an announced endpoint: family, then owner, then port,
// then the pending limit.
func (s *Session) check(ep netip.AddrPort, own, alias netip.Addr) (Reason, bool) {
	a := ep.Addr()
	if a.Is4() != own.Is4() {
		return ReasonFamily, false
	}
	loose := false
	if a != own && (!alias.IsValid() || a != alias) {
		if !s.loose {
			return ReasonBounce, false
		}
		loose = true
	}
	if ep.Port() < 1024 && !s.allowLow {
		return ReasonLowPort, false
	}
	if s.pending >= s.maxPending {
		return ReasonLimit, false
	}
	return ReasonNone, loose
}

// decide completes dec (Reason already set, or none for an open) and appends it.
func (s *Session) decide(dec Decision, out []Decision) []Decision {
	if dec.Reason == ReasonNone {
		dec.Action = ActOpen
		s.pending++
		s.stats.Opens++
		if dec.Dir == FromClient && !s.lost && s.over == 0 && s.rLen > 0 {
			s.opened[(int(s.rHead)+int(s.rLen)-1)%ringSize] = true
		}
		return append(out, dec)
	}
	dec.Action = ActReject
	dec.Loose = false
	// A 227/229 that answers nothing is not acted on by the client: it passes as it is. A
	// command or reply over the pending limit is a real PORT or PASV answer: neutralised like
	// any refusal, so that the peer fails at once instead of waiting for a data connection no
	// pinhole leads to (and no private address reaches it unrewritten).
	if dec.Reason == ReasonUnsolicited || dec.Reason == ReasonUnpaired {
		dec.Neutral, dec.NeutralWith = Span{}, ""
	}
	if dec.Reason == ReasonBadSyntax {
		dec.Text = Span{}
	}
	s.stats.Rejects++
	return append(out, dec)
}

// replyCode returns the code at the start of a server line, if it has one (100-599).
func replyCode(b []byte) (uint16, bool) {
	if len(b) < 3 || b[0] < '1' || b[0] > '5' || !isDigit(b[1]) || !isDigit(b[2]) {
		return 0, false
	}
	return uint16(b[0]-'0')*100 + uint16(b[1]-'0')*10 + uint16(b[2]-'0'), true
}

// replyCmd is the Cmd of a reply code, for Decisions.
func replyCmd(code uint16) Cmd {
	switch code {
	case 227:
		return Cmd227
	case 228:
		return Cmd228
	case 229:
		return Cmd229
	case 234:
		return Cmd234
	}
	return CmdNone
}

func (s *Session) serverLine(b []byte, start uint32, long bool, out []Decision) []Decision {
	code, ok := replyCode(b)
	sep := byte(' ')
	if len(b) > 3 {
		sep = b[3]
	}
	note := Decision{Action: ActNote, Dir: FromServer, Reason: ReasonLineTooLong}
	switch {
	case s.multi != 0 && (!ok || code != s.multi || sep != ' '):
		if long {
			out = append(out, note)
		}
		return out // text inside a multi-line reply, whatever it looks like
	case s.multi != 0:
		s.multi = 0 // closing line: a normal reply line
	case !ok || (sep != ' ' && sep != '-'):
		if s.phase == phaseGreet || s.phase == phaseGreeting {
			return s.refuseSession(FromServer, CmdNone, out) // no greeting: not an FTP server
		}
		s.stats.Garbage++
		if long {
			out = append(out, note)
		}
		return out
	}
	// A reply line: single, opening a multi-line reply, or closing one.
	switch s.phase {
	case phaseGreet, phaseGreeting:
		switch {
		case code >= 300 || (code >= 227 && code <= 229):
			return s.refuseSession(FromServer, replyCmd(code), out)
		case sep == '-' || code < 200:
			s.phase = phaseGreeting
		default:
			s.phase = phaseReady // the greeting is over
		}
	case phaseAnswer:
		if !s.answerOK || int32(start-s.answerAt) >= 0 {
			s.phase = phaseReady // a command with a known verb, then a reply after it
		}
	}
	if sep == '-' {
		s.multi = code
		if long {
			out = append(out, note)
		}
		return out
	}
	if code < 200 { // preliminary: answers nothing yet
		if long {
			out = append(out, note)
		}
		return out
	}
	s.popOpened = false
	cmd := s.pop()
	if (cmd == CmdPORT || cmd == CmdEPRT) && s.popOpened && code >= 400 && !s.openedLeft() {
		// The server refused the command that opened the session's pending pinhole (and no
		// later one replaced it): nothing will use that pinhole.
		out = append(out, Decision{Action: ActRefused, Cmd: cmd, Dir: FromServer})
	}
	codeSpan := Span{Seq: start, Len: 3}
	var want Cmd
	var dec Decision
	switch code {
	case 227:
		want, dec.Cmd = CmdPASV, Cmd227
	case 229:
		want, dec.Cmd = CmdEPSV, Cmd229
	case 228:
		if long {
			return append(out, note)
		}
		s.stats.Rejects++
		return append(out, Decision{Action: ActReject, Cmd: Cmd228, Dir: FromServer,
			Reason: ReasonUnsupported, Neutral: codeSpan, NeutralWith: neutralReply})
	case 234:
		if cmd == CmdAUTH {
			s.passthrough, s.mute = true, true
			if long {
				out = append(out, note)
			}
			return append(out, Decision{Action: ActTLS, Cmd: Cmd234, Dir: FromServer})
		}
		fallthrough
	default:
		if long {
			out = append(out, note)
		}
		return out
	}
	dec.Dir = FromServer
	if s.phase == phaseReady {
		s.phase = phaseProven
	}
	switch {
	case s.phase != phaseProven:
		dec.Reason = ReasonUnproven
	case cmd == CmdUnknown:
		dec.Reason = ReasonUnpaired
	case cmd != want:
		dec.Reason = ReasonUnsolicited
	case long:
		dec.Reason = ReasonLineTooLong
	default:
		text := b[3:]
		if dec.Cmd == Cmd227 {
			ep, st, en, err := Parse227(text)
			if err == nil {
				dec.Endpoint = ep
				dec.Text = Span{Seq: start + 3 + uint32(st), Len: en - st}
			}
			if err != nil {
				dec.Reason = ReasonBadSyntax
			}
		} else {
			port, delim, st, en, err := Parse229(text)
			if err == nil {
				dec.Endpoint = netip.AddrPortFrom(s.server.Addr(), port)
				dec.Delim = delim
				dec.Text = Span{Seq: start + 3 + uint32(st), Len: en - st}
			} else {
				dec.Reason = ReasonBadSyntax
			}
		}
		if dec.Reason == ReasonNone {
			dec.Reason, dec.Loose = s.check(dec.Endpoint, s.server.Addr(), s.alias)
		}
	}
	// Also for an open: the daemon neutralises the reply when it cannot carry the pinhole.
	dec.Neutral, dec.NeutralWith = codeSpan, neutralReply
	return s.decide(dec, out)
}

// push records a client command awaiting its final reply.
func (s *Session) push(c Cmd) {
	if s.lost {
		if (c != CmdPASV && c != CmdEPSV) || !s.dirs[FromServer].sync {
			return
		}
		// Pairing is recovered at a passive request: the client needs its answer before it
		// goes on, so it does not pipeline PASV/EPSV, and the next final reply answers it -
		// unless a reply to a command from before the loss is still on its way: that reply
		// then pops PASV/EPSV and the real 227/229 is refused as unsolicited (fail closed).
		// The server's stream must be at a line boundary already, or its first complete line
		// (the one it resynchronises at) could be that answer. Nothing can open here that
		// would not open in a session followed from its start.
		s.lost, s.rHead, s.rLen, s.over = false, 0, 0, 0
		s.stats.Repaired++
	}
	if int(s.rLen) == ringSize || s.over > 0 {
		if s.over < 1<<31 {
			s.over++
		}
		return
	}
	s.ring[(int(s.rHead)+int(s.rLen))%ringSize] = c
	s.opened[(int(s.rHead)+int(s.rLen))%ringSize] = false
	s.rLen++
}

// pop returns the command a final reply answers: CmdNone if none was sent (greeting,
// spontaneous 421), CmdUnknown if its kind is not known.
func (s *Session) pop() Cmd {
	if s.lost {
		s.stats.Unpaired++
		return CmdUnknown
	}
	if s.rLen == 0 {
		return CmdNone
	}
	c := s.ring[s.rHead]
	s.popOpened, s.opened[s.rHead] = s.opened[s.rHead], false
	s.rHead = uint8((int(s.rHead) + 1) % ringSize)
	s.rLen--
	if s.over > 0 {
		s.over--
		s.ring[(int(s.rHead)+int(s.rLen))%ringSize] = CmdUnknown
		s.rLen++
	}
	if c == CmdUnknown {
		s.stats.Unpaired++
	}
	return c
}

// openedLeft reports whether a command still awaiting its reply opened a pinhole.
func (s *Session) openedLeft() bool {
	for i := 0; i < int(s.rLen); i++ {
		if s.opened[(int(s.rHead)+i)%ringSize] {
			return true
		}
	}
	return false
}

// front is the command the next final reply answers.
func (s *Session) front() Cmd {
	if s.lost {
		return CmdUnknown
	}
	if s.rLen == 0 {
		return CmdNone
	}
	return s.ring[s.rHead]
}

// holdBuf keeps out-of-order bytes by stream position in a ring of a power-of-two size, with
// a bitmap of the positions present. Only positions within maxHold of the next expected byte
// are stored, so no two held positions share a slot.
type holdBuf struct {
	data []byte
	have []uint64
	n    int // bytes held
}

func newHold(maxHold int) *holdBuf {
	size := 64
	for size < maxHold {
		size <<= 1
	}
	return &holdBuf{data: make([]byte, size), have: make([]uint64, size/64)}
}

func (h *holdBuf) mask() uint32 { return uint32(len(h.data) - 1) }

// put stores p at position seq and returns the number of bytes newly held.
func (h *holdBuf) put(seq uint32, p []byte) int {
	added := 0
	m := h.mask()
	for k, c := range p {
		i := (seq + uint32(k)) & m
		w, bit := i/64, uint64(1)<<(i%64)
		if h.have[w]&bit == 0 {
			h.have[w] |= bit
			added++
		}
		h.data[i] = c
	}
	h.n += added
	return added
}

// clear forgets positions [seq, seq+n) and returns how many were held.
func (h *holdBuf) clear(seq uint32, n int) int {
	if h.n == 0 {
		return 0
	}
	if n >= len(h.data) {
		dropped := h.n
		clear(h.have)
		h.n = 0
		return dropped
	}
	dropped := 0
	m := h.mask()
	for k := range n {
		i := (seq + uint32(k)) & m
		w, bit := i/64, uint64(1)<<(i%64)
		if h.have[w]&bit != 0 {
			h.have[w] &^= bit
			dropped++
		}
	}
	h.n -= dropped
	return dropped
}

// run returns the held bytes contiguous from position seq, up to the end of the ring.
func (h *holdBuf) run(seq uint32) []byte {
	m := h.mask()
	i0 := seq & m
	i := i0
	for i < uint32(len(h.data)) && h.have[i/64]&(uint64(1)<<(i%64)) != 0 {
		i++
	}
	return h.data[i0:i]
}
