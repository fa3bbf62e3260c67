package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/net/bpf"
)

// EventFilter selects the conntrack events a Listener receives. The zero value selects
// everything Listen reports (no kernel filter, expectation events included).
//
// With Ports set, the listener joins only the new and destroy groups (no expectation events)
// and attaches a socket filter so that the kernel queues only:
//
//   - new entries that have a master (a pinhole was used), TCP only;
//   - destroyed TCP entries whose original destination port or reply source port is one of
//     Ports (a control connection, also behind a port-forward that DNATs to a control port).
//
// Every other event of the router is dropped by the kernel before it reaches the socket: it
// costs no wake-up, no decoding and no room in the receive buffer, so a busy router no longer
// overflows the buffer with events ftpalg does not want (which cost it its own events).
type EventFilter struct {
	Ports []uint16
	// NewExpectations adds the expectation-created events (all of them: they are as rare as
	// pinholes). ftpalg uses them to repair pinholes that conntrackd replicated from the other
	// router without their NAT.
	NewExpectations bool
}

func (f EventFilter) isZero() bool { return len(f.Ports) == 0 }

// wants reports whether a decoded event is one f selects. The kernel filter already applies
// it; this exact check in userspace covers the messages the kernel filter lets through
// because it could not prove them unwanted (see eventFilterProgram).
func (f EventFilter) wants(ev Event) bool {
	if f.isZero() {
		return true
	}
	switch ev.Kind {
	case FlowNew:
		return ev.Flow.Master != nil
	case FlowDestroy:
		return slices.Contains(f.Ports, ev.Flow.Orig.Dst.Port()) || slices.Contains(f.Ports, ev.Flow.Reply.Src.Port())
	case ExpectNew:
		return f.NewExpectations
	case EventsLost:
		return true
	}
	return false
}

// Socket filter verdicts: the number of bytes of the message to queue (all of it) or 0 (drop).
const (
	filterKeep = 0xffffffff
	filterDrop = 0
)

// maxFilterInsns is the kernel's limit on a classic BPF program (BPF_MAXINSNS).
const maxFilterInsns = 4096

var errTooManyPorts = errors.New("too many ports for the event filter")

