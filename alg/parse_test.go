package alg

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePORT(t *testing.T) {
	tests := []struct {
		name string
		arg  string
		want string // endpoint, or "" for ErrSyntax
	}{
		{name: "windows ftp.exe", arg: "192,0,2,10,194,149", want: "192.0.2.10:49813"},
		{name: "max", arg: "255,255,255,255,255,255", want: "255.255.255.255:65535"},
		{name: "port 1", arg: "192,0,2,10,0,1", want: "192.0.2.10:1"},
		{name: "three digit zero padded", arg: "192,000,002,010,004,001", want: "192.0.2.10:1025"},
		{name: "port 0", arg: "192,0,2,10,0,0"},
		{name: "octet 256", arg: "192,0,2,256,4,1"},
		{name: "port byte 256", arg: "192,0,2,10,256,1"},
		{name: "four digits", arg: "0192,0,2,10,4,1"},
		{name: "huge", arg: "192,0,2,10,4,99999999999999999999999"},
		{name: "negative", arg: "-1,0,2,10,4,1"},
		{name: "plus", arg: "+1,0,2,10,4,1"},
		{name: "five numbers", arg: "192,0,2,10,4"},
		{name: "seven numbers", arg: "192,0,2,10,4,1,1"},
		{name: "trailing comma", arg: "192,0,2,10,4,1,"},
		{name: "space inside", arg: "192, 0,2,10,4,1"},
		{name: "trailing space", arg: "192,0,2,10,4,1 "},
		{name: "empty field", arg: "192,,2,10,4,1"},
		{name: "nul", arg: "192,0\x00,2,10,4,1"},
		{name: "empty", arg: ""},
		{name: "dotted", arg: "192.0.2.10,4,1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, err := ParsePORT([]byte(tt.arg))
			got := ""
			if err == nil {
				got = ep.String()
			} else if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParsePORT(%q) (-want +got):\n%s", tt.arg, diff)
			}
		})
	}
}

func TestParseEPRT(t *testing.T) {
	tests := []struct {
		name  string
		arg   string
		want  string // endpoint, or "" for ErrSyntax
		delim byte
	}{
		{name: "lftp ipv4", arg: "|1|192.0.2.10|37295|", want: "192.0.2.10:37295", delim: '|'},
		{name: "curl ipv6", arg: "|2|2001:db8:1::10|41001|", want: "[2001:db8:1::10]:41001", delim: '|'},
		{name: "other delimiter", arg: "!1!192.0.2.10!4000!", want: "192.0.2.10:4000", delim: '!'},
		{name: "delimiter 126", arg: "~2~2001:db8::1~4000~", want: "[2001:db8::1]:4000", delim: '~'},
		{name: "port 65535", arg: "|1|192.0.2.10|65535|", want: "192.0.2.10:65535", delim: '|'},
		{name: "ipv4-mapped in family 2", arg: "|2|::ffff:192.0.2.10|4000|"},
		{name: "zone", arg: "|2|fe80::1%eth0|4000|"},
		{name: "family 1 with ipv6", arg: "|1|2001:db8::1|4000|"},
		{name: "family 2 with ipv4", arg: "|2|192.0.2.10|4000|"},
		{name: "family 3", arg: "|3|192.0.2.10|4000|"},
		{name: "port 0", arg: "|1|192.0.2.10|0|"},
		{name: "port 65536", arg: "|1|192.0.2.10|65536|"},
		{name: "port sign", arg: "|1|192.0.2.10|+4000|"},
		{name: "port huge", arg: "|1|192.0.2.10|99999999999999999999|"},
		{name: "unterminated", arg: "|1|192.0.2.10|4000"},
		{name: "extra field", arg: "|1|192.0.2.10|4000|5|"},
		{name: "space delimiter", arg: " 1 192.0.2.10 4000 "},
		{name: "DEL delimiter", arg: "\x7f1\x7f192.0.2.10\x7f4000\x7f"},
		{name: "leading zero octet", arg: "|1|192.0.2.010|4000|"},
		{name: "empty address", arg: "|1||4000|"},
		{name: "empty", arg: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, delim, err := ParseEPRT([]byte(tt.arg))
			got := ""
			if err == nil {
				got = ep.String()
			} else if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseEPRT(%q) (-want +got):\n%s", tt.arg, diff)
			}
			if delim != tt.delim {
				t.Errorf("ParseEPRT(%q) delim %q, want %q", tt.arg, delim, tt.delim)
			}
		})
	}
}

func TestParse227(t *testing.T) {
	tests := []struct {
		name string
		text string // after the code
		want string // endpoint, or "" for ErrSyntax
		span string // text[start:end]
	}{
		{name: "vsftpd", text: " Entering Passive Mode (192,0,2,20,19,137).", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "bare", text: " Entering Passive Mode 192,0,2,20,19,137", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "serv-u equals", text: " =192,0,2,20,19,137", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "lower case", text: " Entering passive mode (192,0,2,20,19,137)", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "lone number first", text: " Mode 2 (192,0,2,20,19,137)", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "trailing comma", text: " 192,0,2,20,19,137,", want: "192.0.2.20:5001", span: "192,0,2,20,19,137"},
		{name: "no numbers", text: " Logout."},
		{name: "empty", text: ""},
		{name: "five", text: " (192,0,2,20,19)"},
		{name: "seven", text: " (192,0,2,20,19,137,1)"},
		{name: "octet 256", text: " (192,0,2,256,19,137)"},
		{name: "port 0", text: " (192,0,2,20,0,0)"},
		{name: "negative", text: " (-192,0,2,20,19,137)"},
		{name: "huge", text: " (192,0,2,20,19,99999999999999999999)"},
		{name: "first run wins", text: " (1,2) then (192,0,2,20,19,137)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep, start, end, err := Parse227([]byte(tt.text))
			got, span := "", ""
			if err == nil {
				got, span = ep.String(), tt.text[start:end]
			} else if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			if diff := cmp.Diff(tt.want+" "+tt.span, got+" "+span); diff != "" {
				t.Errorf("Parse227(%q) (-want +got):\n%s", tt.text, diff)
			}
		})
	}
}

