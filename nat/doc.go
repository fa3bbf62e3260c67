// Package nat rewrites the packets of an FTP control connection: it decodes IPv4/IPv6 + TCP
// packets, replaces byte ranges of the payload, and keeps the TCP sequence space of both
// directions consistent afterwards (seq, ack and SACK blocks), fixing lengths and checksums.
// The kernel cannot adjust sequence numbers of packets that went through NFQUEUE on our target
// kernels (see DESIGN.md), so every packet of a control connection whose stream was rewritten
// passes through Conn.Apply until the connection closes.
//
// # Decoding
//
// Packet.Decode fills a caller-owned Packet with offsets into the caller's bytes (the shape of
// tailscale's net/packet.Parsed): no copy, no allocation, also on error. It accepts IPv4 with
// options and IPv6 with hop-by-hop, routing and destination-options headers; fragments
// (ErrFragment), jumbograms and unknown next headers (ErrUnsupported), other transports
// (ErrNotTCP) and inconsistent lengths (ErrTruncated, ErrBadHeader) are refused. TCP options
// are walked like Linux's tcp_parse_options (stop at EOL or at an impossible length; a SACK
// option is used only when its length is 2+8n), recording where the SACK blocks are.
//
// Decoding is hand-written rather than done with gopacket's DecodingLayerParser: rewriting in
// place needs the byte offsets of the sequence, acknowledgment, checksum and SACK fields and of
// the payload, which gopacket's layers present as decoded values rather than offsets, and a
// fixed set of sentinel errors decides what the daemon does with a packet. gopacket is
// kept where it is strongest: it builds every test packet and independently re-decodes and
// verifies every packet this package writes.
//
// # The mapping
//
// Per direction, Conn records the edits made to the original byte stream, Edit{Seq, Len, New}
// replacing original positions [Seq, Seq+Len) by New. The rewritten stream is the original
// with each edit applied. An original position p maps to:
//
//   - p + (cumulative delta of the edits that end at or before p), outside edits;
//   - a' + min(p-a, len(New)) inside an edit [a, b) whose rewritten start is a';
//   - a' + len(New) for p = b.
//
// The map is monotonic, so a packet covering original [x0, x1) is released with sequence
// number map(x0) and exactly the rewritten bytes [map(x0), map(x1)): any segmentation of the
// original stream (first transmission, retransmission, coalesced or split differently) maps to
// contiguous, non-overlapping pieces whose union is the rewritten stream, and a retransmission
// is byte-identical to the first rewritten transmission. A SYN occupies the number before the
// first payload byte and a FIN the number after the last, so both simply shift.
//
// Acknowledgment numbers and SACK edges of the other direction travel the other way: a
// rewritten position q maps back to the largest original position whose image is at or before
// q. Consequently an ack that covers all of an edit's replacement acknowledges all of the
// original range it replaced (a shrunk or deleted range is acknowledged as soon as its shorter
// image is), and an ack inside a replacement acknowledges no original byte whose image the
// receiver does not hold (inside a grown replacement, beyond the original length, it maps to
// the edit's last original byte). A receiver only ever acknowledges segment boundaries, which
// all are images of original positions, so in practice every ack maps back exactly.
//
// Edits must replace at least one byte (Len ≥ 1): a pure insertion has no original byte to
// carry it, and which of the two segments meeting at its position should carry it would be
// ambiguous. Deletion (empty New) is allowed. Edits are announced by the packet that carries
// them entirely (the daemon holds back and joins a split command with Extend first).
//
// # Bounded memory
//
// When a packet of the other direction acknowledges a position at or beyond an edit's
// rewritten end, the sender will never retransmit the edit: it is forgotten and its delta
// becomes the base delta of positions before the next remembered edit. A stale duplicate still
// in flight from before that ack is then mapped with the base delta; such a segment lies
// entirely below the receiver's next expected byte, where the receiver discards it, so only
// its acknowledgment value matters and a stale ack is ignored by the sender.
//
// At most MaxEdits edits are remembered per direction; beyond that the oldest is forgotten even
// if unacknowledged. A retransmission that reaches back to or before that edit's end is then
// released with the base delta and its original bytes, i.e. wrong. This needs MaxEdits
// commands rewritten in one direction while the peer acknowledges none of them, which an FTP
// peer (one command, one reply) does not do.
//
// # Checksums and lengths
//
// A packet whose only change is its numbers is copied into the caller's buffer and patched in
// place, with RFC 1624 incremental updates of the TCP checksum: no allocation. When the payload
// changes, the TCP checksum is updated incrementally for the whole segment (the old segment's
// sum, pseudo-header length included, is replaced by the new one's): the pseudo-header
// addresses, equal on both sides, cancel out, so IPv6 routing headers need no special care,
// and a segment that arrived with a bad checksum keeps a bad one instead of being laundered.
// The IPv4 total length or IPv6 payload length is rewritten and the IPv4 header checksum
// updated incrementally. Checksums are assumed complete: NFQUEUE resolves partial (offloaded)
// checksums before queueing unless the queue is configured with the GSO flag, which the daemon
// must not set.
//
// # Size limit
//
// Apply never fragments and never releases a packet that grew beyond maxLen (the path MTU the
// daemon passes): it returns ErrTooBig, records nothing and leaves the packet untouched; the
// daemon then releases the packet without the rewrite (sequence adjustment only) and logs why.
// A packet that does not grow is never refused: it already had that size when the kernel
// handed it over.
//
// # Allocation and concurrency
//
// Decode never allocates. Apply does not allocate for a packet it returns unchanged (no copy
// either) nor, given an out buffer with capacity for the result (65535 bytes), for packets
// whose numbers or payload it rewrites from recorded edits; recording new edits copies their
// text. A Conn is used by one goroutine at a time (the daemon's per-queue worker).
//
// # Persistence
//
// Conn implements encoding.BinaryMarshaler and BinaryUnmarshaler so that a restarted daemon or
// a backup router can resume the sequence adjustment of live connections.
package nat
