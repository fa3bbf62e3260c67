package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Conn talks ctnetlink to the connection tracker of one network namespace. Its methods are safe
// for concurrent use. They are meant for per-session and per-command work, never per packet:
// each call is one or two netlink round trips and allocates.
type Conn struct {
	ct *ct.Conn        // typed requests (get, create expectation, dumps)
	nf *netfilter.Conn // raw requests the library lacks (expectation get/delete, flag-only update)
	ns *os.File        // the network namespace Dial ran in, for Listen's own socket
}

// Dial opens ctnetlink in the calling thread's current network namespace. A caller that has
// moved its thread into another namespace must hold runtime.LockOSThread across the call.
func Dial() (*Conn, error) {
	// The sockets are bound to the namespace of the thread that creates them, so keep this
	// goroutine on one thread while reading the namespace and creating them.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("dial ctnetlink: open network namespace: %w", err)
	}
	c, err := ct.Dial(nil)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("dial ctnetlink: %w", err)
	}
	nf, err := netfilter.Dial(nil)
	if err != nil {
		c.Close()
		ns.Close()
		return nil, fmt.Errorf("dial ctnetlink: %w", err)
	}
	return &Conn{ct: c, nf: nf, ns: ns}, nil
}

// Close closes the request sockets. Listeners started from c run on their own sockets and stop
// with their context.
func (c *Conn) Close() error {
	return errors.Join(c.ct.Close(), c.nf.Close(), c.ns.Close())
}

// Lookup finds the control connection's conntrack entry in zone 0; see LookupIn.
func (c *Conn) Lookup(seen Tuple) (Flow, error) { return c.LookupIn(seen, 0) }

// LookupIn finds the control connection's conntrack entry in zone from the tuple seen in a
// client→server packet at the queue point (FORWARD/INPUT/OUTPUT hooks, i.e. after DNAT, before
// SNAT): try it as the original tuple; if not found, as the reverse of the reply tuple
// (port-forward DNAT). Two hash look-ups in the kernel; a connection NATed both ways
// (hairpin NAT) is found by neither: see Discover.
func (c *Conn) LookupIn(seen Tuple, zone uint16) (Flow, error) {
	seen = seen.unmap()
	if !seen.IsValid() {
		return Flow{}, fmt.Errorf("lookup %s: %w", seen, errBadTuple)
	}
	f, err := c.ct.Get(ct.Flow{TupleOrig: ctTuple(seen), Zone: zone})
	if errors.Is(err, unix.ENOENT) {
		// Under a port-forward the client addressed the public endpoint; the queue point sees
		// the packet after DNAT, which is the reverse of the reply tuple.
		f, err = c.ct.Get(ct.Flow{TupleReply: ctTuple(seen.Reverse()), Zone: zone})
	}
	if err != nil {
		return Flow{}, kernelErr("lookup", seen.String(), err, errnoFlow)
	}
	fl, ok := flowFrom(&f)
	if !ok {
		return Flow{}, fmt.Errorf("lookup %s: %w", seen, errNotTCP)
	}
	return fl, nil
}

// Discover finds the entries of the connection seen (as LookupIn sees it) in every zone, also
// one NATed both ways (hairpin NAT: neither tuple is known whole at the queue point, but the
// original source and the reply source are what the packet shows): one dump the kernel filters
// down to those entries. Several when zones with overlapping address spaces hold the same
// 4-tuple. It walks the kernel's whole table (tens of milliseconds for 100,000s of entries):
// callers ration it.
func (c *Conn) Discover(seen Tuple) ([]Flow, error) {
	seen = seen.unmap()
	if !seen.IsValid() {
		return nil, fmt.Errorf("discover %s: %w", seen, errBadTuple)
	}
	fs, err := c.findBySources(seen)
	if err != nil {
		return nil, kernelErr("discover", seen.String(), err, errnoFlow)
	}
	out := make([]Flow, 0, len(fs))
	for i := range fs {
		if fl, ok := flowFrom(&fs[i]); ok {
			out = append(out, fl)
		}
	}
	return out, nil
}

// ctnetlink dump filter (nfnetlink_conntrack.h, ctnetlink_alloc_filter).
const (
	ctaTupleReply        = 2  // CTA_TUPLE_REPLY
	ctaFilter            = 25 // CTA_FILTER
	ctaFilterOrigFlags   = 1  // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags  = 2  // CTA_FILTER_REPLY_FLAGS
	filterFlagIPSrc      = 1 << 0
	filterFlagProtoNum   = 1 << 3
	filterFlagProtoSport = 1 << 4
)