func TestParse229(t *testing.T) {
	tests := []struct {
		name  string
		text  string // after the code
		port  uint16 // 0 for ErrSyntax
		delim byte
		span  string
	}{
		{name: "vsftpd", text: " Entering Extended Passive Mode (|||6446|)", port: 6446, delim: '|', span: "6446"},
		{name: "pure-ftpd", text: " Extended Passive mode OK (|||30001|)", port: 30001, delim: '|', span: "30001"},
		{name: "other delimiter", text: " Entering Extended Passive Mode (!!!6446!)", port: 6446, delim: '!', span: "6446"},
		{name: "dots before", text: " Entering Extended Passive Mode... (|||6446|)", port: 6446, delim: '|', span: "6446"},
		{name: "max", text: " (|||65535|)", port: 65535, delim: '|', span: "65535"},
		{name: "port 0", text: " (|||0|)"},
		{name: "port 65536", text: " (|||65536|)"},
		{name: "six digits", text: " (|||123456|)"},
		{name: "unclosed", text: " (|||6446)"},
		{name: "other closing", text: " (|||6446!)"},
		{name: "two delimiters", text: " (||6446|)"},
		{name: "digit delimiter", text: " (111164461)"},
		{name: "none", text: " Entering Extended Passive Mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port, delim, start, end, err := Parse229([]byte(tt.text))
			span := ""
			if err == nil {
				span = tt.text[start:end]
			} else if !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not ErrSyntax", err)
			}
			type res struct {
				Port  uint16
				Delim byte
				Span  string
			}
			if diff := cmp.Diff(res{tt.port, tt.delim, tt.span}, res{port, delim, span}); diff != "" {
				t.Errorf("Parse229(%q) (-want +got):\n%s", tt.text, diff)
			}
		})
	}
}

func TestAppendEndpoint(t *testing.T) {
	v4 := netip.MustParseAddrPort("198.51.100.20:50000")
	v6 := netip.MustParseAddrPort("[2001:db8::20]:50000")
	tests := []struct {
		name string
		d    Decision
		e    netip.AddrPort
		want string
	}{
		{name: "PORT", d: Decision{Cmd: CmdPORT}, e: v4, want: "198,51,100,20,195,80"},
		{name: "227", d: Decision{Cmd: Cmd227}, e: v4, want: "198,51,100,20,195,80"},
		{name: "227 mapped", d: Decision{Cmd: Cmd227}, e: netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), 50000), want: "198,51,100,20,195,80"},
		{name: "PORT ipv6 refused", d: Decision{Cmd: CmdPORT}, e: v6, want: ""},
		{name: "EPRT v4", d: Decision{Cmd: CmdEPRT, Delim: '|'}, e: v4, want: "|1|198.51.100.20|50000|"},
		{name: "EPRT v6", d: Decision{Cmd: CmdEPRT, Delim: '!'}, e: v6, want: "!2!2001:db8::20!50000!"},
		{name: "229", d: Decision{Cmd: Cmd229, Delim: '|'}, e: v6, want: "50000"},
		{name: "other", d: Decision{Cmd: CmdPASV}, e: v4, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendEndpoint([]byte(nil), &tt.d, tt.e))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestRoundTrip formats endpoints and parses them back, over a range of values including
// the edges of every field.
func TestRoundTrip(t *testing.T) {
	addrs4 := []string{"0.0.0.0", "192.0.2.10", "255.255.255.255", "1.2.3.4"}
	addrs6 := []string{"2001:db8::1", "2001:db8:1:2:3:4:5:6", "::1", "fe80::1"}
	ports := []uint16{1, 255, 256, 1023, 1024, 49813, 65535}
	for _, p := range ports {
		for _, a := range addrs4 {
			ep := netip.AddrPortFrom(netip.MustParseAddr(a), p)
			if got, err := ParsePORT(AppendPORT(nil, ep)); err != nil || got != ep {
				t.Errorf("PORT %v: got %v, %v", ep, got, err)
			}
			if got, _, _, err := Parse227(AppendPORT([]byte(" ("), ep)); err != nil || got != ep {
				t.Errorf("227 %v: got %v, %v", ep, got, err)
			}
			if got, d, err := ParseEPRT(AppendEPRT(nil, ep, '|')); err != nil || got != ep || d != '|' {
				t.Errorf("EPRT %v: got %v %q, %v", ep, got, d, err)
			}
		}
		for _, a := range addrs6 {
			ep := netip.AddrPortFrom(netip.MustParseAddr(a), p)
			if got, d, err := ParseEPRT(AppendEPRT(nil, ep, '#')); err != nil || got != ep || d != '#' {
				t.Errorf("EPRT %v: got %v %q, %v", ep, got, d, err)
			}
		}
		for _, d := range []byte{'|', '!', '~', '('} {
			if got, gd, _, _, err := Parse229(Append229(nil, p, d)); err != nil || got != p || gd != d {
				t.Errorf("229 %d %q: got %d %q, %v", p, d, got, gd, err)
			}
		}
	}
}
