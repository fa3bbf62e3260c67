package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Errors returned by Decode (wrapped with the header they concern; compare with errors.Is).
var (
	ErrTruncated   = errors.New("truncated packet")
	ErrBadHeader   = errors.New("malformed header")
	ErrNotIP       = errors.New("not an ipv4 or ipv6 packet")
	ErrNotTCP      = errors.New("not a tcp packet")
	ErrFragment    = errors.New("ip fragment")
	ErrUnsupported = errors.New("unsupported header")
)

// Decode errors are wrapped once, here, so that Decode reports context without allocating.
var (
	errEmpty        = fmt.Errorf("ip header: %w", ErrTruncated)
	errVersion      = fmt.Errorf("ip version: %w", ErrNotIP)
	errV4Short      = fmt.Errorf("ipv4 header: %w", ErrTruncated)
	errV4IHL        = fmt.Errorf("ipv4 header length: %w", ErrBadHeader)
	errV4Len        = fmt.Errorf("ipv4 total length: %w", ErrBadHeader)
	errV4Frag       = fmt.Errorf("ipv4: %w", ErrFragment)
	errV4Proto      = fmt.Errorf("ipv4 protocol: %w", ErrNotTCP)
	errV6Short      = fmt.Errorf("ipv6 header: %w", ErrTruncated)
	errV6Len        = fmt.Errorf("ipv6 payload length: %w", ErrBadHeader)
	errV6Jumbo      = fmt.Errorf("ipv6 jumbogram: %w", ErrUnsupported)
	errV6ExtShort   = fmt.Errorf("ipv6 extension header: %w", ErrTruncated)
	errV6HopByHop   = fmt.Errorf("ipv6 hop-by-hop header not first: %w", ErrBadHeader)
	errV6Frag       = fmt.Errorf("ipv6: %w", ErrFragment)
	errV6Proto      = fmt.Errorf("ipv6 next header: %w", ErrNotTCP)
	errV6Unknown    = fmt.Errorf("ipv6 next header: %w", ErrUnsupported)
	errTCPShort     = fmt.Errorf("tcp header: %w", ErrTruncated)
	errTCPOffset    = fmt.Errorf("tcp data offset: %w", ErrBadHeader)
	errNotDecoded   = errors.New("packet not decoded")
	errTCPEmptyPort = fmt.Errorf("tcp port 0: %w", ErrBadHeader)
)

// IP protocol numbers met while walking headers.
const (
	protoHopByHop = 0
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoRouting  = 43
	protoFragment = 44
	protoGRE      = 47
	protoESP      = 50
	protoICMPv6   = 58
	protoNoNext   = 59
	protoDestOpts = 60
	protoSCTP     = 132
	protoUDPLite  = 136
)

// TCP header layout (RFC 9293 §3.1), offsets from the start of the TCP header.
const (
	tcpSeqOff   = 4
	tcpAckOff   = 8
	tcpFlagsOff = 13
	tcpCsumOff  = 16
	tcpUrgOff   = 18
	tcpMinLen   = 20

	optEOL         = 0
	optNOP         = 1
	optSACK        = 5
	sackBlockLen   = 8
	maxSACKOptions = 4 // options carrying SACK blocks that are remembered; 40 option bytes fit at most 4 anyway
)

// TCP flag bits.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagPSH = 0x08
	FlagACK = 0x10
	FlagURG = 0x20
)

// Packet is a decoded IPv4 or IPv6 packet carrying TCP. It is a view over the bytes given to
// Decode, which keep belonging to the caller: Packet never copies nor modifies them, and a
// Packet may be reused for the next packet without allocating.
type Packet struct {
	b       []byte // the IP packet, exactly as long as its IP header says
	version uint8
	flags   uint8
	tcpOff  int // offset of the TCP header
	dataOff int // offset of the TCP payload
	src     netip.AddrPort
	dst     netip.AddrPort
	seq     uint32
	ack     uint32
	nsack   int
	sack    [maxSACKOptions]int // offsets (in b) of the first block of each valid SACK option
	sackN   [maxSACKOptions]int // number of blocks in each
}

// Decode parses b as an IPv4 packet (options allowed) or an IPv6 packet (hop-by-hop, routing
// and destination-options extension headers allowed) carrying a TCP segment, and makes p a view
// of it. Bytes after the length the IP header announces are ignored (Bytes omits them). On
// error p is reset and the error wraps one of ErrTruncated, ErrBadHeader, ErrNotIP, ErrNotTCP,
// ErrFragment or ErrUnsupported. Decode never panics and never allocates.
func (p *Packet) Decode(b []byte) error {
	*p = Packet{}
	err := p.decode(b)
	if err != nil {
		*p = Packet{}
	}
	return err
}

