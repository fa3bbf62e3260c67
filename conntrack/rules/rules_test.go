package rules

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/xt"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// renderCases are the configurations of the golden files, also loaded into the kernel by
// the namespace tests.
var renderCases = []struct {
	name string
	cfg  Config
}{
	{name: "default", cfg: Config{Ports: []uint16{21}}},
	{name: "balance_failopen", cfg: Config{Ports: []uint16{2121, 21, 21}, Queue: 10, Queues: 4, FailOpen: true}},
	{name: "named", cfg: Config{Table: "ftpalg-test", Helper: "carrier_2", Ports: []uint16{21, 990}, Queue: 65535}},
	{name: "queue_all", cfg: Config{Ports: []uint16{21}, SkipLabel: -1, QueuePureACKs: true}},
	{name: "label_64", cfg: Config{Ports: []uint16{21}, SkipLabel: 64}},
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			got := Render(tc.cfg)
			path := filepath.Join("testdata", tc.name+".nft")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create it): %v", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Render(%+v) mismatch (-want +got):\n%s", tc.cfg, diff)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want error // nil: valid
	}{
		{name: "minimal", cfg: Config{Ports: []uint16{21}}},
		{name: "no ports", cfg: Config{}, want: ErrNoPorts},
		{name: "port zero", cfg: Config{Ports: []uint16{21, 0}}, want: errPortZero},
		{name: "last queue 65535", cfg: Config{Ports: []uint16{21}, Queue: 65532, Queues: 4}},
		{name: "queue range overflow", cfg: Config{Ports: []uint16{21}, Queue: 65533, Queues: 4}, want: errQueueRange},
		{name: "table with space", cfg: Config{Table: "a b", Ports: []uint16{21}}, want: errBadName},
		{name: "helper with quote", cfg: Config{Helper: `x"`, Ports: []uint16{21}}, want: errBadName},
		{name: "table starts with digit", cfg: Config{Table: "1ftp", Ports: []uint16{21}}, want: errBadName},
		{name: "label bit 128", cfg: Config{Ports: []uint16{21}, SkipLabel: 128}, want: errLabelRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.normalized().validate()
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("validate() = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestNormalized(t *testing.T) {
	got := Config{Ports: []uint16{990, 21, 990}}.normalized()
	want := Config{Table: "ftpalg", Helper: "ftpalg-carrier", Ports: []uint16{21, 990}, Queues: 1, SkipLabel: DefaultSkipLabel}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("normalized() mismatch (-want +got):\n%s", diff)
	}
}

// TestNFQueueInfo checks the xt_NFQ_info_v3 bytes on this (little-endian) test machine:
// queuenum, queues_total, flags as host-order u16, then 2 bytes of padding.
func TestNFQueueInfo(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want xt.Unknown
	}{
		{name: "queue 0", cfg: Config{Queue: 0, Queues: 1}, want: xt.Unknown{0, 0, 1, 0, 0, 0, 0, 0}},
		{name: "balance bypass", cfg: Config{Queue: 0x0102, Queues: 4, FailOpen: true}, want: xt.Unknown{2, 1, 4, 0, 1, 0, 0, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := nfqueueExpr(tc.cfg)
			if e.Name != "NFQUEUE" || e.Rev != 3 {
				t.Errorf("target = %s rev %d, want NFQUEUE rev 3", e.Name, e.Rev)
			}
			if diff := cmp.Diff(&tc.want, e.Info); diff != "" {
				t.Errorf("info mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
