// Package alg is ftpalg's FTP control-channel engine: a pure protocol state machine, fed the
// TCP segments of one control connection, that says which data-connection pinholes to open,
// which embedded endpoints to rewrite, and what to refuse. It makes no system calls, starts
// no goroutines and writes no logs: every outcome is a returned Decision (or a Stats counter)
// that the caller acts on, counts and logs. Addresses are netip values.
//
// # Stream
//
// Each direction is reassembled by TCP sequence number (wrapping at 2^32): duplicates and
// overlapping retransmissions are consumed only beyond what was already consumed; segments
// that arrive early are copied into a hold buffer of Config.MaxHold bytes (allocated only when
// reordering happens) and consumed when the gap fills. The bound is a window: bytes more than
// MaxHold past the first missing byte are not held. A segment reaching beyond it makes the
// direction give up the missing bytes (ActNote "resync", Stats.Gaps, Stats.HeldBytesDropped):
// parsing resumes after the next LF actually seen, and the command/reply pairing becomes
// unknown. A segment starting more than 16 MiB ahead is ignored as implausible
// (Stats.Ignored). A direction whose SYN was not fed (daemon restarted
// mid-connection) is likewise unsynchronised until its first LF.
//
// Only complete lines (LF-terminated, optional CR) that start at a true line start are
// parsed, and only up to Config.MaxLine bytes; a longer line is skipped to its LF and noted
// once (ActNote "line_too_long"; an over-long PORT/EPRT/LPRT is rejected and neutralised). A
// line wholly inside a segment is parsed in place; a line spanning segments is copied into a
// per-direction buffer of MaxLine bytes, allocated on first use.
//
// # Supported
//
//   - PORT h1,h2,h3,h4,p1,p2 (client, IPv4 control connections): ActOpen for the client's own
//     address; Text spans the six numbers.
//   - EPRT |1|a.b.c.d|port| and EPRT |2|ipv6|port| (RFC 2428, any delimiter 33-126): family
//     must match the control connection; Text spans first to last delimiter.
//   - PASV answered by 227: the first run of comma-separated numbers after the code, in every
//     form servers use ("(h1,...,p2)", bare, "=h1,..."); Text spans the six numbers.
//   - EPSV (also "EPSV 1", "EPSV 2") answered by 229 "(|||port|)" with any delimiter: the
//     address is the server's own; Text spans the port digits.
//   - AUTH <mechanism> answered by 234: ActTLS; from then on the session is Passthrough and
//     nothing is parsed in either direction.
//
// Replies are paired with the client's commands in order (final replies 2xx-5xx; 1xx are
// preliminary; a multi-line reply "ddd-" ... "ddd " is text until its closing line, which is
// a normal reply). A 227 counts only if it answers PASV, a 229 only if it answers EPSV;
// otherwise it is rejected "unsolicited" (or "unpaired" when the pairing is unknown: more than
// 8 unanswered commands, a direction started mid-stream, or bytes were lost; the engine never
// guesses, so such a session opens no passive pinholes).
//
// # Policy
//
// An announced address must be the sender's own (for a server also SetServerAlias), else
// "bounce" (unless Config.Loose: ActOpen with Loose set); its family must be the control
// connection's ("family"); port >= 1024 unless Config.AllowLowPorts ("low_port"); malformed
// numbers, port 0, octets > 255 are "bad_syntax"; at most Config.MaxPending pinholes not yet
// Released ("limit"). A rejected PORT/EPRT carries Neutral = its verb with NeutralWith "XXXX"
// (the server answers 500); a rejected 227/229 carries Neutral = its code with "425". Rejects
// for "limit", "unsolicited" and "unpaired" carry no Neutral. The engine never asks for a
// packet to be dropped.
//
// # Refused
//
// LPRT and LPSV (RFC 1639) are recognised and rejected "unsupported" with the verb
// neutralised ("XXXX"), so the server answers 500 and the client falls back; a 228 reply is
// rejected "unsupported" with its code neutralised ("425"). None is ever pinholed.
//
// # Ignored
//
// Every other command and reply (they only advance the pairing), text inside multi-line
// replies (even a line that looks like "227 (...)"), server lines that are not replies,
// continuation lines ("227-"), and everything after AUTH/234.
//
// # Formats
//
// The parsers ParsePORT, ParseEPRT, Parse227 (the text after the code) and Parse229 (the text
// after the code) and the formatters AppendPORT, AppendEPRT, Append229 and AppendEndpoint are
// exported and round-trip: parsing what they format gives back the same value.
package alg
