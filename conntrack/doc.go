// Package conntrack is ftpalg's boundary with the kernel connection tracker (ctnetlink): it
// finds the conntrack entry of an FTP control connection (in its zone, also NATed both ways),
// registers the sequence adjustment of a stream ftpalg resized (SetSeqAdj), labels entries
// (SetLabel), creates and deletes expectations ("pinholes") hung on it, lists them, reports
// the conntrack events ftpalg owns (a kernel socket filter drops the rest), and runs the
// startup checks the daemon needs before it touches any traffic.
//
// It works in the network namespace of the thread that calls Dial. Its calls are per session
// or per command, never per packet: each is one or two netlink round trips and allocates.
//
// # The carrier helper
//
// The kernel creates an expectation only for a master connection that has a helper. ftpalg
// attaches the SANE helper (CarrierHelper, "sane") to FTP control connections as an inert
// carrier, with an nftables ct helper object named "sane" of type "sane" (protocol tcp) set by
// `ct helper set "sane"` in a filter-type chain on the prerouting and output hooks at priority
// filter (at priority raw the conntrack entry does not exist yet and the statement does
// nothing). The conntrack/rules package installs that object and those rules. ListExpect and
// Listen report only expectations whose master carries this helper.
//
// # Kernel behaviour measured on Linux 6.18 (tests in this package)
//
//   - Timeout: the kernel arms every expectation with the carrier's policy, 300 s, whatever
//     CTA_EXPECT_TIMEOUT asks (asked 0 s, 5 s and 1 h: ListExpect reports 5m0s each time).
//     ftpalg enforces its own pinhole timeout by calling DeleteExpect.
//   - One per master: a second expectation with another tuple on the same master is accepted
//     and the first is evicted (the kernel reports ExpectDestroy for it).
//   - Collision: the same tuple again, from the same or another master, fails with EEXIST
//     (ErrExist): requests carry NLM_F_EXCL. The kernel's EBUSY/EALREADY also map to ErrExist.
//   - A master without a helper: EOPNOTSUPP (ErrNoHelper). A master that is gone: ENOENT
//     (ErrNotFound).
//   - Use: the first packet of a matching connection consumes the expectation; the kernel
//     reports ExpectDestroy before the FlowNew of the data connection (which has Master set).
//   - NAT (nat-follow-master): the data connection's conntrack entry always gets the NAT
//     binding, but packets are rewritten only on hooks where a nat-type chain is registered
//     in the namespace (without one the connection was refused at the unmapped port).
//   - Sequence adjustment: an update with CTA_SEQ_ADJ_ORIG/REPLY sticks only on an entry with
//     the seqadj extension, which the kernel adds when NAT changes the tuple while a helper is
//     attached, including nft's `ct helper set` on an entry already NATed (a port-forward);
//     on any other entry it is accepted and does nothing, so SetSeqAdj reads it back. The
//     update raises a conntrack event (conntrackd replicates it).
//   - Dumps filtered by CTA_FILTER on the tuple (Discover): supported; IPv6 addresses in the
//     filter match nothing, so IPv6 dumps filter on protocol and ports only. A dump walks the
//     whole table, every namespace's entries included.
//   - Zones: the expectation dump does not report an expectation's zone.
//   - Events: with net.netfilter.nf_conntrack_events = 2 (the default), the kernel reports the
//     destruction only of entries created while a listener was subscribed; Subscribe before
//     traffic flows.
//
// # Errors
//
// Errors name the operation and the tuple or expectation, wrap ErrExist, ErrNotFound or
// ErrNoHelper where they apply, and keep the kernel errno in the chain (errors.Is(err,
// unix.EMFILE) works for a full expectation table).
package conntrack
