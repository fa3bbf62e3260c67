package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Unit tests: no kernel. Messages are built here attribute by attribute, as the kernel
// lays them out (ctnetlink_exp_fill_info, ctnetlink_fill_info), and decoded by the package.

var (
	cli4  = netip.MustParseAddrPort("192.0.2.10:40000")
	srv4  = netip.MustParseAddrPort("198.51.100.20:21")
	nat4  = netip.MustParseAddrPort("198.51.100.1:40000")
	cli6  = netip.MustParseAddrPort("[2001:db8::10]:40000")
	srv6  = netip.MustParseAddrPort("[2001:db8:1::20]:21")
	data4 = netip.MustParseAddrPort("198.51.100.1:50000")
)

func u32(typ uint16, v uint32) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: netfilter.Uint32Bytes(v)}
}

func str(typ uint16, s string) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: append([]byte(s), 0)}
}

func msg(t *testing.T, sub netfilter.SubsystemID, typ netfilter.MessageType, flags netlink.HeaderFlags, pf netfilter.ProtoFamily, attrs ...netfilter.Attribute) netlink.Message {
	t.Helper()
	m, err := netfilter.MarshalNetlink(netfilter.Header{SubsystemID: sub, MessageType: typ, Family: pf, Flags: flags}, attrs)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// expMsg builds an expectation event: master orig tuple, tuple, mask, helper, optional NAT.
func expMsg(t *testing.T, typ netfilter.MessageType, master Tuple, src netip.Addr, dst netip.AddrPort, helper string, nat *netfilter.Attribute) netlink.Message {
	t.Helper()
	mask := expectMask(src.Is4())
	attrs := []netfilter.Attribute{
		tupleAttr(1 /* CTA_EXPECT_MASTER */, master.Src, master.Dst),
		tupleAttr(ctaExpectTuple, netip.AddrPortFrom(src, 0), dst),
		tupleAttr(3 /* CTA_EXPECT_MASK */, netip.AddrPortFrom(mask.IP.SourceAddress, 0), netip.AddrPortFrom(mask.IP.DestinationAddress, 0xffff)),
		u32(4 /* CTA_EXPECT_TIMEOUT */, 299),
		u32(ctaExpectID, 7),
		str(6 /* CTA_EXPECT_HELP_NAME */, helper),
	}
	if nat != nil {
		attrs = append(attrs, *nat)
	}
	return msg(t, netfilter.NFSubsysCTNetlinkExp, typ, 0, family(src), attrs...)
}

func natAttr(dir uint32, to netip.AddrPort) *netfilter.Attribute {
	zero := netip.IPv4Unspecified()
	if to.Addr().Is6() {
		zero = netip.IPv6Unspecified()
	}
	a := netfilter.Attribute{Type: 10 /* CTA_EXPECT_NAT */, Nested: true, Children: []netfilter.Attribute{
		u32(1 /* CTA_EXPECT_NAT_DIR */, dir),
		tupleAttr(2 /* CTA_EXPECT_NAT_TUPLE */, to, netip.AddrPortFrom(zero, 0)),
	}}
	return &a
}

// flowMsg builds a conntrack event with orig and reply tuples, an ID, optional helper and master.
func flowMsg(t *testing.T, typ netfilter.MessageType, flags netlink.HeaderFlags, orig, reply Tuple, helper string, master *Tuple) netlink.Message {
	t.Helper()
	attrs := []netfilter.Attribute{
		tupleAttr(1 /* CTA_TUPLE_ORIG */, orig.Src, orig.Dst),
		tupleAttr(2 /* CTA_TUPLE_REPLY */, reply.Src, reply.Dst),
		u32(12 /* CTA_ID */, 42),
	}
	if helper != "" {
		attrs = append(attrs, netfilter.Attribute{Type: 5 /* CTA_HELP */, Nested: true, Children: []netfilter.Attribute{str(1, helper)}})
	}
	if master != nil {
		attrs = append(attrs, tupleAttr(14 /* CTA_TUPLE_MASTER */, master.Src, master.Dst))
	}
	return msg(t, netfilter.NFSubsysCTNetlink, typ, flags, family(orig.Src.Addr()), attrs...)
}

func TestDecodeEvent(t *testing.T) {
	master4 := Tuple{Src: cli4, Dst: srv4}
	master6 := Tuple{Src: cli6, Dst: srv6}
	dataOrig := Tuple{Src: netip.AddrPortFrom(srv4.Addr(), 20), Dst: data4}
	dataReply := Tuple{Src: cli4, Dst: netip.AddrPortFrom(srv4.Addr(), 20)}
	newFlags := netlink.HeaderFlags(netlink.Create | netlink.Excl)
	for _, tc := range []struct {
		name   string
		m      func(t *testing.T) netlink.Message
		want   Event
		wantOK bool
	}{
		{
			name: "expect new ipv4 nat",
			m: func(t *testing.T) netlink.Message {
				return expMsg(t, 0, master4, srv4.Addr(), data4, "sane", natAttr(1, netip.AddrPortFrom(cli4.Addr(), 50000)))
			},
			want: Event{Kind: ExpectNew, Expect: Expectation{
				Master: master4, Src: srv4.Addr(), Dst: data4,
				NAT: true, NATDir: Reply, NATTo: netip.AddrPortFrom(cli4.Addr(), 50000),
				Timeout: 299 * time.Second,
			}},
			wantOK: true,
		},
		{
			name: "expect destroy ipv6",
			m: func(t *testing.T) netlink.Message {
				return expMsg(t, 2, master6, cli6.Addr(), netip.AddrPortFrom(srv6.Addr(), 50001), "sane", nil)
			},
			want: Event{Kind: ExpectDestroy, Expect: Expectation{
				Master: master6, Src: cli6.Addr(), Dst: netip.AddrPortFrom(srv6.Addr(), 50001), Timeout: 299 * time.Second,
			}},
			wantOK: true,
		},
		{
			name: "expect of another helper",
			m: func(t *testing.T) netlink.Message {
				return expMsg(t, 0, master4, srv4.Addr(), data4, "ftp", nil)
			},
		},
		{
			name: "flow new with master",
			m: func(t *testing.T) netlink.Message {
				return flowMsg(t, 0, newFlags, dataOrig, dataReply, "", &master4)
			},
			want:   Event{Kind: FlowNew, Flow: Flow{ID: 42, Orig: dataOrig, Reply: dataReply, Master: &master4}},
			wantOK: true,
		},
		{
			name: "flow new without master",
			m: func(t *testing.T) netlink.Message {
				return flowMsg(t, 0, newFlags, master4, Tuple{Src: srv4, Dst: nat4}, "sane", nil)
			},
		},
		{
			name: "flow update",
			m: func(t *testing.T) netlink.Message {
				return flowMsg(t, 0, 0, dataOrig, dataReply, "", &master4)
			},
		},
		{
			name: "flow destroy",
			m: func(t *testing.T) netlink.Message {
				return flowMsg(t, 2, 0, master4, Tuple{Src: srv4, Dst: nat4}, "", nil)
			},
			want:   Event{Kind: FlowDestroy, Flow: Flow{ID: 42, Orig: master4, Reply: Tuple{Src: srv4, Dst: nat4}}},
			wantOK: true,
		},
		{
			name: "not conntrack",
			m: func(t *testing.T) netlink.Message {
				return msg(t, netfilter.NFSubsysQueue, 0, 0, netfilter.ProtoIPv4)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := decodeEvent(tc.m(t))
			if ok != tc.wantOK {
				t.Fatalf("decodeEvent ok = %v, want %v (event %+v)", ok, tc.wantOK, got)
			}
			if diff := cmp.Diff(tc.want, got, equateNetip); diff != "" {
				t.Errorf("decodeEvent (-want +got):\n%s", diff)
			}
		})
	}
}

func TestKernelErr(t *testing.T) {
	opErr := func(errno unix.Errno) error {
		return fmt.Errorf("netfilter query: %w", &netlink.OpError{Op: "receive", Err: errno})
	}
	for _, tc := range []struct {
		name string
		err  error
		m    errnoMap
		want error
	}{
		{name: "enoent flow", err: opErr(unix.ENOENT), m: errnoFlow, want: ErrNotFound},
		{name: "enoent expect", err: opErr(unix.ENOENT), m: errnoCreateExpect, want: ErrNotFound},
		{name: "eexist", err: opErr(unix.EEXIST), m: errnoCreateExpect, want: ErrExist},
		{name: "ebusy", err: opErr(unix.EBUSY), m: errnoCreateExpect, want: ErrExist},
		{name: "ealready", err: opErr(unix.EALREADY), m: errnoCreateExpect, want: ErrExist},
		{name: "eopnotsupp", err: opErr(unix.EOPNOTSUPP), m: errnoCreateExpect, want: ErrNoHelper},
		{name: "eopnotsupp outside create", err: opErr(unix.EOPNOTSUPP), m: errnoFlow, want: nil},
		{name: "emfile", err: opErr(unix.EMFILE), m: errnoCreateExpect, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := kernelErr("create expectation", "a->b", tc.err, tc.m)
			for _, s := range []error{ErrNotFound, ErrExist, ErrNoHelper} {
				if got, want := errors.Is(err, s), s == tc.want; got != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", err, s, got, want)
				}
			}
			var errno unix.Errno
			if !errors.As(err, &errno) {
				t.Errorf("errno lost from %v", err)
			}
			if !strings.HasPrefix(err.Error(), "create expectation a->b: ") {
				t.Errorf("error %q lacks operation and subject", err)
			}
		})
	}
}

