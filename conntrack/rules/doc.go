// Package rules owns the nftables table through which ftpalg sees FTP control traffic.
//
// The table (family inet, default name "ftpalg") holds:
//
//   - set ports: the control ports (type inet_service), e.g. { 21 };
//   - ct helper ftpalg-carrier: a conntrack helper object of type "sane", protocol tcp,
//     l3proto inet. It is the inert carrier: ctnetlink creates an expectation only on a
//     master connection that has a helper, and "sane" adds nothing on port 21 traffic
//     that ftpalg would have to undo (its parser looks for SANE, not FTP, messages);
//   - chains prerouting and output_helper (type filter, priority filter = 0): attach the
//     carrier to every NEW connection to a control port, received (prerouting) or locally
//     generated (output). At priority raw (-300) the statement silently does nothing, as
//     conntrack (-200) has not yet attached an entry to the packet;
//   - chains forward, input and output (type filter, priority -10, see below): send the
//     control connection's packets (the original direction matched by destination port, the
//     reply direction by source port) to chain control with goto;
//   - chain control (a regular chain): decides what is queued (below), then queues.
//
// # What is not queued
//
// A packet that returns from chain control ends its base chain, whose policy accepts it:
// it is not queued. Two kinds return:
//
//   - the packets of a connection carrying conntrack label SkipLabel (default 127,
//     DefaultSkipLabel): the daemon sets it (conntrack.Conn.SetLabel) on a connection it no
//     longer needs to see, a session in TLS passthrough or over its limits. A rule that
//     uses ct label also makes the kernel give every new conntrack entry its label area
//     (without it ctnetlink refuses the label with ENOSPC): connections that began before
//     the table was loaded cannot be marked;
//   - pure ACKs: no payload and none of SYN, FIN, RST. nft cannot compute a payload length,
//     so each rule matches one header length exactly: an IPv4 header without options
//     (ip hdrlength 5) or an IPv6 header without extension headers, a TCP header of 5 or 8
//     words (no options; timestamps), and a datagram length equal to the headers. A pure ACK
//     with other TCP options (SACK blocks) or IP options is queued, which costs a traversal
//     and nothing else. Since the kernel carries the sequence adjustment (seqadj), ftpalg has
//     nothing to do with a pure ACK; QueuePureACKs restores queueing them. The rules are
//     written with the expressions nft generates for their text, in nft's order, so that
//     `nft list table` prints Render's text.
//
// The port matches come first, so the router's other traffic pays only the two set lookups.
//
// # Queue priority
//
// The queue chains run at priority -10 ("filter - 10") on every hook:
//
//   - after conntrack (-200): the packet has its conntrack entry, so "ct direction" works
//     and ftpalg can look the connection up;
//   - after destination NAT (-100 in prerouting and in output): in all three hooks the
//     packet shows the post-DNAT destination of the original direction, and the reply
//     shows the real server as its source. ftpalg thus sees one consistent view for a
//     forwarded, a received and a locally generated connection. At mangle (-150) a
//     locally generated packet would be seen before its output DNAT, and the forward hook
//     after it: two views of the same kind of connection;
//   - before source NAT (100, postrouting and input): the embedded address in a PORT/EPRT
//     is still the sender's own, and ftpalg's expectation is created before the operator's
//     SNAT rewrites the header;
//   - before the operator's own filter chains at the usual priority filter (0): ftpalg
//     sees a control packet before it is accepted or dropped. An operator drop still
//     applies after ftpalg's verdict, since a base chain's accept is not final for the
//     other base chains of the same hook.
//
// The input chain skips packets that arrive on "lo": a connection over loopback crosses
// both output and input, and its packets (both directions leave through output) would
// otherwise be queued twice.
//
// # The queue statement
//
// The kernels ftpalg targets may lack nft's native queue expression (CONFIG_NFT_QUEUE):
// Install therefore writes the xtables NFQUEUE target through nft_compat (revision 3,
// struct xt_NFQ_info_v3: queuenum u16, queues_total u16, flags u16, in host byte order,
// padded to 8 bytes). The nft tool lists such a rule as the native statement when it can
// translate it ("queue num 0-3 bypass"), else as an xt target. Render writes the native
// statement, the closest text form, and says so in a comment: its text loads with
// `nft -f` only on a kernel with CONFIG_NFT_QUEUE.
//
// # Queue balancing
//
// With Queues > 1 the target spreads connections over Queue..Queue+Queues-1 with the
// kernel's nfqueue_hash (include/net/netfilter/nf_queue.h). It does not XOR the addresses:
// for IPv4 it hashes (min(saddr, daddr), max(saddr, daddr), protocol) with jhash, for
// IPv6 it orders the last 32-bit words of the two addresses and adds the smaller of
// their second words. The hash is symmetric in source and destination, so both
// directions of a connection land on the same queue, provided both directions show the
// same address pair where the queue rule runs: true at priority -10 (after DNAT, before
// SNAT; the reply is de-SNATed in prerouting and de-DNATed only in postrouting/input).
// Ports are not hashed: all control connections between the same two hosts share a
// queue. Under nft_compat in an inet table the hook state carries the packet's real
// family (IPv4 or IPv6), which is what the hash switches on.
//
// FailOpen sets NFQ_FLAG_BYPASS: when no program is bound to the queue the kernel accepts
// the packet instead of dropping it. (A full queue is a different case, handled by the
// consumer's own fail-open flag; see package queue.)
package rules