// findBySources finds, in every zone, the TCP entries whose original source is seen.Src and
// whose reply source is seen.Dst: a dump the kernel filters down to that connection
// (CTA_FILTER, Linux 5.9+). ENOENT when there is none.
func (c *Conn) findBySources(seen Tuple) ([]ct.Flow, error) {
	// NLA_U32 attributes not flagged network-order are in host byte order.
	flags := uint32(filterFlagIPSrc | filterFlagProtoNum | filterFlagProtoSport)
	if !seen.Src.Addr().Is4() {
		// On the kernels measured (6.18) an IPv6 address in the filter matches nothing:
		// filter on the protocol and ports only; the addresses are compared below.
		flags = filterFlagProtoNum | filterFlagProtoSport
	}
	native := binary.NativeEndian.AppendUint32(nil, flags)
	attrs := []netfilter.Attribute{
		tupleAttr(ctaTupleOrig, seen.Src, seen.Dst),
		tupleAttr(ctaTupleReply, seen.Dst, seen.Src),
		{Type: ctaFilter, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaFilterOrigFlags, Data: native},
			{Type: ctaFilterReplyFlags, Data: native},
		}},
	}
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: ipctnlMsgCTGet,
		Family:      family(seen.Src.Addr()),
		Flags:       netlink.Request | netlink.Dump,
	}, attrs)
	if err != nil {
		return nil, err
	}
	msgs, err := c.nf.Query(req)
	if err != nil {
		return nil, err
	}
	var out []ct.Flow
	for _, m := range msgs {
		var ev ct.Event
		if ev.Unmarshal(m) != nil || ev.Flow == nil {
			continue
		}
		if o, ok := tupleFrom(ev.Flow.TupleOrig); !ok || o.Src != seen.Src {
			continue // a kernel without CTA_FILTER support ignores it and dumps everything
		}
		if r, ok := tupleFrom(ev.Flow.TupleReply); !ok || r.Src != seen.Dst {
			continue
		}
		out = append(out, *ev.Flow)
	}
	if len(out) == 0 {
		return nil, unix.ENOENT
	}
	return out, nil
}

// CreateExpect creates the pinhole e (the expectation is created and reported with ExpectNew
// before CreateExpect returns). Errors wrap ErrExist when it collides with an existing
// expectation, ErrNoHelper when the master has no helper, ErrNotFound when the master is gone.
//
// Timeout: the kernel ignores the requested value and arms the expectation with the master
// helper's policy (300 s for the carrier); ftpalg enforces its own, shorter timeout by deleting
// the expectation. The carrier allows one pending expectation per master: creating a second
// one with a different tuple evicts the first (the kernel reports ExpectDestroy for it).
func (c *Conn) CreateExpect(e Expectation) error {
	e = e.unmap()
	if err := e.validate(); err != nil {
		return fmt.Errorf("create expectation %s: %w", e, err)
	}
	ex := ct.Expect{
		Timeout:     timeoutSeconds(e.Timeout),
		Zone:        e.Zone,
		TupleMaster: ctTuple(e.Master),
		Tuple:       ctTuple(Tuple{Src: netip.AddrPortFrom(e.Src, 0), Dst: e.Dst}),
		Mask:        expectMask(e.Src.Is4()),
	}
	if e.NAT {
		ex.Function = natFollowMaster
		ex.NAT = ct.ExpectNAT{
			Direction: e.NATDir == Reply,
			// The kernel saves the source half of this tuple (the address and port the new
			// connection is to land on); the destination half must parse, nothing more.
			Tuple: ctTuple(Tuple{Src: e.NATTo, Dst: e.Dst}),
		}
	}
	if err := c.ct.CreateExpect(ex); err != nil {
		return kernelErr("create expectation", e.String(), err, errnoCreateExpect)
	}
	return nil
}

// DeleteExpect removes the pinhole e. It finds the expectation by its tuple, checks that it
// still belongs to e.Master (a later session may have reused the tuple), and deletes it by its
// kernel ID. ErrNotFound when it is already gone (used, evicted, timed out, or deleted).
func (c *Conn) DeleteExpect(e Expectation) error {
	e = e.unmap()
	if err := e.validate(); err != nil {
		return fmt.Errorf("delete expectation %s: %w", e, err)
	}
	pf := family(e.Src)
	tuple := tupleAttr(ctaExpectTuple, netip.AddrPortFrom(e.Src, 0), e.Dst)
	key := []netfilter.Attribute{tuple}
	if e.Zone != 0 {
		key = append(key, netfilter.Attribute{Type: ctaExpectZone, Data: netfilter.Uint16Bytes(e.Zone)})
	}
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlinkExp,
		MessageType: ipctnlMsgExpGet,
		Family:      pf,
		Flags:       netlink.Request | netlink.Acknowledge,
	}, key)
	if err != nil {
		return fmt.Errorf("delete expectation %s: %w", e, err)
	}
	msgs, err := c.nf.Query(req)
	if err != nil {
		return kernelErr("delete expectation", e.String(), err, errnoExpect)
	}
	var got *ct.Expect
	for _, m := range msgs {
		var ev ct.Event
		if ev.Unmarshal(m) == nil && ev.Expect != nil {
			got = ev.Expect
			break
		}
	}
	if got == nil {
		return fmt.Errorf("delete expectation %s: %w", e, ErrNotFound)
	}
	if m, ok := tupleFrom(got.TupleMaster); !ok || m != e.Master {
		return fmt.Errorf("delete expectation %s: tuple now belongs to master %s: %w", e, m, ErrNotFound)
	}
	id := netfilter.Attribute{Type: ctaExpectID, Data: netfilter.Uint32Bytes(got.ID)}
	if err := c.query(netfilter.NFSubsysCTNetlinkExp, ipctnlMsgExpDelete, pf, append(key, id)); err != nil {
		return kernelErr("delete expectation", e.String(), err, errnoExpect)
	}
	return nil
}

