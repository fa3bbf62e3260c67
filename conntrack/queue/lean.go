package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The lean reader: one blocking netlink socket, read with one read(2) per datagram into a
// buffer the reader owns, on a locked OS thread, attributes parsed in place; verdicts written
// with one write(2) from a reused buffer. BENCHMARKS.md has the numbers against go-nfqueue's
// loop (a MSG_PEEK receive to size the buffer and a second receive, each parking the
// goroutine in the netpoller; five to six allocations per packet and per verdict).
//
// go-nfqueue cannot be kept for the binding alone: RegisterWithErrorFunc binds and starts its
// own receive loop on the same socket in one call, and that loop unbinds the queue when it
// ends. So the lean reader binds the queue itself, with one configuration request (command,
// copy mode, queue length and flags in one message, which the kernel applies in that order),
// built with mdlayher/netlink's message types. The per-packet path parses by hand: netlink's
// AttributeDecoder allocates per message.

// nfnetlink_queue message and attribute types (include/uapi/linux/netfilter/nfnetlink_queue.h).
const (
	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaPacketHdr   = 1
	nfqaVerdictHdr  = 2
	nfqaIfindexIn   = 5
	nfqaIfindexOut  = 6
	nfqaPayload     = 10
	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgQueueMax = 3
	nfqaCfgMask     = 4
	nfqaCfgFlags    = 5

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2
	nfqnlCopyPacket   = 2

	nfgenLen    = 4 // struct nfgenmsg
	nlaTypeMask = 0x3fff

	verdictAccept = 1 // NF_ACCEPT
	verdictDrop   = 0 // NF_DROP

	msgQueuePacket = unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgPacket
	msgVerdict     = unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgVerdict
	msgConfig      = unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgConfig

	// msgWake is the type of the message Close and a cancelled context send to the reader's
	// own socket to end its blocking read. It is below NLMSG_MIN_TYPE: no subsystem uses it.
	msgWake = 0x0f

	// readBufLen fits the largest queued packet (copy range 0xffff) with its attributes.
	readBufLen = maxPacketLen + 4096
	// verdictHdrLen: nlmsghdr, nfgenmsg, NFQA_VERDICT_HDR.
	verdictHdrLen = unix.NLMSG_HDRLEN + nfgenLen + unix.SizeofNlAttr + 8
	// idleWake bounds how long a read waits for nothing: a safety net should a wake-up
	// message be lost (the socket buffer full).
	idleWake = time.Second
)

// leanSock is the lean reader's socket.
type leanSock struct {
	num    uint16
	portid uint32

	fdMu sync.RWMutex // read-held by every use of fd, write-held to close it
	fd   int          // -1 once closed

	sendMu sync.Mutex
	sbuf   []byte // the verdict being written

	rbuf    []byte   // the reader's receive buffer
	pending [][]byte // packets read while waiting for the bind's acknowledgement
	stop    atomic.Bool
	seq     uint32
}

func openLean(cfg Config) (*leanSock, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	s := &leanSock{num: cfg.Num, fd: fd, sbuf: make([]byte, 0, verdictHdrLen+unix.SizeofNlAttr+maxPacketLen+4)}
	fail := func(op string, err error) (*leanSock, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return fail("getsockname", fmt.Errorf("unexpected address %T", sa))
	}
	s.portid = nl.Pid
	// Without NoENOBUFS an overrun receive buffer makes every later receive fail with
	// ENOBUFS; with it the kernel drops (or, with FailOpen, accepts) and goes on.
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1); err != nil {
		return fail("set NETLINK_NO_ENOBUFS", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.ReadBuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.ReadBuf); err != nil {
			return fail(fmt.Sprintf("set receive buffer %d", cfg.ReadBuf), err)
		}
	}
	tv := unix.NsecToTimeval(idleWake.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("set SO_RCVTIMEO", err)
	}
	return s, nil
}

// withFD runs f with the socket's descriptor, or returns ErrClosed.
func (s *leanSock) withFD(f func(fd int) error) error {
	s.fdMu.RLock()
	defer s.fdMu.RUnlock()
	if s.fd < 0 {
		return ErrClosed
	}
	return f(s.fd)
}

