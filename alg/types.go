package alg

import "net/netip"

// Dir is the direction of a segment or line on the control connection.
type Dir uint8

const (
	FromClient Dir = iota // client → server (original direction of the control connection)
	FromServer            // server → client
)

func (d Dir) String() string {
	switch d {
	case FromClient:
		return "client"
	case FromServer:
		return "server"
	}
	return "invalid"
}

// Config is the policy of a session. The zero value is the strict default. A Config may be
// shared by many sessions; the session reads it only in NewSession.
type Config struct {
	AllowLowPorts bool // accept announced ports < 1024 (default: refuse, reason low_port)
	Loose         bool // accept an announced address other than the sender's; Decision.Loose=true
	MaxPending    int  // pinholes opened and not yet Released, per session; 0 → 4
	MaxLine       int  // 0 → 512 bytes (incl. CRLF); longer lines are skipped to the next LF
	MaxHold       int  // bytes of out-of-order data held per direction; 0 → 2048
}

const (
	defaultMaxPending = 4
	defaultMaxLine    = 512
	defaultMaxHold    = 2048

	// Upper bounds on the configurable sizes, so that a typo in a configuration file cannot
	// make every session reserve megabytes.
	maxMaxLine = 64 << 10
	maxMaxHold = 64 << 10
)

// Segment is one TCP segment of the control connection, as the sender sent it.
type Segment struct {
	Dir           Dir
	Seq           uint32 // TCP sequence number of the segment (for a SYN: the ISN)
	SYN, FIN, RST bool
	Payload       []byte // read-only view; never retained by the session
}

// Action is what the caller must do about a Decision.
type Action uint8

const (
	ActOpen    Action = iota + 1 // open a pinhole for Endpoint (and rewrite Text if NAT needs it)
	ActReject                    // no pinhole; log Reason; if Neutral.Len > 0 overwrite it with NeutralWith
	ActTLS                       // AUTH accepted with 234: the session is now opaque (Passthrough)
	ActNote                      // nothing to do but count/log Reason (line_too_long, resync)
	ActRefused                   // the server refused (4xx/5xx) the PORT/EPRT whose pinhole is pending: close it
)

func (a Action) String() string {
	switch a {
	case ActOpen:
		return "open"
	case ActReject:
		return "reject"
	case ActTLS:
		return "tls"
	case ActNote:
		return "note"
	case ActRefused:
		return "refused"
	}
	return "invalid"
}

// Cmd names the command or reply a Decision is about. Its String form is a bounded set,
// fit for a metric label.
type Cmd uint8

const (
	CmdNone    Cmd = iota // no particular command (notes about the stream)
	CmdPORT               // client PORT h1,h2,h3,h4,p1,p2
	CmdEPRT               // client EPRT |af|addr|port|
	CmdPASV               // client PASV
	CmdEPSV               // client EPSV [1|2|ALL]
	Cmd227                // server 227 answer to PASV
	Cmd229                // server 229 answer to EPSV
	CmdLPRT               // client LPRT (refused: unsupported)
	CmdLPSV               // client LPSV (refused: unsupported)
	Cmd228                // server 228 answer to LPSV (refused: unsupported)
	CmdAUTH               // client AUTH <mechanism>
	Cmd234                // server 234 answer to AUTH (TLS passthrough)
	CmdOther              // any other client command (tracked only to pair replies)
	CmdUnknown            // a command whose kind is not known (line too long, queue overflow)
)

var cmdNames = [...]string{
	CmdNone:    "none",
	CmdPORT:    "PORT",
	CmdEPRT:    "EPRT",
	CmdPASV:    "PASV",
	CmdEPSV:    "EPSV",
	Cmd227:     "227",
	Cmd229:     "229",
	CmdLPRT:    "LPRT",
	CmdLPSV:    "LPSV",
	Cmd228:     "228",
	CmdAUTH:    "AUTH",
	Cmd234:     "234",
	CmdOther:   "other",
	CmdUnknown: "unknown",
}

func (c Cmd) String() string {
	if int(c) < len(cmdNames) {
		return cmdNames[c]
	}
	return "invalid"
}