// eventFilterProgram builds the classic BPF socket filter of EventFilter{Ports: ports}. It runs
// in the kernel on each ctnetlink event message before it is queued to the socket:
//
//	nlmsghdr (16 bytes, host byte order) | nfgenmsg (4) | attributes (TLV, host byte order)
//
// Attributes are walked, never addressed at fixed offsets: the list and every nested list are
// stepped through attribute by attribute (nla_len rounded up to 4), matching the type with
// the flag bits masked, for a bounded number of steps, since classic BPF has no loops. The
// kernel emits event attributes in a fixed order (nf_conntrack_netlink.c,
// ctnetlink_conntrack_event: CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, [CTA_ZONE], CTA_ID,
// CTA_STATUS, ..., CTA_TUPLE_MASTER last but a few), so the searched attribute is within
// the first few steps; the step counts leave room for attributes future kernels may add.
//
// The program drops a message only on proof that it is unwanted: a new entry whose attribute
// list ended without CTA_TUPLE_MASTER, or whose protocol is not TCP; a destroyed entry that
// is not TCP or whose ports are all other than ports. Anything it cannot decide (a list longer
// than the bounded walk, a missing or malformed attribute, a message of another type) is
// kept, and userspace decides (EventFilter.wants). A truncated message (an attribute claiming
// more bytes than the message has) makes the kernel stop the program, which drops it; the
// kernel does not send such messages.
func eventFilterProgram(ports []uint16) ([]bpf.RawInstruction, error) {
	// Kernel values (include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h, netlink.h).
	const (
		nlmsgHdrLen     = 16
		nfgenmsgLen     = 4
		nlaHdrLen       = 4
		nlaTypeMask     = 0x3fff // ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
		subsysCTNetlink = 1      // NFNL_SUBSYS_CTNETLINK
		msgCTNew        = 0      // IPCTNL_MSG_CT_NEW (new entries; updates have no group joined)
		msgCTDelete     = 2      // IPCTNL_MSG_CT_DELETE (destroy events)

		ctaTupleOrig   = 1  // CTA_TUPLE_ORIG
		ctaTupleReply  = 2  // CTA_TUPLE_REPLY
		ctaTupleMaster = 14 // CTA_TUPLE_MASTER
		ctaTupleProto  = 2  // CTA_TUPLE_PROTO (in a tuple)
		ctaProtoNum    = 1  // CTA_PROTO_NUM (in CTA_TUPLE_PROTO)
		ctaProtoSrc    = 2  // CTA_PROTO_SRC_PORT
		ctaProtoDst    = 3  // CTA_PROTO_DST_PORT
		ipprotoTCP     = 6

		// Steps of each bounded walk. A tuple holds CTA_TUPLE_IP, CTA_TUPLE_PROTO and maybe
		// CTA_TUPLE_ZONE; CTA_TUPLE_PROTO holds the number and two ports for TCP. The master
		// comes 7th in a new event of Linux 6.18 (after ORIG, REPLY, ID, STATUS, TIMEOUT,
		// PROTOINFO), or later with a zone, helper, secmark or labels.
		nestSteps   = 4
		masterSteps = 16
	)
	attrs := uint32(nlmsgHdrLen + nfgenmsgLen)

	ports = slices.Clone(ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)

	var p progBuilder
	keep, drop := p.newLabel(), p.newLabel()

	// The nlmsghdr's 16-bit fields are in host byte order; a BPF half-word load reads big
	// endian. Compare with the host value as such a load sees it.
	p.emit(
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.StoreScratch{Src: bpf.RegA, N: mLen},
	)
	p.jumpIf(bpf.JumpLessThan, attrs, keep) // not an event message; userspace decides
	newEv, destroyEv := p.newLabel(), p.newLabel()
	p.emit(bpf.LoadAbsolute{Off: 4, Size: 2}) // nlmsg_type
	p.jumpIf(bpf.JumpEqual, hostU16(subsysCTNetlink<<8|msgCTNew), newEv)
	p.jumpIf(bpf.JumpEqual, hostU16(subsysCTNetlink<<8|msgCTDelete), destroyEv)
	p.jump(keep) // another message type: userspace decides

	// tcpIn emits: the tuple attrType at the top level has protocol TCP, else drop. It
	// leaves M[mList], M[mListEnd] = the tuple's CTA_TUPLE_PROTO list.
	tcpIn := func(attrType uint16) {
		p.walkTop(attrs)
		found := p.newLabel()
		p.find(attrType, nestSteps, found, keep, keep)
		p.place(found)
		p.enter(keep)
		found = p.newLabel()
		p.find(ctaTupleProto, nestSteps, found, keep, keep)
		p.place(found)
		p.enter(keep)
		p.emit(
			bpf.LoadScratch{Dst: bpf.RegA, N: mCur},
			bpf.StoreScratch{Src: bpf.RegA, N: mList},
			bpf.LoadScratch{Dst: bpf.RegA, N: mEnd},
			bpf.StoreScratch{Src: bpf.RegA, N: mListEnd},
		)
		found = p.newLabel()
		p.find(ctaProtoNum, nestSteps, found, keep, keep)
		p.place(found)
		p.emit(bpf.LoadIndirect{Off: nlaHdrLen, Size: 1})
		p.jumpIf(bpf.JumpNotEqual, ipprotoTCP, drop)
	}
	// portIn emits: the port attribute portType of the CTA_TUPLE_PROTO list that tcpIn left
	// is one of ports, then keep. Falls through when it is not.
	portIn := func(portType uint16) {
		p.emit(
			bpf.LoadScratch{Dst: bpf.RegA, N: mList},
			bpf.StoreScratch{Src: bpf.RegA, N: mCur},
			bpf.LoadScratch{Dst: bpf.RegA, N: mListEnd},
			bpf.StoreScratch{Src: bpf.RegA, N: mEnd},
		)
		found := p.newLabel()
		p.find(portType, nestSteps, found, keep, keep)
		p.place(found)
		p.emit(bpf.LoadIndirect{Off: nlaHdrLen, Size: 2}) // network byte order, as loaded
		p.anyEqual(ports, filterKeep)
	}

	// New entry: keep it when it has a master and is TCP.
	p.place(newEv)
	p.walkTop(attrs)
	hasMaster := p.newLabel()
	p.find(ctaTupleMaster, masterSteps, hasMaster, drop, keep)
	p.place(hasMaster)
	tcpIn(ctaTupleOrig)
	p.jump(keep)

	// Destroyed entry: keep it when it is TCP and a port is a control port.
	p.place(destroyEv)
	tcpIn(ctaTupleOrig)
	portIn(ctaProtoDst)
	tcpIn(ctaTupleReply)
	portIn(ctaProtoSrc)
	p.jump(drop)

	p.place(keep)
	p.emit(bpf.RetConstant{Val: filterKeep})
	p.place(drop)
	p.emit(bpf.RetConstant{Val: filterDrop})

	insns, err := p.program()
	if err != nil {
		return nil, err
	}
	if len(insns) > maxFilterInsns {
		return nil, fmt.Errorf("%w: %d ports make %d instructions, the kernel takes %d", errTooManyPorts, len(ports), len(insns), maxFilterInsns)
	}
	raw, err := bpf.Assemble(insns)
	if err != nil {
		return nil, fmt.Errorf("assemble event filter: %w", err)
	}
	return raw, nil
}

