package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// CarrierHelper is the kernel conntrack helper type ftpalg attaches to FTP control connections
// as an inert carrier, and also the name ftpalg gives the nftables ct helper object of that type
// (`ct helper "sane" { type "sane" protocol tcp; }`, set by `ct helper set "sane"`).
//
// Why a carrier: ctnetlink creates an expectation only for a master that has a helper
// (EOPNOTSUPP otherwise), and the helper's policy decides the expectation's timeout and how many
// may be pending. The SANE helper (nf_conntrack_sane) is chosen because it only ever looks at
// traffic on its own control protocol and never rewrites anything: on an FTP control connection
// it parses nothing useful and creates no expectations of its own. Its policy is 1 pending
// expectation per master, 300 s.
const CarrierHelper = "sane"

// natFollowMaster is the kernel expectation function that NATs an expected connection the way
// its master is NATed (net/netfilter/nf_nat_helper.c). The kernel compares the name with
// strcmp, and the netlink library sends strings without a terminating NUL: append one.
const natFollowMaster = "nat-follow-master\x00"

// Dir is a conntrack direction.
type Dir uint8

// Conntrack directions, numbered as in the kernel (IP_CT_DIR_ORIGINAL, IP_CT_DIR_REPLY).
const (
	Original Dir = iota
	Reply
)

func (d Dir) String() string {
	switch d {
	case Original:
		return "original"
	case Reply:
		return "reply"
	default:
		return fmt.Sprintf("Dir(%d)", uint8(d))
	}
}

// Tuple is one direction of a TCP connection as conntrack records it.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// Reverse returns the tuple of the opposite direction (Src and Dst swapped).
func (t Tuple) Reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src} }

// IsValid reports whether both endpoints are valid and of the same address family.
func (t Tuple) IsValid() bool {
	return t.Src.IsValid() && t.Dst.IsValid() && t.Src.Addr().Is4() == t.Dst.Addr().Is4()
}

func (t Tuple) String() string { return t.Src.String() + "->" + t.Dst.String() }

// Flow is a conntrack entry of a TCP connection.
type Flow struct {
	ID     uint32
	Orig   Tuple  // original direction: client → server as the client sent it (pre-NAT)
	Reply  Tuple  // reply direction as the server sends it (pre-NAT of the reply)
	Helper string // attached helper name ("" if none)
	Master *Tuple // for a data connection: its master's original tuple (nil otherwise)
	Zone   uint16 // conntrack zone (0: the default zone)
	// SeqAdj is the sequence adjustment of each direction (index Original, Reply), valid when
	// Adjusting: the kernel shifts the connection's sequence numbers (IPS_SEQ_ADJUST).
	SeqAdj    [2]SeqAdj
	Adjusting bool
}

// Expectation is a pinhole: Src (any source port) may open one TCP connection to Dst, related to
// Master. When NAT is set, the new connection is redirected like the kernel FTP NAT helper does
// (function "nat-follow-master", direction NATDir = the direction OPPOSITE to the packet that
// announced the endpoint), landing on NATTo (the endpoint as announced).
//
// Kernel semantics of NAT (nf_nat_follow_master): the new connection's destination becomes
// NATTo.Port() at the SOURCE address of the master's tuple in direction !NATDir, i.e. the real
// address of the announcer; its source becomes the destination address of that same tuple. The
// kernel keeps NATTo.Addr() (it reports it back in ListExpect) but does not use it for the
// mapping: NATTo.Addr() must be the announcer's own address, which rule 1 of the design
// (bounce protection) already guarantees.
type Expectation struct {
	Zone    uint16 // the master's conntrack zone
	Master  Tuple  // master's original tuple
	Src     netip.Addr
	Dst     netip.AddrPort
	NAT     bool
	NATDir  Dir
	NATTo   netip.AddrPort
	Timeout time.Duration // requested; the kernel applies the carrier's policy (300 s), see CreateExpect
}

func (e Expectation) String() string {
	s := e.Src.String() + "->" + e.Dst.String() + " master " + e.Master.String()
	if e.NAT {
		s += " nat " + e.NATDir.String() + " to " + e.NATTo.String()
	}
	return s
}

// Errors callers branch on. Every error returned by Conn wraps one of these when it applies,
// and also the kernel errno (errors.Is(err, unix.EBUSY) keeps working).
var (
	// ErrExist: the expectation collides with an existing one (EEXIST, EBUSY, EALREADY).
	ErrExist = errors.New("expectation exists")
	// ErrNotFound: no such conntrack entry or expectation (ENOENT).
	ErrNotFound = errors.New("not found")
	// ErrNoHelper: the master connection has no helper attached, so the kernel refuses to hang
	// an expectation on it (EOPNOTSUPP). The carrier helper is missing from that connection.
	ErrNoHelper = errors.New("master connection has no helper (carrier not attached)")
)

// EventKind says what a conntrack event reports.
type EventKind uint8

// Event kinds delivered by Listen.
const (
	// FlowNew: a new conntrack entry whose master is set (an expectation was used).
	FlowNew EventKind = iota + 1
	// FlowDestroy: a TCP conntrack entry was destroyed.
	FlowDestroy
	// ExpectNew: an expectation was created (by anyone, in this network namespace).
	ExpectNew
	// ExpectDestroy: an expectation was removed: used, deleted, replaced, or timed out.
	ExpectDestroy
	// EventsLost: the kernel dropped events because the socket buffer overflowed (ENOBUFS).
	// The listener keeps running; the receiver should resynchronise (ListExpect, Lookup).
	EventsLost
)

func (k EventKind) String() string {
	switch k {
	case FlowNew:
		return "flow_new"
	case FlowDestroy:
		return "flow_destroy"
	case ExpectNew:
		return "expect_new"
	case ExpectDestroy:
		return "expect_destroy"
	case EventsLost:
		return "events_lost"
	default:
		return fmt.Sprintf("EventKind(%d)", uint8(k))
	}
}

// Event is one conntrack event. Flow is set for FlowNew and FlowDestroy, Expect for ExpectNew
// and ExpectDestroy.
type Event struct {
	Kind   EventKind
	Flow   Flow
	Expect Expectation
}