func (s *leanSock) close() error {
	s.fdMu.Lock()
	defer s.fdMu.Unlock()
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

func (s *leanSock) readBuffer() (int, error) {
	var n int
	err := s.withFD(func(fd int) (err error) {
		n, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		return err
	})
	return n, err
}

// config sends one configuration request for the queue and waits for its acknowledgement.
// Packets read meanwhile (a stale table already queues) are kept for the loop.
func (s *leanSock) config(attrs []netlink.Attribute) error {
	ad, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	s.seq++
	seq := s.seq
	req := netlink.Message{
		Header: netlink.Header{
			Type:     netlink.HeaderType(msgConfig),
			Flags:    netlink.Request | netlink.Acknowledge,
			Sequence: seq,
		},
		Data: append(binary.BigEndian.AppendUint16([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0}, s.num), ad...),
	}
	req.Header.Length = uint32(unix.NLMSG_HDRLEN + len(req.Data)) // netlink.Conn would set it
	b, err := req.MarshalBinary()
	if err != nil {
		return err
	}
	if err := s.withFD(func(fd int) error { _, err := unix.Write(fd, b); return err }); err != nil {
		return err
	}
	if s.rbuf == nil {
		s.rbuf = make([]byte, readBufLen)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := s.withFD(func(fd int) (err error) { n, err = unix.Read(fd, s.rbuf); return err })
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return err
		}
		acked, aerr := false, error(nil)
		walkMessages(s.rbuf[:n], func(typ uint16, mseq uint32, body []byte) {
			switch {
			case typ == unix.NLMSG_ERROR && mseq == seq && len(body) >= 4:
				acked = true
				if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
					aerr = unix.Errno(-e)
				}
			case typ == msgQueuePacket:
				s.pending = append(s.pending, append([]byte(nil), body...))
			}
		})
		if acked {
			return aerr
		}
	}
	return errors.New("no acknowledgement from the kernel")
}

func (s *leanSock) bind(cfg Config) error {
	flags := make([]byte, 4)
	if cfg.FailOpen {
		binary.BigEndian.PutUint32(flags, nfqaCfgFlagFailOpen)
	}
	params := binary.BigEndian.AppendUint32(nil, maxPacketLen)
	return s.config([]netlink.Attribute{
		{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdBind, 0, 0, unix.AF_UNSPEC}},
		{Type: nfqaCfgParams, Data: append(params, nfqnlCopyPacket)},
		{Type: nfqaCfgQueueMax, Data: binary.BigEndian.AppendUint32(nil, cfg.MaxLen)},
		{Type: nfqaCfgFlags, Data: flags},
		{Type: nfqaCfgMask, Data: []byte{0, 0, 0, nfqaCfgFlagFailOpen}},
	})
}

func (s *leanSock) unbind() error {
	return s.config([]netlink.Attribute{
		{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdUnbind, 0, 0, unix.AF_UNSPEC}},
	})
}

// nfqaCfgFlagFailOpen is NFQA_CFG_F_FAIL_OPEN.
const nfqaCfgFlagFailOpen = 1

// wake ends a blocking read of the reader: a message to the socket's own port id (allowed
// with CAP_NET_ADMIN, which binding a queue needs anyway). It does not wait: with a full
// receive buffer the reader has messages to read anyway, and idleWake bounds the rest.
func (s *leanSock) wake() {
	var b [unix.NLMSG_HDRLEN]byte
	binary.NativeEndian.PutUint32(b[0:], unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint16(b[4:], msgWake)
	s.withFD(func(fd int) error {
		return unix.Sendto(fd, b[:], unix.MSG_DONTWAIT, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: s.portid})
	})
}

// loop reads and dispatches until stop is set. It runs on a locked OS thread. fn gets each packet; onErr each receive error and each verdict the
// kernel refused.
func (s *leanSock) loop(cfg Config, fn func(Packet), onErr func(error)) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, b := range s.pending {
		if p, ok := parsePacket(b); ok {
			fn(p)
		}
	}
	s.pending = nil
	buf := s.rbuf
	for !s.stop.Load() {
		n, err := s.read(buf)
		if err != nil {
			switch {
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.EAGAIN):
			case errors.Is(err, ErrClosed), errors.Is(err, unix.EBADF):
				return ErrClosed
			default:
				onErr(fmt.Errorf("receive: %w", err))
			}
			continue
		}
		walkMessages(buf[:n], func(typ uint16, _ uint32, body []byte) {
			switch typ {
			case msgQueuePacket:
				if s.stop.Load() {
					return
				}
				if p, ok := parsePacket(body); ok {
					fn(p)
				}
			case unix.NLMSG_ERROR:
				// Verdicts are sent without NLM_F_ACK: an error message is a refusal.
				if len(body) >= 4 {
					if e := int32(binary.NativeEndian.Uint32(body)); e != 0 {
						onErr(fmt.Errorf("verdict refused: %w", unix.Errno(-e)))
					}
				}
			}
		})
	}
	return nil
}

