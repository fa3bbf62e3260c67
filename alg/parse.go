package alg

import (
	"bytes"
	"errors"
	"net/netip"
	"strconv"
)

// ErrSyntax is returned (possibly wrapped) by the parsers for any malformed argument: bad
// digits, a number out of range, port 0, wrong field count, a zone, an IPv4-mapped address in
// EPRT family 2, or an address that does not match the EPRT family.
var ErrSyntax = errors.New("ftp: bad syntax")

const maxOctetDigits = 3 // "255"; "0255" is refused (bounded digit count)
const maxPortDigits = 5  // "65535"

// parseNum parses 1..maxDigits decimal digits at b[i:] and returns the value and the index
// after the last digit. More digits than maxDigits is an error, so huge numbers never overflow.
func parseNum(b []byte, i, maxDigits int) (v, j int, ok bool) {
	j = i
	for j < len(b) && isDigit(b[j]) {
		if j-i == maxDigits {
			return 0, j, false
		}
		v = v*10 + int(b[j]-'0')
		j++
	}
	return v, j, j > i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseSix parses exactly "n,n,n,n,n,n" at b[i:] (each 0-255, 1-3 digits) and returns the
// endpoint and the index after the sixth number. Port 0 is an error.
func parseSix(b []byte, i int) (netip.AddrPort, int, error) {
	var n [6]byte
	for k := range 6 {
		if k > 0 {
			if i >= len(b) || b[i] != ',' {
				return netip.AddrPort{}, i, ErrSyntax
			}
			i++
		}
		v, j, ok := parseNum(b, i, maxOctetDigits)
		if !ok || v > 255 {
			return netip.AddrPort{}, j, ErrSyntax
		}
		n[k] = byte(v)
		i = j
	}
	port := uint16(n[4])<<8 | uint16(n[5])
	if port == 0 {
		return netip.AddrPort{}, i, ErrSyntax
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), port), i, nil
}

// ParsePORT parses the argument of a PORT command, exactly "h1,h2,h3,h4,p1,p2": six decimal
// numbers 0-255 of at most three digits, no sign, no spaces, port 1-65535.
func ParsePORT(arg []byte) (netip.AddrPort, error) {
	ep, i, err := parseSix(arg, 0)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if i != len(arg) {
		return netip.AddrPort{}, ErrSyntax
	}
	return ep, nil
}

// ParseEPRT parses the argument of an EPRT command (RFC 2428), "<d><af><d><addr><d><port><d>"
// with any delimiter d in 33-126, af 1 (IPv4) or 2 (IPv6), the address in the syntax of netip,
// without zone, not IPv4-mapped for af 2, and port 1-65535. It returns the delimiter.
func ParseEPRT(arg []byte) (ep netip.AddrPort, delim byte, err error) {
	if len(arg) < 2 || arg[0] < 33 || arg[0] > 126 {
		return netip.AddrPort{}, 0, ErrSyntax
	}
	delim = arg[0]
	var fields [3][]byte
	rest := arg[1:]
	for k := range fields {
		i := bytes.IndexByte(rest, delim)
		if i < 0 {
			return netip.AddrPort{}, 0, ErrSyntax
		}
		fields[k], rest = rest[:i], rest[i+1:]
	}
	if len(rest) != 0 {
		return netip.AddrPort{}, 0, ErrSyntax
	}
	af, addr, port := fields[0], fields[1], fields[2]
	if len(af) != 1 || (af[0] != '1' && af[0] != '2') {
		return netip.AddrPort{}, 0, ErrSyntax
	}
	p, j, ok := parseNum(port, 0, maxPortDigits)
	if !ok || j != len(port) || p == 0 || p > 65535 {
		return netip.AddrPort{}, 0, ErrSyntax
	}
	if len(addr) == 0 || len(addr) > 45 { // longest IPv6 text without zone
		return netip.AddrPort{}, 0, ErrSyntax
	}
	for _, c := range addr {
		if c == '%' { // zones have no meaning on the wire
			return netip.AddrPort{}, 0, ErrSyntax
		}
	}
	a, perr := netip.ParseAddr(string(addr))
	if perr != nil {
		return netip.AddrPort{}, 0, ErrSyntax
	}
	switch af[0] {
	case '1':
		if !a.Is4() {
			return netip.AddrPort{}, 0, ErrSyntax
		}
	case '2':
		if !a.Is6() || a.Is4In6() {
			return netip.AddrPort{}, 0, ErrSyntax
		}
	}
	return netip.AddrPortFrom(a, uint16(p)), delim, nil
}