// Reason says why a Decision rejects or notes something. Its String form is snake_case and
// a bounded set, fit for a metric label.
type Reason uint8

const (
	ReasonNone        Reason = iota
	ReasonBounce             // announced address is not the sender's own (or the server alias)
	ReasonLowPort            // announced port < 1024 and Config.AllowLowPorts is off
	ReasonBadSyntax          // malformed argument: octet > 255, port 0, bad digits, ...
	ReasonFamily             // address family does not match the control connection
	ReasonUnsupported        // LPRT, LPSV, 228: recognised, refused
	ReasonUnsolicited        // 227/229/228 that does not answer PASV/EPSV/LPSV
	ReasonLimit              // Config.MaxPending pinholes already open for this session
	ReasonLineTooLong        // line longer than Config.MaxLine, skipped to the next LF
	ReasonResync             // bytes were lost (hold overflow); parsing resumes at the next line start
	ReasonUnpaired           // 227/229 while the command/reply pairing is unknown (never guessed)
	ReasonNotFTP             // the connection is not an FTP dialogue: no pinhole for the rest of its life
	ReasonUnproven           // picked up mid-stream, no FTP exchange shown yet: PORT/EPRT/227/229 refused
)

var reasonNames = [...]string{
	ReasonNone:        "none",
	ReasonBounce:      "bounce",
	ReasonLowPort:     "low_port",
	ReasonBadSyntax:   "bad_syntax",
	ReasonFamily:      "family",
	ReasonUnsupported: "unsupported",
	ReasonUnsolicited: "unsolicited",
	ReasonLimit:       "limit",
	ReasonLineTooLong: "line_too_long",
	ReasonResync:      "resync",
	ReasonUnpaired:    "unpaired",
	ReasonNotFTP:      "not_ftp",
	ReasonUnproven:    "unproven",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "invalid"
}

// Span is a byte range of the sender's ORIGINAL stream, by TCP sequence number.
type Span struct {
	Seq uint32
	Len int
}

// End is the sequence number just past the span.
func (s Span) End() uint32 { return s.Seq + uint32(s.Len) }

// Decision is one outcome of Feed.
type Decision struct {
	Action      Action
	Cmd         Cmd
	Dir         Dir            // sender of the line
	Reason      Reason         // for ActReject / ActNote
	Endpoint    netip.AddrPort // E as announced (229: the server address as seen + the port)
	Loose       bool           // accepted only because Config.Loose
	Text        Span           // E's text in the stream, for rewriting (zero if none)
	Delim       byte           // EPRT/229 delimiter character
	Neutral     Span           // for rejects that must not reach the peer in actionable form; for an open, what to neutralise if the caller cannot carry it
	NeutralWith string         // same-length replacement for Neutral (a constant: no allocation)
}

// Replacements for Neutral spans.
const (
	neutralVerb  = "XXXX" // a client verb: the server answers 500 unknown command
	neutralReply = "425"  // a reply code: the client sees "can't open data connection"
)

// Stats are the counters of one session. All only grow.
type Stats struct {
	Segments         uint64 // segments fed
	Bytes            uint64 // new payload bytes consumed in order
	DupBytes         uint64 // payload bytes already consumed (retransmissions, overlaps)
	Ignored          uint64 // payload bytes of segments implausibly far (> 16 MiB) ahead
	Lines            uint64 // complete lines seen (both directions)
	LongLines        uint64 // lines skipped because longer than MaxLine
	Garbage          uint64 // server lines that are not replies, outside a multi-line reply
	Held             uint64 // out-of-order bytes copied into the hold buffer
	Gaps             uint64 // times data beyond the hold bound forced a jump over missing bytes
	HeldBytesDropped uint64 // held bytes discarded by such a jump
	Resyncs          uint64 // times a direction became synchronised at an LF it saw
	Unpaired         uint64 // final replies that could not be paired with a known command
	Repaired         uint64 // times pairing was recovered at a PASV/EPSV after it was lost
	Opens            uint64 // ActOpen decisions
	Rejects          uint64 // ActReject decisions
}
