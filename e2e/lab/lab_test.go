package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func portText(a netip.Addr) string { return strings.ReplaceAll(a.String(), ".", ",") }

// The addressing plans must do what their names promise for both NAT directions.
func TestPlansGrowAndShrink(t *testing.T) {
	for _, tc := range []struct {
		name string
		plan Addrs
		want []int // text delta: client → public (PORT), inside server → public (227)
	}{
		{name: "grow", plan: Grow(), want: []int{3, 2}},
		{name: "shrink", plan: Shrink(), want: []int{-5, -5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := tc.plan
			pub := len(portText(x.RouterPublic))
			got := []int{pub - len(portText(x.Client)), pub - len(portText(x.InsideServer))}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("text deltas (-want +got):\n%s", diff)
			}
			for _, a := range []netip.Addr{x.Client, x.InsideServer, x.InsideGoServer, x.RouterInside} {
				if !x.Inside.Contains(a) {
					t.Errorf("%s not in the inside prefix %s", a, x.Inside)
				}
			}
			for _, a := range []netip.Addr{x.OutsideServer, x.OutsideGo, x.OutsideClient, x.RouterPublic, x.RouterHost, x.RouterGo} {
				if !x.Outside.Contains(a) {
					t.Errorf("%s not in the outside prefix %s", a, x.Outside)
				}
			}
		})
	}
}

func TestCurlArgs(t *testing.T) {
	srv := URL(netip.MustParseAddr("2001:db8:2::20"), "")
	for _, tc := range []struct {
		name string
		tr   Transfer
		want []string
	}{
		{
			name: "pasv get",
			tr:   Transfer{Op: Get, Mode: PASV, Server: srv, Local: "/x", Timeout: 4 * time.Second},
			want: []string{"-sS", "-v", "--connect-timeout", "4.0", "--max-time", "4.0", "--ftp-pasv", "--disable-epsv", "-o", "/x", "ftp://[2001:db8:2::20]/pub/data.bin"},
		},
		{
			name: "eprt put",
			tr:   Transfer{Op: Put, Mode: EPRT, Server: srv, Local: "/x", Remote: "r.bin", Timeout: 20 * time.Second},
			want: []string{"-sS", "-v", "--connect-timeout", "5.0", "--max-time", "20.0", "--ftp-port", "-", "-T", "/x", "ftp://[2001:db8:2::20]/incoming/r.bin"},
		},
		{
			name: "port nlst",
			tr:   Transfer{Op: Nlst, Mode: PORT, Server: srv, Local: "/x", Timeout: 20 * time.Second},
			want: []string{"-sS", "-v", "--connect-timeout", "5.0", "--max-time", "20.0", "--ftp-port", "-", "--disable-eprt", "--list-only", "-o", "/x", "ftp://[2001:db8:2::20]/pub/"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, CurlArgs(tc.tr)); diff != "" {
				t.Errorf("CurlArgs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRuleset(t *testing.T) {
	for _, tc := range []struct {
		name       string
		helper     bool
		wantHelper bool
	}{
		{name: "plain", helper: false, wantHelper: false},
		{name: "kernel helper", helper: true, wantHelper: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &Lab{Addrs: Grow(), cfg: Config{KernelHelper: tc.helper}}
			rs := l.Ruleset()
			for _, must := range []string{
				"type filter hook forward priority filter; policy drop;",
				"type filter hook input priority filter; policy drop;",
				"ct state established,related accept",
				"ip daddr 198.51.100.1 tcp dport 21 dnat ip to 192.0.2.10:21",
				"ip saddr 192.0.2.0/24 oifname != \"lan\" masquerade",
			} {
				if !strings.Contains(rs, must) {
					t.Errorf("ruleset lacks %q:\n%s", must, rs)
				}
			}
			if got := strings.Contains(rs, `ct helper set "ftp-kernel"`); got != tc.wantHelper {
				t.Errorf("helper rule present = %v, want %v", got, tc.wantHelper)
			}
		})
	}
}

func TestSweepStale(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	// A process that has exited: its lab's namespaces are stale.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("fe2e-%d-1-client", dead.Process.Pid)
	live := fmt.Sprintf("fe2e-%d-1-client", os.Getppid()) // go test's own parent lives
	for _, n := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	sweepStale()
	if _, err := os.Stat("/run/netns/" + stale); err == nil {
		t.Errorf("%s (its process gone) was not swept", stale)
	}
	if _, err := os.Stat("/run/netns/" + live); err != nil {
		t.Errorf("%s (its process alive) was swept", live)
	}
}