// Parse227 finds the endpoint in the text of a 227 reply. text is the reply line AFTER the
// three-digit code (for example " Entering Passive Mode (192,0,2,20,19,137)."). The endpoint
// is the first run of comma-separated numbers ("digits,digits..."); it must be exactly six
// numbers 0-255 of at most three digits, with no sign in front, and a port 1-65535.
// start and end are the offsets in text of the six numbers ("h1,...,p2").
func Parse227(text []byte) (ep netip.AddrPort, start, end int, err error) {
	for i := 0; i < len(text); i++ {
		if !isDigit(text[i]) || (i > 0 && isDigit(text[i-1])) {
			continue
		}
		j := i
		for j < len(text) && isDigit(text[j]) {
			j++
		}
		if j+1 >= len(text) || text[j] != ',' || !isDigit(text[j+1]) {
			i = j // a lone number ("Mode 2 (..."): keep looking
			continue
		}
		// The first run of comma-separated numbers: it is the endpoint or nothing.
		if i > 0 && (text[i-1] == '-' || text[i-1] == '+' || text[i-1] == ',') {
			return netip.AddrPort{}, 0, 0, ErrSyntax
		}
		ep, k, err := parseSix(text, i)
		if err != nil {
			return netip.AddrPort{}, 0, 0, err
		}
		if k+1 < len(text) && text[k] == ',' && isDigit(text[k+1]) {
			return netip.AddrPort{}, 0, 0, ErrSyntax // a seventh number
		}
		return ep, i, k, nil
	}
	return netip.AddrPort{}, 0, 0, ErrSyntax
}

// Parse229 finds the port in the text of a 229 reply. text is the reply line AFTER the
// three-digit code (for example " Entering Extended Passive Mode (|||6446|)"). It looks for
// the first "<d><d><d><port><d>" where d is a non-digit character in 33-126 and port is 1-5
// digits; triples not followed by a digit are skipped ("Mode..."). start and end are the
// offsets of the port digits in text.
func Parse229(text []byte) (port uint16, delim byte, start, end int, err error) {
	for i := 0; i+3 < len(text); i++ {
		d := text[i]
		if d < 33 || d > 126 || isDigit(d) || text[i+1] != d || text[i+2] != d || !isDigit(text[i+3]) {
			continue
		}
		p, j, ok := parseNum(text, i+3, maxPortDigits)
		if !ok || j >= len(text) || text[j] != d || p == 0 || p > 65535 {
			return 0, 0, 0, 0, ErrSyntax
		}
		return uint16(p), d, i + 3, j, nil
	}
	return 0, 0, 0, 0, ErrSyntax
}

// AppendPORT appends "h1,h2,h3,h4,p1,p2" for ep (the argument of PORT and the numbers of a
// 227 reply). ep's address must be IPv4 (or IPv4-mapped); otherwise dst is returned unchanged.
func AppendPORT(dst []byte, ep netip.AddrPort) []byte {
	a := ep.Addr().Unmap()
	if !a.Is4() {
		return dst
	}
	b := a.As4()
	for _, o := range b {
		dst = strconv.AppendUint(dst, uint64(o), 10)
		dst = append(dst, ',')
	}
	dst = strconv.AppendUint(dst, uint64(ep.Port()>>8), 10)
	dst = append(dst, ',')
	return strconv.AppendUint(dst, uint64(ep.Port()&0xff), 10)
}

// AppendEPRT appends "<d>1<d>a.b.c.d<d>port<d>" (family 2 and IPv6 text for an IPv6 address)
// for ep with delimiter delim: the argument of EPRT, from the first delimiter to the last.
// An IPv4-mapped address is written as IPv4 (EPRT family 2 refuses it).
func AppendEPRT(dst []byte, ep netip.AddrPort, delim byte) []byte {
	a := ep.Addr().Unmap().WithZone("")
	af := byte('1')
	if a.Is6() {
		af = '2'
	}
	dst = append(dst, delim, af, delim)
	dst = a.AppendTo(dst)
	dst = append(dst, delim)
	dst = strconv.AppendUint(dst, uint64(ep.Port()), 10)
	return append(dst, delim)
}

// Append229 appends "<d><d><d>port<d>", the form Parse229 finds in a 229 reply.
func Append229(dst []byte, port uint16, delim byte) []byte {
	dst = append(dst, delim, delim, delim)
	dst = strconv.AppendUint(dst, uint64(port), 10)
	return append(dst, delim)
}

// AppendEndpoint formats e in the syntax of d.Cmd and appends it to dst: the replacement for
// d.Text. PORT and 227: "h1,h2,h3,h4,p1,p2" (e must be IPv4); EPRT: "<d>1<d>a.b.c.d<d>port<d>"
// or family 2 for IPv6, with d.Delim; 229: the port digits only (the address of a 229 is
// implicit). For any other Cmd dst is returned unchanged.
func AppendEndpoint(dst []byte, d *Decision, e netip.AddrPort) []byte {
	switch d.Cmd {
	case CmdPORT, Cmd227:
		return AppendPORT(dst, e)
	case CmdEPRT:
		return AppendEPRT(dst, e, d.Delim)
	case Cmd229:
		return strconv.AppendUint(dst, uint64(e.Port()), 10)
	}
	return dst
}
