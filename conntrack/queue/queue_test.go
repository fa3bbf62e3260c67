package queue

import (
	"bytes"
	"testing"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func TestPacketOf(t *testing.T) {
	id, hw, in, out := uint32(7), uint16(0x86dd), uint32(2), uint32(3)
	payload := []byte{0x60, 0, 0, 0}
	tests := []struct {
		name string
		a    nfqueue.Attribute
		want Packet
	}{
		{name: "id only", a: nfqueue.Attribute{PacketID: &id}, want: Packet{ID: 7}},
		{
			name: "all fields",
			a:    nfqueue.Attribute{PacketID: &id, HwProtocol: &hw, InDev: &in, OutDev: &out, Payload: &payload},
			want: Packet{ID: 7, Payload: payload, HWProto: 0x86dd, InDev: 2, OutDev: 3},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, packetOf(&tc.a)); diff != "" {
				t.Errorf("packetOf mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPacketOfAllocs holds this package's per-packet share to zero allocations.
func TestPacketOfAllocs(t *testing.T) {
	id, hw := uint32(7), uint16(0x0800)
	payload := make([]byte, 60)
	a := nfqueue.Attribute{PacketID: &id, HwProtocol: &hw, Payload: &payload}
	var sink Packet
	if n := testing.AllocsPerRun(1000, func() { sink = packetOf(&a) }); n != 0 {
		t.Errorf("packetOf allocates %v times per packet, want 0", n)
	}
	_ = sink
}

func TestParseStats(t *testing.T) {
	got, err := parseStats([]byte("   33 3720769394     5 2 65531     7     2        91  1\n   34 2617686513     0 2 65531     0     0        0  1\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint16]Stats{33: {Backlog: 5, Dropped: 7, UserDropped: 2}, 34: {}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"33 1 2", "x 1 2 3 4 5 6 7 1", "70000 1 0 2 65531 0 0 0 1"} {
		if _, err := parseStats([]byte(bad)); err == nil {
			t.Errorf("parseStats(%q) succeeded", bad)
		}
	}
	if m, err := parseStats(nil); err != nil || len(m) != 0 {
		t.Errorf("empty file: %v %v", m, err)
	}
}

// packetMsg builds a NFQNL_MSG_PACKET body (nfgenmsg, attributes) with mdlayher/netlink,
// independently of parsePacket.
func packetMsg(t testing.TB, attrs []netlink.Attribute) []byte {
	t.Helper()
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{unix.AF_INET, 0, 0, 5}, b...)
}

func TestParsePacket(t *testing.T) {
	payload := []byte{0x45, 0, 0, 20, 1, 2, 3} // odd length: the attribute is padded
	tests := []struct {
		name   string
		attrs  []netlink.Attribute
		want   Packet
		wantOK bool
	}{
		{
			name: "all fields",
			attrs: []netlink.Attribute{
				{Type: nfqaPacketHdr, Data: []byte{0, 0, 0x01, 0x02, 0x08, 0x00, 3}},
				{Type: nfqaIfindexIn, Data: []byte{0, 0, 0, 2}},
				{Type: nfqaIfindexOut, Data: []byte{0, 0, 0, 3}},
				{Type: 4, Data: make([]byte, 16)}, // NFQA_TIMESTAMP: skipped
				{Type: nfqaPayload, Data: payload},
			},
			want:   Packet{ID: 0x0102, HWProto: 0x0800, InDev: 2, OutDev: 3, Payload: payload},
			wantOK: true,
		},
		{
			name:   "no header",
			attrs:  []netlink.Attribute{{Type: nfqaPayload, Data: payload}},
			want:   Packet{Payload: payload},
			wantOK: false,
		},
		{
			name:   "short header",
			attrs:  []netlink.Attribute{{Type: nfqaPacketHdr, Data: []byte{0, 0, 0, 1}}},
			wantOK: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parsePacket(packetMsg(t, tc.attrs))
			if ok != tc.wantOK {
				t.Errorf("ok = %v, want %v", ok, tc.wantOK)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parsePacket mismatch (-want +got):\n%s", diff)
			}
		})
	}
	// Truncated and garbage input never panics.
	b := packetMsg(t, tests[0].attrs)
	for i := range len(b) {
		parsePacket(b[:i])
		c := bytes.Clone(b)
		c[i] ^= 0xff
		parsePacket(c)
	}
}

// TestAppendVerdict decodes appendVerdict's message with mdlayher/netlink.
func TestAppendVerdict(t *testing.T) {
	for _, altered := range [][]byte{nil, {0x45, 1, 2, 3, 4}} {
		b := appendVerdict(nil, 0x0102, 77, verdictAccept, altered)
		var m netlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		if int(m.Header.Length) != len(b) || m.Header.Type != msgVerdict || m.Header.Flags != netlink.Request {
			t.Errorf("header %+v, message of %d bytes", m.Header, len(b))
		}
		if got := m.Data[:4]; !bytes.Equal(got, []byte{unix.AF_UNSPEC, 0, 1, 2}) {
			t.Errorf("nfgenmsg = %v", got)
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			t.Fatal(err)
		}
		got := map[uint16][]byte{}
		for ad.Next() {
			got[ad.Type()] = ad.Bytes()
		}
		want := map[uint16][]byte{nfqaVerdictHdr: {0, 0, 0, 1, 0, 0, 0, 77}}
		if altered != nil {
			want[nfqaPayload] = altered
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("attributes mismatch (-want +got):\n%s", diff)
		}
	}
}

// TestLeanAllocs holds the lean loop's per-packet parsing and per-verdict encoding to zero
// allocations.
func TestLeanAllocs(t *testing.T) {
	msg := packetMsg(t, []netlink.Attribute{
		{Type: nfqaPacketHdr, Data: []byte{0, 0, 0, 9, 0x08, 0x00, 1}},
		{Type: nfqaPayload, Data: make([]byte, 60)},
	})
	buf := make([]byte, 0, 2048)
	altered := make([]byte, 60)
	var sink Packet
	n := testing.AllocsPerRun(1000, func() {
		walkMessages(msg, func(uint16, uint32, []byte) {})
		sink, _ = parsePacket(msg)
		buf = appendVerdict(buf[:0], 5, sink.ID, verdictAccept, altered)
	})
	if n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
}