// read is one blocking read(2) (unix.Read: the runtime knows the thread is in a system
// call, so a garbage collection never waits for a packet). It holds fdMu for reading, so that
// close waits for it to return (woken by wake, at the latest after idleWake).
func (s *leanSock) read(buf []byte) (int, error) {
	var n int
	err := s.withFD(func(fd int) (err error) { n, err = unix.Read(fd, buf); return err })
	return n, err
}

// walkMessages calls f for every netlink message in b with its type, sequence number and
// body (after the netlink header; for a queue message the body starts with nfgenmsg).
func walkMessages(b []byte, f func(typ uint16, seq uint32, body []byte)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return
		}
		f(binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint32(b[8:]), b[unix.NLMSG_HDRLEN:l])
		l = nlAlign(l)
		if l > len(b) {
			return
		}
		b = b[l:]
	}
}

func nlAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

// parsePacket reads a NFQNL_MSG_PACKET body (nfgenmsg, then attributes) without allocating;
// Payload aliases b. ok is false without a packet header (nothing to give a verdict to).
func parsePacket(b []byte) (p Packet, ok bool) {
	if len(b) < nfgenLen {
		return p, false
	}
	b = b[nfgenLen:]
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofNlAttr || l > len(b) {
			break
		}
		v := b[unix.SizeofNlAttr:l:l]
		switch binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask {
		case nfqaPacketHdr:
			if len(v) >= 6 { // packet_id be32, hw_protocol be16, hook u8
				p.ID = binary.BigEndian.Uint32(v)
				p.HWProto = binary.BigEndian.Uint16(v[4:])
				ok = true
			}
		case nfqaIfindexIn:
			if len(v) >= 4 {
				p.InDev = binary.BigEndian.Uint32(v)
			}
		case nfqaIfindexOut:
			if len(v) >= 4 {
				p.OutDev = binary.BigEndian.Uint32(v)
			}
		case nfqaPayload:
			p.Payload = v
		}
		l = nlAlign(l)
		if l > len(b) {
			break
		}
		b = b[l:]
	}
	return p, ok
}

// verdict writes one verdict message; altered, when not nil, replaces the packet.
func (s *leanSock) verdict(id uint32, v uint32, altered []byte) error {
	if len(altered) > maxPacketLen {
		return fmt.Errorf("altered packet of %d bytes", len(altered))
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	b := appendVerdict(s.sbuf[:0], s.num, id, v, altered)
	s.sbuf = b[:0]
	return s.withFD(func(fd int) error {
		_, err := unix.Write(fd, b)
		return err
	})
}

// appendVerdict appends a NFQNL_MSG_VERDICT for packet id of queue num to b.
func appendVerdict(b []byte, num uint16, id, v uint32, altered []byte) []byte {
	total := verdictHdrLen
	if altered != nil {
		total += nlAlign(unix.SizeofNlAttr + len(altered))
	}
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, uint32(total))
	b = binary.NativeEndian.AppendUint16(b, msgVerdict)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST)
	b = binary.NativeEndian.AppendUint32(b, 0) // seq
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel's
	b = append(b, unix.AF_UNSPEC, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, num)
	b = binary.NativeEndian.AppendUint16(b, unix.SizeofNlAttr+8)
	b = binary.NativeEndian.AppendUint16(b, nfqaVerdictHdr)
	b = binary.BigEndian.AppendUint32(b, v)
	b = binary.BigEndian.AppendUint32(b, id)
	if altered != nil {
		b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+len(altered)))
		b = binary.NativeEndian.AppendUint16(b, nfqaPayload)
		b = append(b, altered...)
		for len(b)-start < total {
			b = append(b, 0)
		}
	}
	return b
}
