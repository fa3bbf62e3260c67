package conntrack

import (
	"net/netip"
	"time"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// ctnetlink message types and attributes used in raw requests
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCTNew     netfilter.MessageType = 0 // IPCTNL_MSG_CT_NEW
	ipctnlMsgCTGet     netfilter.MessageType = 1 // IPCTNL_MSG_CT_GET
	ipctnlMsgExpGet    netfilter.MessageType = 1 // IPCTNL_MSG_EXP_GET
	ipctnlMsgExpDelete netfilter.MessageType = 2 // IPCTNL_MSG_EXP_DELETE

	ctaTupleOrig = 1 // CTA_TUPLE_ORIG

	ctaExpectTuple = 2 // CTA_EXPECT_TUPLE
	ctaExpectID    = 5 // CTA_EXPECT_ID
	ctaExpectZone  = 7 // CTA_EXPECT_ZONE

	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO
	ctaIPv4Src    = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst    = 2 // CTA_IP_V4_DST
	ctaIPv6Src    = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst    = 4 // CTA_IP_V6_DST
	ctaProtoNum   = 1 // CTA_PROTO_NUM
	ctaProtoSrc   = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDst   = 3 // CTA_PROTO_DST_PORT
)

func family(a netip.Addr) netfilter.ProtoFamily {
	if a.Is4() {
		return netfilter.ProtoIPv4
	}
	return netfilter.ProtoIPv6
}

// tupleAttr encodes a TCP tuple as a nested attribute of type typ.
func tupleAttr(typ uint16, src, dst netip.AddrPort) netfilter.Attribute {
	srcType, dstType := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if !src.Addr().Is4() {
		srcType, dstType = ctaIPv6Src, ctaIPv6Dst
	}
	return netfilter.Attribute{Type: typ, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaTupleIP, Nested: true, Children: []netfilter.Attribute{
			{Type: srcType, Data: src.Addr().AsSlice()},
			{Type: dstType, Data: dst.Addr().AsSlice()},
		}},
		{Type: ctaTupleProto, Nested: true, Children: []netfilter.Attribute{
			{Type: ctaProtoNum, Data: []byte{unix.IPPROTO_TCP}},
			{Type: ctaProtoSrc, Data: netfilter.Uint16Bytes(src.Port())},
			{Type: ctaProtoDst, Data: netfilter.Uint16Bytes(dst.Port())},
		}},
	}}
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// unmap returns t with IPv4-mapped IPv6 addresses unmapped: conntrack keeps IPv4 connections
// as IPv4.
func (t Tuple) unmap() Tuple { return Tuple{Src: unmapAP(t.Src), Dst: unmapAP(t.Dst)} }

// unmap returns e with every IPv4-mapped IPv6 address unmapped.
func (e Expectation) unmap() Expectation {
	e.Master = e.Master.unmap()
	e.Src = e.Src.Unmap()
	e.Dst = unmapAP(e.Dst)
	e.NATTo = unmapAP(e.NATTo)
	return e
}

// ctTuple converts t (unmapped) to the library's tuple.
func ctTuple(t Tuple) ct.Tuple {
	return ct.Tuple{
		IP: ct.IPTuple{SourceAddress: t.Src.Addr(), DestinationAddress: t.Dst.Addr()},
		Proto: ct.ProtoTuple{
			Protocol:        unix.IPPROTO_TCP,
			SourcePort:      t.Src.Port(),
			DestinationPort: t.Dst.Port(),
		},
	}
}

// tupleFrom converts a library tuple; ok is false unless it is a filled TCP tuple.
func tupleFrom(t ct.Tuple) (Tuple, bool) {
	if t.Proto.Protocol != unix.IPPROTO_TCP || !t.IP.SourceAddress.IsValid() || !t.IP.DestinationAddress.IsValid() {
		return Tuple{}, false
	}
	return Tuple{
		Src: netip.AddrPortFrom(t.IP.SourceAddress, t.Proto.SourcePort),
		Dst: netip.AddrPortFrom(t.IP.DestinationAddress, t.Proto.DestinationPort),
	}, true
}

// flowFrom converts a library flow; ok is false unless it is a TCP connection.
func flowFrom(f *ct.Flow) (Flow, bool) {
	orig, ok := tupleFrom(f.TupleOrig)
	if !ok {
		return Flow{}, false
	}
	reply, _ := tupleFrom(f.TupleReply) // absent only in malformed messages
	out := Flow{ID: f.ID, Orig: orig, Reply: reply, Helper: f.Helper.Name, Zone: f.Zone}
	if f.Status&ipsSeqAdjust != 0 {
		out.Adjusting = true
		out.SeqAdj[Original] = seqAdjFrom(f.SeqAdjOrig)
		out.SeqAdj[Reply] = seqAdjFrom(f.SeqAdjReply)
	}
	if m, ok := tupleFrom(f.TupleMaster); ok {
		out.Master = &m
	}
	return out, true
}

// expectFrom converts a library expectation; ok is false unless it is a TCP expectation.
func expectFrom(x *ct.Expect) (Expectation, bool) {
	master, ok := tupleFrom(x.TupleMaster)
	if !ok {
		return Expectation{}, false
	}
	t, ok := tupleFrom(x.Tuple)
	if !ok {
		return Expectation{}, false
	}
	e := Expectation{
		Zone:    x.Zone,
		Master:  master,
		Src:     t.Src.Addr(),
		Dst:     t.Dst,
		Timeout: time.Duration(x.Timeout) * time.Second,
	}
	// The kernel reports NAT only when the expectation saved a NAT address or port.
	if a := x.NAT.Tuple.IP.SourceAddress; a.IsValid() {
		e.NAT = true
		if x.NAT.Direction {
			e.NATDir = Reply
		}
		e.NATTo = netip.AddrPortFrom(a, x.NAT.Tuple.Proto.SourcePort)
	}
	return e, true
}

var (
	maskAll4 = netip.AddrFrom4([4]byte{0xff, 0xff, 0xff, 0xff})
	maskAll6 = netip.AddrFrom16([16]byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	})
)

// expectMask is the pinhole mask: source address exact, source port any. The kernel keeps only
// the source half of a mask; the destination is always matched exactly, but must be encoded.
func expectMask(is4 bool) ct.Tuple {
	all := maskAll6
	if is4 {
		all = maskAll4
	}
	return ct.Tuple{
		IP:    ct.IPTuple{SourceAddress: all, DestinationAddress: all},
		Proto: ct.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: 0, DestinationPort: 0xffff},
	}
}