func TestExpectationValidate(t *testing.T) {
	m := Tuple{Src: cli4, Dst: srv4}
	ok := Expectation{Master: m, Src: srv4.Addr(), Dst: data4}
	for _, tc := range []struct {
		name    string
		mutate  func(*Expectation)
		wantErr bool
	}{
		{name: "ok", mutate: func(*Expectation) {}},
		{name: "ok nat", mutate: func(e *Expectation) { e.NAT, e.NATDir, e.NATTo = true, Reply, cli4 }},
		{name: "ok mapped ipv4", mutate: func(e *Expectation) { e.Src = netip.AddrFrom16(srv4.Addr().As16()) }},
		{name: "no master", mutate: func(e *Expectation) { e.Master = Tuple{} }, wantErr: true},
		{name: "no src", mutate: func(e *Expectation) { e.Src = netip.Addr{} }, wantErr: true},
		{name: "port 0", mutate: func(e *Expectation) { e.Dst = netip.AddrPortFrom(data4.Addr(), 0) }, wantErr: true},
		{name: "mixed families", mutate: func(e *Expectation) { e.Src = cli6.Addr() }, wantErr: true},
		{name: "nat without endpoint", mutate: func(e *Expectation) { e.NAT = true }, wantErr: true},
		{name: "nat bad direction", mutate: func(e *Expectation) { e.NAT, e.NATDir, e.NATTo = true, 2, cli4 }, wantErr: true},
		{name: "nat other family", mutate: func(e *Expectation) { e.NAT, e.NATTo = true, cli6 }, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ok
			tc.mutate(&e)
			err := e.unmap().validate()
			if (err != nil) != tc.wantErr {
				t.Errorf("validate(%s) = %v, wantErr %v", e, err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, errBadExpectation) {
				t.Errorf("validate error %v does not wrap errBadExpectation", err)
			}
		})
	}
}