// Scratch memory slots of the event filter.
const (
	mCur     = iota // offset of the attribute under examination
	mEnd            // end of the attribute list being walked
	mTmp            // scratch for nla_len
	mLen            // message length
	mList           // a saved list (CTA_TUPLE_PROTO's children): start
	mListEnd        // and end
)

// hostU16 is the value a BPF half-word load (big endian) reads from a 16-bit field written in
// host byte order with value v.
func hostU16(v uint16) uint32 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return uint32(binary.BigEndian.Uint16(b[:]))
}

// progBuilder assembles a classic BPF program with forward labels. A jump to a label is an
// unconditional jump (32-bit offset), so no conditional jump needs more than the 8-bit skip.
type progBuilder struct {
	ins    []bpf.Instruction
	jumps  map[int]int // index of a bpf.Jump → its label
	labels []int       // label → index of the instruction it names, -1 until placed
}

func (p *progBuilder) emit(ins ...bpf.Instruction) { p.ins = append(p.ins, ins...) }

func (p *progBuilder) newLabel() int {
	p.labels = append(p.labels, -1)
	return len(p.labels) - 1
}

func (p *progBuilder) place(l int) { p.labels[l] = len(p.ins) }

func (p *progBuilder) jump(l int) {
	if p.jumps == nil {
		p.jumps = make(map[int]int)
	}
	p.jumps[len(p.ins)] = l
	p.emit(bpf.Jump{})
}

// jumpIf jumps to l when A cond val.
func (p *progBuilder) jumpIf(cond bpf.JumpTest, val uint32, l int) {
	p.emit(bpf.JumpIf{Cond: cond, Val: val, SkipTrue: 0, SkipFalse: 1})
	p.jump(l)
}

// jumpIfX jumps to l when A cond X.
func (p *progBuilder) jumpIfX(cond bpf.JumpTest, l int) {
	p.emit(bpf.JumpIfX{Cond: cond, SkipTrue: 0, SkipFalse: 1})
	p.jump(l)
}

