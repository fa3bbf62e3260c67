package queue

import (
	"testing"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/google/go-cmp/cmp"
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