func TestTimeoutSeconds(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    time.Duration
		want uint32
	}{
		{name: "zero", d: 0, want: 1},
		{name: "negative", d: -time.Second, want: 1},
		{name: "sub-second", d: time.Millisecond, want: 1},
		{name: "round up", d: 1500 * time.Millisecond, want: 2},
		{name: "exact", d: 30 * time.Second, want: 30},
		{name: "huge", d: 1 << 62, want: 1 << 31},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, timeoutSeconds(tc.d)); diff != "" {
				t.Errorf("timeoutSeconds(%v) (-want +got):\n%s", tc.d, diff)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  string
		want string
	}{
		{name: "kinds", got: fmt.Sprint(FlowNew, FlowDestroy, ExpectNew, ExpectDestroy, EventsLost, EventKind(0)),
			want: "flow_new flow_destroy expect_new expect_destroy events_lost EventKind(0)"},
		{name: "dirs", got: fmt.Sprint(Original, Reply, Dir(9)), want: "original reply Dir(9)"},
		{name: "expectation nat", got: Expectation{Master: Tuple{Src: cli4, Dst: srv4}, Src: srv4.Addr(), Dst: data4, NAT: true, NATDir: Reply, NATTo: cli4}.String(),
			want: "198.51.100.20->198.51.100.1:50000 master 192.0.2.10:40000->198.51.100.20:21 nat reply to 192.0.2.10:40000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
