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
// mid-connection) is likewise unsynchronised until its first LF, unless Resume says where a
// line starts.
//
// Only complete lines (LF-terminated, optional CR) that start at a true line start are
// parsed, and only up to Config.MaxLine bytes; a longer line is skipped to its LF and noted
// once (ActNote "line_too_long"; an over-long PORT/EPRT/LPRT is rejected and neutralised). A
// line wholly inside a segment is parsed in place; a line spanning segments is copied into a
// per-direction buffer of MaxLine bytes, allocated on first use.
//
// # Proof
//
// Only an FTP dialogue gets pinholes. A session proves it is one before its first PORT, EPRT,
// 227 or 229 is acted on; a connection that carries anything else (an HTTP request with a
// PORT line in its body: NAT Slipstreaming; SMTP; SSH) never opens a pinhole.
//
// From the SYN (both directions fed their SYN, or Sync), the server must greet first: its
// first line is a 1xx or 2xx reply (not 227/228/229), and the greeting lasts up to its first
// final 2xx reply ("220 ...", "120 ..." then "220 ...", a multi-line "220-" banner once
// closed). Then every client line, at a true line start, up to the first PORT/EPRT/227/229
// must begin with a known FTP verb (below), in any case, followed by a space, a tab or the end
// of the line, after any Telnet commands (IAC IP, IAC DM, a lone DM: clients send them before
// ABOR). An empty line (or Telnet commands alone) neither proves nor refuses anything. When
// the first PORT/EPRT/227/229 comes with all this true, the session is proven (Proven) and
// nothing more is checked: a later command with a verb not listed here passes. Checking up to
// the first PORT, not only the first command, is what catches an HTTP request whose method is
// an FTP verb (a page can choose its method): its Host header follows.
//
// A session picked up mid-stream (a direction whose first segment fed was not a SYN: the
// daemon restarted, or a router failed over), or one that lost bytes before its greeting was
// over, cannot see a greeting: it must show an exchange instead. That is a client line with a
// known verb (not PORT, EPRT, LPRT or LPSV: the server gets those neutralised), then a
// complete server reply line (a code 100-599 followed by a space or "-") that starts after
// that client line was complete. The pairing is unknown after a pickup, so "after" stands for
// "answering it". The client's lines are checked as above until the first PORT/EPRT/227/229,
// which proves the session. Until the exchange, PORT and EPRT are rejected "unproven" with
// their verb neutralised, and 227 and 229 (any reply line with that code, paired or not) with
// their code neutralised, so nothing private leaks. Resume(d, seq) tells the engine that a
// picked-up direction is at a line start at seq, so that its first line is parsed instead of
// skipped up to its LF; that start is the caller's guess, so a first client line after it
// with no known verb is skipped as a tail rather than refused. Vouch() tells it that state outside the stream (the conntrack entry
// shows that ftpalg already rewrote the connection) proves the session.
//
// A connection found not to be FTP gets one Decision: ActReject with Reason "not_ftp" (Cmd is
// the line's kind; no Neutral). That happens on a client line before the greeting is over, a
// client line with an unknown verb before the proof, a first server line that is not a 1xx/2xx
// reply (a 3xx-5xx such as "421 Too many users" included), or a 227/228/229 as the greeting.
// From then on nothing of it is parsed: no Decision, no neutralisation (its bytes pass
// unharmed), Partial reports no candidate, and NotFTP is true. Vouch does not change it.
//
// The known verbs: RFC 959 (USER PASS ACCT CWD CDUP SMNT REIN QUIT PORT PASV TYPE STRU MODE
// RETR STOR STOU APPE ALLO REST RNFR RNTO ABOR DELE RMD MKD PWD LIST NLST SITE SYST STAT HELP
// NOOP), RFC 2228 (AUTH ADAT PROT PBSZ CCC MIC CONF ENC), RFC 2389 (FEAT OPTS), RFC 2428 (EPRT
// EPSV), RFC 2640 (LANG), RFC 3659 (MDTM SIZE MLST MLSD), RFC 7151 (HOST), RFC 775 (XCUP XCWD
// XMKD XPWD XRMD), RFC 1639 (LPRT LPSV), and those that real clients send beyond them: CLNT,
// CSID, MFMT, MFCT, MFF, XCRC, XMD5, XSHA, XSHA1, XSHA256, XSHA512, HASH, RANG, AVBL, DSIZ,
// PRET, SSCN, CPSV.
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
// guesses, so such a session opens no passive pinholes until the pairing is recovered at the
// next PASV/EPSV sent while the server's stream is at a line boundary).
//
// # Policy
//
// An announced address must be the sender's own (for a server also SetServerAlias), else
// "bounce" (unless Config.Loose: ActOpen with Loose set); its family must be the control
// connection's ("family"); port >= 1024 unless Config.AllowLowPorts ("low_port"); malformed
// numbers, port 0, octets > 255 are "bad_syntax"; at most Config.MaxPending pinholes not yet
// Released ("limit"); and the session must be proven ("unproven", "not_ftp": see Proof). A
// rejected PORT/EPRT carries Neutral = its verb with NeutralWith "XXXX" (the server answers
// 500); a rejected 227/229 carries Neutral = its code with "425". Rejects for "limit",
// "unsolicited", "unpaired" and "not_ftp" carry no Neutral. The engine never asks for a packet
// to be dropped.
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
