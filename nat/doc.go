// Package nat rewrites the packets of an FTP control connection: it decodes IPv4/IPv6 + TCP
// packets, replaces byte ranges of the payload and fixes lengths and checksums. It does not
// touch sequence or acknowledgment numbers: when a rewrite changes the stream's length the
// daemon registers the change in the connection's conntrack entry (seqadj, DESIGN.md) before it
// releases the packet, and the kernel shifts seq, ack and SACK blocks of every later packet
// itself, also while ftpalg is down or on another router. What stays here is what only the
// rewriter knows: the replacement text, so that a retransmission of a rewritten segment goes out
// with the same bytes again.
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
// # Edits and retransmissions
//
// Per direction, Conn records the edits made to the original byte stream, Edit{Seq, Len, New}
// replacing original positions [Seq, Seq+Len) by New. A packet covering original [x0, x1) is
// released with the same sequence number and the rewritten bytes of that range: an original
// position p maps to a' + min(p-a, len(New)) inside an edit [a, b) (a' its rewritten start) and
// outside edits simply shifts, so any segmentation of the original stream maps to contiguous,
// non-overlapping pieces and a retransmission is byte-identical to the first rewritten
// transmission. The kernel's adjustment is two-level (nf_ct_seqadj): a segment starting at or
// before the last resized segment's sequence number is shifted by offset_before, a later one by
// offset_after. That is exact for every segment that starts after the previous resized segment,
// which is all an FTP peer sends (it waits for the reply to its command; nf_nat_ftp relies on
// the same).
//
// Edits must replace at least one byte (Len ≥ 1): a pure insertion has no original byte to
// carry it. Deletion (empty New) is allowed. Edits are announced by the packet that carries them
// entirely (the daemon holds back and joins a split command with Extend first).
//
// The urgent pointer, an offset from the sequence number, is moved so that it still points past
// the same byte (Telnet IP/DM before ABOR), both by Apply and by Extend.
//
// # Bounded memory
//
// When a packet of the other direction acknowledges a position at or beyond an edit's rewritten
// end, the sender will not retransmit the edit: it is forgotten (its delta stays in Delta) —
// except the edits of the latest resized segment, the kernel's correction point, which a
// spurious retransmission may still carry. At most MaxEdits edits are remembered per direction.
//
// # Checksums and lengths
//
// When the payload changes, the TCP checksum is updated incrementally for the whole segment (the old segment's
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
// either) nor, given an out buffer with capacity for the result (65535 bytes), for a
// retransmission it rewrites from recorded edits; recording new edits copies their text. A
// Conn is used by one goroutine at a time (the daemon's per-queue worker).
package nat