// ListExpect returns every TCP expectation whose master carries the carrier helper, with
// Timeout set to the time the kernel has left on it (whole seconds).
func (c *Conn) ListExpect() ([]Expectation, error) {
	exps, err := c.ct.DumpExpect()
	if err != nil {
		return nil, fmt.Errorf("list expectations: %w", err)
	}
	var out []Expectation
	for i := range exps {
		if exps[i].HelpName != CarrierHelper {
			continue
		}
		if e, ok := expectFrom(&exps[i]); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// query sends one raw ctnetlink request and waits for the acknowledgement.
func (c *Conn) query(sub netfilter.SubsystemID, typ netfilter.MessageType, pf netfilter.ProtoFamily, attrs []netfilter.Attribute) error {
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: sub,
		MessageType: typ,
		Family:      pf,
		Flags:       netlink.Request | netlink.Acknowledge,
	}, attrs)
	if err != nil {
		return err
	}
	_, err = c.nf.Query(req)
	return err
}

var (
	errBadTuple       = errors.New("invalid tuple: endpoints must be valid and of one address family")
	errNotTCP         = errors.New("not a tcp connection")
	errBadExpectation = errors.New("invalid expectation")
)

func (e Expectation) validate() error {
	switch {
	case !e.Master.IsValid():
		return fmt.Errorf("%w: master %s", errBadExpectation, e.Master)
	case !e.Src.IsValid() || !e.Dst.IsValid() || e.Dst.Port() == 0:
		return fmt.Errorf("%w: endpoints", errBadExpectation)
	case e.Src.Is4() != e.Dst.Addr().Is4() || e.Src.Is4() != e.Master.Src.Addr().Is4():
		return fmt.Errorf("%w: mixed address families", errBadExpectation)
	case e.NAT && (!e.NATTo.IsValid() || e.NATTo.Port() == 0 || e.NATTo.Addr().Is4() != e.Src.Is4()):
		return fmt.Errorf("%w: nat endpoint %s", errBadExpectation, e.NATTo)
	case e.NAT && e.NATDir > Reply:
		return fmt.Errorf("%w: nat direction %d", errBadExpectation, e.NATDir)
	}
	return nil
}

// timeoutSeconds converts a requested timeout to the whole seconds ctnetlink carries (rounded
// up, at least 1). The kernel does not apply it at creation; it is sent because the attribute
// is part of the message.
func timeoutSeconds(d time.Duration) uint32 {
	s := (d + time.Second - 1) / time.Second
	switch {
	case s < 1:
		return 1
	case s > 1<<31:
		return 1 << 31
	}
	return uint32(s)
}

// Which errno maps to which sentinel depends on the operation.
type errnoMap uint8

const (
	errnoFlow         errnoMap = iota // ENOENT → ErrNotFound
	errnoCreateExpect                 // + EEXIST/EBUSY/EALREADY → ErrExist, EOPNOTSUPP → ErrNoHelper
	errnoExpect                       // ENOENT → ErrNotFound
)

// kernelErr wraps a netlink error with the operation and its subject, adding the sentinel the
// errno stands for. The errno stays in the chain.
func kernelErr(op, subject string, err error, m errnoMap) error {
	var s error
	switch {
	case errors.Is(err, unix.ENOENT):
		s = ErrNotFound
	case m == errnoCreateExpect && (errors.Is(err, unix.EEXIST) || errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EALREADY)):
		s = ErrExist
	case m == errnoCreateExpect && errors.Is(err, unix.EOPNOTSUPP):
		s = ErrNoHelper
	}
	if s == nil {
		return fmt.Errorf("%s %s: %w", op, subject, err)
	}
	return fmt.Errorf("%s %s: %w: %w", op, subject, s, err)
}