// anyEqual returns verdict when A is one of vals, and falls through otherwise: one
// instruction per value, in runs short enough for the 8-bit conditional skip.
func (p *progBuilder) anyEqual(vals []uint16, verdict uint32) {
	const run = 250
	for len(vals) > 0 {
		n := min(len(vals), run)
		for i, v := range vals[:n] {
			// Equal: skip the rest of the run and the jump over the return.
			p.emit(bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(v), SkipTrue: uint8(n - i)})
		}
		p.emit(bpf.Jump{Skip: 1}, bpf.RetConstant{Val: verdict})
		vals = vals[n:]
	}
}

func (p *progBuilder) program() ([]bpf.Instruction, error) {
	for at, l := range p.jumps {
		to := p.labels[l]
		if to <= at {
			return nil, fmt.Errorf("event filter: label %d at %d is not after the jump at %d", l, to, at)
		}
		p.ins[at] = bpf.Jump{Skip: uint32(to - at - 1)}
	}
	return p.ins, nil
}

// walkTop starts a walk of the message's top-level attributes, which begin at off.
func (p *progBuilder) walkTop(off uint32) {
	p.emit(
		bpf.LoadConstant{Dst: bpf.RegA, Val: off},
		bpf.StoreScratch{Src: bpf.RegA, N: mCur},
		bpf.LoadScratch{Dst: bpf.RegA, N: mLen},
		bpf.StoreScratch{Src: bpf.RegA, N: mEnd},
	)
}

// loadLen emits A = nla_len of the attribute at offset X (host byte order). X is clobbered.
func (p *progBuilder) loadLen() {
	lo, hi := uint32(0), uint32(1)
	if hostU16(1) == 1 { // big endian host
		lo, hi = 1, 0
	}
	p.emit(
		bpf.LoadIndirect{Off: hi, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
		bpf.StoreScratch{Src: bpf.RegA, N: mTmp},
		bpf.LoadIndirect{Off: lo, Size: 1},
		bpf.LoadScratch{Dst: bpf.RegX, N: mTmp},
		bpf.ALUOpX{Op: bpf.ALUOpOr},
	)
}

// find emits a walk of at most steps attributes of the list [M[mCur], M[mEnd]) looking for
// attribute type typ. It goes to found with X = M[mCur] = the attribute's offset; to absent
// when the list ends first; to unsure when the steps run out or an attribute is malformed.
func (p *progBuilder) find(typ uint16, steps int, found, absent, unsure int) {
	for range steps {
		p.emit(
			bpf.LoadScratch{Dst: bpf.RegA, N: mCur},
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 4},
			bpf.LoadScratch{Dst: bpf.RegX, N: mEnd},
		)
		p.jumpIfX(bpf.JumpGreaterThan, absent) // no room left for an attribute header
		p.emit(
			bpf.LoadScratch{Dst: bpf.RegX, N: mCur},
			bpf.LoadIndirect{Off: 2, Size: 2}, // nla_type
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: hostU16(0x3fff)},
		)
		p.jumpIf(bpf.JumpEqual, hostU16(typ), found)
		p.loadLen()
		p.jumpIf(bpf.JumpLessThan, 4, unsure)
		p.emit(
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 3},
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ^uint32(3)},
			bpf.LoadScratch{Dst: bpf.RegX, N: mCur},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.StoreScratch{Src: bpf.RegA, N: mCur},
		)
	}
	p.jump(unsure)
}

// enter makes the nested attribute at X = M[mCur] the list to walk: M[mCur] = its first
// child, M[mEnd] = its end. A malformed length goes to unsure.
func (p *progBuilder) enter(unsure int) {
	p.loadLen()
	p.jumpIf(bpf.JumpLessThan, 4, unsure)
	p.emit(
		bpf.LoadScratch{Dst: bpf.RegX, N: mCur},
		bpf.ALUOpX{Op: bpf.ALUOpAdd},
		bpf.StoreScratch{Src: bpf.RegA, N: mEnd},
		bpf.LoadScratch{Dst: bpf.RegA, N: mCur},
		bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 4},
		bpf.StoreScratch{Src: bpf.RegA, N: mCur},
	)
}