func (p *Packet) decode(b []byte) error {
	if len(b) < 1 {
		return errEmpty
	}
	var off int // TCP header offset
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return errV4Short
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:]))
		if ihl < 20 {
			return errV4IHL
		}
		if total < ihl {
			return errV4Len
		}
		if total > len(b) {
			return errV4Short
		}
		// A later fragment has no TCP header; a first fragment has only part of the segment,
		// so it can neither be checksummed nor rewritten.
		if fo := binary.BigEndian.Uint16(b[6:]); fo&0x3fff != 0 {
			return errV4Frag
		}
		if b[9] != protoTCP {
			return errV4Proto
		}
		b = b[:total]
		p.version = 4
		p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), 0)
		off = ihl
	case 6:
		if len(b) < 40 {
			return errV6Short
		}
		plen := int(binary.BigEndian.Uint16(b[4:]))
		if plen == 0 {
			// Either empty or a jumbogram whose length hides in a hop-by-hop option.
			return errV6Jumbo
		}
		if 40+plen > len(b) {
			return errV6Len
		}
		b = b[:40+plen]
		nh := b[6]
		off = 40
	walk:
		for {
			switch nh {
			case protoTCP:
				break walk
			case protoHopByHop, protoRouting, protoDestOpts:
				if nh == protoHopByHop && off != 40 {
					return errV6HopByHop
				}
				if off+8 > len(b) {
					return errV6ExtShort
				}
				n := (int(b[off+1]) + 1) * 8
				if off+n > len(b) {
					return errV6ExtShort
				}
				nh = b[off]
				off += n
			case protoFragment:
				return errV6Frag
			case protoICMP, protoUDP, protoGRE, protoESP, protoICMPv6, protoNoNext, protoSCTP, protoUDPLite:
				return errV6Proto
			default:
				return errV6Unknown
			}
		}
		p.version = 6
		p.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), 0)
	default:
		return errVersion
	}

	t := b[off:]
	if len(t) < tcpMinLen {
		return errTCPShort
	}
	hl := int(t[12]>>4) * 4
	if hl < tcpMinLen || hl > len(t) {
		return errTCPOffset
	}
	sport, dport := binary.BigEndian.Uint16(t), binary.BigEndian.Uint16(t[2:])
	if sport == 0 || dport == 0 {
		return errTCPEmptyPort
	}
	p.b = b
	p.tcpOff = off
	p.dataOff = off + hl
	p.src = netip.AddrPortFrom(p.src.Addr(), sport)
	p.dst = netip.AddrPortFrom(p.dst.Addr(), dport)
	p.seq = binary.BigEndian.Uint32(t[tcpSeqOff:])
	p.ack = binary.BigEndian.Uint32(t[tcpAckOff:])
	p.flags = t[tcpFlagsOff]
	p.parseOptions(t[tcpMinLen:hl], off+tcpMinLen)
	return nil
}

// parseOptions records where the SACK blocks are. Like Linux's tcp_parse_options it stops at
// the end-of-list option or at the first option whose length is impossible, and ignores a SACK
// option whose length is not 2 + 8n (n ≥ 1): such blocks are not acted on by the receiver, so
// they are left as they are.
func (p *Packet) parseOptions(opts []byte, base int) {
	for i := 0; i < len(opts); {
		kind := opts[i]
		switch kind {
		case optEOL:
			return
		case optNOP:
			i++
			continue
		}
		if i+2 > len(opts) {
			return
		}
		n := int(opts[i+1])
		if n < 2 || i+n > len(opts) {
			return
		}
		if kind == optSACK && n >= 2+sackBlockLen && (n-2)%sackBlockLen == 0 && p.nsack < maxSACKOptions {
			p.sack[p.nsack] = base + i + 2
			p.sackN[p.nsack] = (n - 2) / sackBlockLen
			p.nsack++
		}
		i += n
	}
}

// Version returns 4 or 6 (0 if p holds no packet).
func (p *Packet) Version() int { return int(p.version) }

// Src returns the source address and TCP port.
func (p *Packet) Src() netip.AddrPort { return p.src }

// Dst returns the destination address and TCP port (for IPv6, the IPv6 header's destination).
func (p *Packet) Dst() netip.AddrPort { return p.dst }

// Seq returns the TCP sequence number.
func (p *Packet) Seq() uint32 { return p.seq }

// Ack returns the TCP acknowledgment number (meaningful only if ACK is set).
func (p *Packet) Ack() uint32 { return p.ack }

// Flags returns the TCP flags byte (FlagFIN, FlagSYN, ...).
func (p *Packet) Flags() uint8 { return p.flags }

// SYN reports whether the SYN flag is set.
func (p *Packet) SYN() bool { return p.flags&FlagSYN != 0 }

// FIN reports whether the FIN flag is set.
func (p *Packet) FIN() bool { return p.flags&FlagFIN != 0 }

// RST reports whether the RST flag is set.
func (p *Packet) RST() bool { return p.flags&FlagRST != 0 }

// ACK reports whether the ACK flag is set.
func (p *Packet) ACK() bool { return p.flags&FlagACK != 0 }

// PayloadSeq returns the sequence number of the first payload byte: Seq, plus one on a SYN
// (the SYN occupies the first number). Edit.Seq values are in this numbering.
func (p *Packet) PayloadSeq() uint32 {
	if p.SYN() {
		return p.seq + 1
	}
	return p.seq
}

// Payload returns the TCP payload. It is a view into the decoded bytes: do not modify it.
func (p *Packet) Payload() []byte {
	if p.b == nil {
		return nil
	}
	return p.b[p.dataOff:len(p.b):len(p.b)]
}

// Bytes returns the whole IP packet (the decoded bytes, cut to the IP length).
func (p *Packet) Bytes() []byte { return p.b }

// SACKBlocks appends the SACK blocks of p (left and right edges, in option order) to dst.
func (p *Packet) SACKBlocks(dst [][2]uint32) [][2]uint32 {
	for i := 0; i < p.nsack; i++ {
		for j, o := 0, p.sack[i]; j < p.sackN[i]; j, o = j+1, o+sackBlockLen {
			dst = append(dst, [2]uint32{binary.BigEndian.Uint32(p.b[o:]), binary.BigEndian.Uint32(p.b[o+4:])})
		}
	}
	return dst
}
