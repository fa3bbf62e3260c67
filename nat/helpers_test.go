package nat

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// Documentation addresses (RFC 5737, RFC 3849).
var (
	cli4 = netip.MustParseAddrPort("192.0.2.10:40000")
	srv4 = netip.MustParseAddrPort("198.51.100.1:21")
	cli6 = netip.MustParseAddrPort("[2001:db8::10]:40000")
	srv6 = netip.MustParseAddrPort("[2001:db8:1::1]:21")
)

// spec describes a packet that build serializes with gopacket, the independent implementation.
type spec struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    uint8
	tsval    uint32 // a timestamps option when non-zero
	sack     [][2]uint32
	payload  []byte
	ipOpts   bool   // IPv4: a router-alert option
	hbh      bool   // IPv6: a hop-by-hop header
	routing  bool   // IPv6: a routing header (segments left 0)
	destOpts bool   // IPv6: a destination-options header
	urg      uint16 // the urgent pointer (URG is set when non-zero)
}

func (s spec) with(f func(*spec)) spec { f(&s); return s }

// build serializes s with gopacket (FixLengths, ComputeChecksums).
func build(tb testing.TB, s spec) []byte {
	tb.Helper()
	b, err := buildErr(s)
	if err != nil {
		tb.Fatalf("build %+v: %v", s, err)
	}
	return b
}

func buildErr(s spec) ([]byte, error) {
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.src.Port()),
		DstPort: layers.TCPPort(s.dst.Port()),
		Seq:     s.seq,
		Ack:     s.ack,
		FIN:     s.flags&FlagFIN != 0,
		SYN:     s.flags&FlagSYN != 0,
		RST:     s.flags&FlagRST != 0,
		PSH:     s.flags&FlagPSH != 0,
		ACK:     s.flags&FlagACK != 0,
		URG:     s.urg != 0,
		Urgent:  s.urg,
		Window:  502,
	}
	if s.tsval != 0 {
		d := make([]byte, 8)
		binary.BigEndian.PutUint32(d, s.tsval)
		binary.BigEndian.PutUint32(d[4:], s.tsval^0x5a5a)
		tcp.Options = append(tcp.Options,
			layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
			layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
			layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: d})
	}
	if len(s.sack) > 0 {
		d := make([]byte, 0, 8*len(s.sack))
		for _, blk := range s.sack {
			d = binary.BigEndian.AppendUint32(d, blk[0])
			d = binary.BigEndian.AppendUint32(d, blk[1])
		}
		tcp.Options = append(tcp.Options,
			layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
			layers.TCPOption{OptionType: layers.TCPOptionKindNop, OptionLength: 1},
			layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionLength: uint8(2 + len(d)), OptionData: d})
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	buf := gopacket.NewSerializeBuffer()
	var ls []gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		ip := &layers.IPv4{
			Version: 4, TTL: 64, Id: 0x1234, Flags: layers.IPv4DontFragment,
			Protocol: layers.IPProtocolTCP,
			SrcIP:    net.IP(s.src.Addr().AsSlice()), DstIP: net.IP(s.dst.Addr().AsSlice()),
		}
		if s.ipOpts {
			ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
		}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, err
		}
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.IP(s.src.Addr().AsSlice()), DstIP: net.IP(s.dst.Addr().AsSlice()),
		}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, err
		}
		// Extension headers are serialized as raw layers after the IPv6 header, chained by hand.
		var ext []byte
		chain := []struct {
			on   bool
			kind byte
		}{{s.hbh, protoHopByHop}, {s.routing, protoRouting}, {s.destOpts, protoDestOpts}}
		var kinds []byte
		for _, c := range chain {
			if c.on {
				kinds = append(kinds, c.kind)
			}
		}
		for i, k := range kinds {
			next := byte(protoTCP)
			if i+1 < len(kinds) {
				next = kinds[i+1]
			}
			switch k {
			case protoRouting:
				// type 2 style header, 24 bytes (hdr ext len 2), segments left 0.
				h := make([]byte, 24)
				h[0], h[1], h[2], h[3] = next, 2, 2, 0
				ext = append(ext, h...)
			default:
				// 8 bytes: next, len 0, PadN option of 4 bytes.
				ext = append(ext, next, 0, 1, 4, 0, 0, 0, 0)
			}
		}
		if len(kinds) > 0 {
			ip.NextHeader = layers.IPProtocol(kinds[0])
		}
		ls = append(ls, ip)
		if len(ext) > 0 {
			ls = append(ls, gopacket.Payload(ext))
		}
	}
	ls = append(ls, tcp, gopacket.Payload(s.payload))
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		return nil, err
	}
	return append([]byte(nil), buf.Bytes()...), nil
}

// oracle decodes b with gopacket and checks, independently of this package, that lengths are
// consistent and the IPv4 header and TCP checksums verify. It returns the decoded TCP layer.
func oracle(b []byte) (*layers.TCP, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("empty packet")
	}
	first := layers.LayerTypeIPv4
	if b[0]>>4 == 6 {
		first = layers.LayerTypeIPv6
	}
	pkt := gopacket.NewPacket(b, first, gopacket.DecodeOptions{NoCopy: true})
	if el := pkt.ErrorLayer(); el != nil {
		return nil, fmt.Errorf("gopacket decode: %v", el.Error())
	}
	nl := pkt.NetworkLayer()
	switch ip := nl.(type) {
	case *layers.IPv4:
		if int(ip.Length) != len(b) {
			return nil, fmt.Errorf("ipv4 total length %d, packet %d bytes", ip.Length, len(b))
		}
		if c := gopacket.FoldChecksum(gopacket.ComputeChecksum(ip.Contents, 0)); c != 0 {
			return nil, fmt.Errorf("ipv4 header checksum invalid (residue %#04x)", c)
		}
	case *layers.IPv6:
		if int(ip.Length)+40 != len(b) {
			return nil, fmt.Errorf("ipv6 payload length %d, packet %d bytes", ip.Length, len(b))
		}
	default:
		return nil, fmt.Errorf("no network layer")
	}
	tl, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if !ok {
		return nil, fmt.Errorf("no tcp layer")
	}
	if err := tl.SetNetworkLayerForChecksum(nl); err != nil {
		return nil, err
	}
	err, res := tl.VerifyChecksum()
	if err != nil {
		return nil, err
	}
	if !res.Valid {
		return nil, fmt.Errorf("tcp checksum %#04x, want %#04x", res.Actual, res.Correct)
	}
	return tl, nil
}

func mustDecode(tb testing.TB, b []byte) *Packet {
	tb.Helper()
	p := new(Packet)
	if err := p.Decode(b); err != nil {
		tb.Fatalf("decode: %v", err)
	}
	return p
}
