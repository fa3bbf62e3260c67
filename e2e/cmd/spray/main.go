// Command spray sends spoofed one-packet TCP "sessions" to an FTP control port, as fast as a
// raw socket allows: each packet comes from a random address of one prefix and a random port,
// half of them SYNs and half ACKs carrying a PORT command, as an attacker filling a
// middlebox's session table would send them. The e2e test TestHostileLoad runs it in the
// lab's client namespace (under `ip netns exec`: a socket belongs to the namespace of the
// thread that creates it).
//
//	spray -dst ADDR:PORT -src PREFIX [-exclude IP,IP,...] [-n N] [-seed S]
//
// Packets are built with gopacket (IPv4 or IPv6 header included: IP_HDRINCL, IPV6_HDRINCL)
// and sent to dst through the namespace's routes. Sources are drawn from PREFIX, never one
// of -exclude (the lab's real hosts). The result is one JSON object on stdout.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

// portPayload is the ACKs' payload: a PORT command naming a documentation address (20 bytes).
const portPayload = "PORT 192,0,2,5,4,1\r\n"

type result struct {
	Sent    int     `json:"sent"`
	SYN     int     `json:"syn"`
	ACK     int     `json:"ack"`
	Errors  int     `json:"errors"`    // sends the kernel refused (ENOBUFS and the like)
	Seconds float64 `json:"seconds"`   // time spent sending
	Rate    float64 `json:"rate"`      // packets per second
	Sources string  `json:"src"`       // the prefix the sources came from
	LastErr string  `json:"last_err"`  // the last send error, if any
	Bytes   int     `json:"ip_bytes"`  // IP bytes sent
	Dest    string  `json:"dst"`       // where they went
	First   string  `json:"first_src"` // one source address, for the log
}

func main() {
	dst := flag.String("dst", "", "destination ADDR:PORT (an FTP control port)")
	src := flag.String("src", "", "source prefix (e.g. 2001:db8:1::/64)")
	exclude := flag.String("exclude", "", "comma-separated addresses never used as sources")
	n := flag.Int("n", 150000, "packets to send")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	res, err := run(*dst, *src, *exclude, *n, *seed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "spray:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}

func run(dstArg, srcArg, excludeArg string, n int, seed uint64) (result, error) {
	dst, err := netip.ParseAddrPort(dstArg)
	if err != nil {
		return result{}, fmt.Errorf("-dst: %w", err)
	}
	pfx, err := netip.ParsePrefix(srcArg)
	if err != nil {
		return result{}, fmt.Errorf("-src: %w", err)
	}
	pfx = pfx.Masked()
	if pfx.Addr().Is4() != dst.Addr().Is4() {
		return result{}, errors.New("-src and -dst are of different address families")
	}
	var excl []netip.Addr
	for _, s := range strings.Split(excludeArg, ",") {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return result{}, fmt.Errorf("-exclude: %w", err)
		}
		excl = append(excl, a)
	}
	s, err := newSender(dst.Addr())
	if err != nil {
		return result{}, err
	}
	defer unix.Close(s.fd)

	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	res := result{Sources: pfx.String(), Dest: dst.String()}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	start := time.Now()
	for i := range n {
		a := randomAddr(rng, pfx)
		for slices.Contains(excl, a) || a == pfx.Addr() {
			a = randomAddr(rng, pfx)
		}
		if i == 0 {
			res.First = a.String()
		}
		tcp := &layers.TCP{
			SrcPort: layers.TCPPort(1024 + rng.IntN(64512)),
			DstPort: layers.TCPPort(dst.Port()),
			Seq:     rng.Uint32(),
			Window:  64240,
		}
		var payload gopacket.Payload
		if i%2 == 0 {
			tcp.SYN = true
			res.SYN++
		} else {
			tcp.ACK, tcp.PSH = true, true
			tcp.Ack = rng.Uint32()
			payload = gopacket.Payload(portPayload)
			res.ACK++
		}
		var ip gopacket.SerializableLayer
		if a.Is4() {
			ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Id: uint16(i),
				SrcIP: a.AsSlice(), DstIP: dst.Addr().AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip4)
			ip = ip4
		} else {
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
				SrcIP: a.AsSlice(), DstIP: dst.Addr().AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip6)
			ip = ip6
		}
		if err := gopacket.SerializeLayers(buf, opts, ip, tcp, payload); err != nil {
			return res, fmt.Errorf("build packet: %w", err)
		}
		if err := s.send(buf.Bytes()); err != nil {
			res.Errors++
			res.LastErr = err.Error()
			continue
		}
		res.Sent++
		res.Bytes += len(buf.Bytes())
	}
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.Rate = float64(res.Sent) / res.Seconds
	}
	return res, nil
}

// randomAddr returns a random address of p.
func randomAddr(rng *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	off := 0
	if p.Addr().Is4() {
		off = 12
	}
	bits := p.Bits() + off*8
	for i := bits / 8; i < 16; i++ {
		r := byte(rng.Uint32())
		if i == bits/8 && bits%8 != 0 {
			keep := byte(0xff) << (8 - bits%8)
			b[i] = b[i]&keep | r&^keep
			continue
		}
		b[i] = r
	}
	if p.Addr().Is4() {
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return netip.AddrFrom16(b)
}

// sender is a raw socket that sends whole IP packets (the header included) to one destination.
type sender struct {
	fd int
	sa unix.Sockaddr
}

func newSender(dst netip.Addr) (*sender, error) {
	if dst.Is4() {
		// IPPROTO_RAW implies IP_HDRINCL.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return nil, fmt.Errorf("raw IPv4 socket: %w", err)
		}
		return &sender{fd: fd, sa: &unix.SockaddrInet4{Addr: dst.As4()}}, nil
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return nil, fmt.Errorf("raw IPv6 socket: %w", err)
	}
	// IPPROTO_RAW implies IPV6_HDRINCL on Linux too; say so explicitly.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_HDRINCL, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("IPV6_HDRINCL: %w", err)
	}
	return &sender{fd: fd, sa: &unix.SockaddrInet6{Addr: dst.As16()}}, nil
}

// send sends one packet, retrying briefly while the device queue is full.
func (s *sender) send(pkt []byte) error {
	for try := 0; ; try++ {
		err := unix.Sendto(s.fd, pkt, 0, s.sa)
		if err == nil || try == 100 || !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) {
			return err
		}
		time.Sleep(50 * time.Microsecond)
	}
}
