package conntrack

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

func TestParseCapEff(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  string
		want    uint64
		wantErr bool
	}{
		{name: "root", status: "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n", want: 0x1fffeffffff},
		{name: "net admin only", status: "CapEff:\t0000000000001000\n", want: 1 << capNetAdmin},
		{name: "none", status: "CapEff:\t0000000000000000\n", want: 0},
		{name: "missing", status: "Name:\tx\n", wantErr: true},
		{name: "garbage", status: "CapEff:\tzz\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCapEff([]byte(tc.status))
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseCapEff err = %v, wantErr %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("parseCapEff (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIsIdentityUIDMap(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    string
		want bool
	}{
		{name: "host", m: "         0          0 4294967295\n", want: true},
		{name: "rootless container", m: "         0       1000          1\n         1     100000      65536\n", want: false},
		{name: "remapped root", m: "0 100000 65536\n", want: false},
		{name: "partial range", m: "0 0 65536\n", want: false},
		{name: "empty", m: "", want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, isIdentityUIDMap([]byte(tc.m))); diff != "" {
				t.Errorf("isIdentityUIDMap(%q) (-want +got):\n%s", tc.m, diff)
			}
		})
	}
}

func TestModuleProbes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		got    bool
		want   bool
		detail string
	}{
		{name: "config builtin", got: configEnabled([]byte("# x\nCONFIG_NF_CONNTRACK_SANE=y\n"), "CONFIG_NF_CONNTRACK_SANE"), want: true},
		{name: "config module", got: configEnabled([]byte("CONFIG_NF_CONNTRACK_SANE=m"), "CONFIG_NF_CONNTRACK_SANE"), want: true},
		{name: "config unset", got: configEnabled([]byte("# CONFIG_NF_CONNTRACK_SANE is not set\n"), "CONFIG_NF_CONNTRACK_SANE"), want: false},
		{name: "config prefix only", got: configEnabled([]byte("CONFIG_NF_CONNTRACK_SANE_X=y\n"), "CONFIG_NF_CONNTRACK_SANE"), want: false},
		{name: "proc modules", got: hasModuleLine([]byte("nf_nat 1 0 - Live 0x0\nnf_conntrack_sane 16384 0 - Live 0x0\n"), "nf_conntrack_sane"), want: true},
		{name: "proc modules other", got: hasModuleLine([]byte("nf_conntrack_sane_x 1 0 - Live 0x0\n"), "nf_conntrack_sane"), want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestIsCTFTPTarget(t *testing.T) {
	info := func(helper string) *xt.Unknown {
		b := make(xt.Unknown, 12+16+8)
		copy(b[12:], helper)
		return &b
	}
	short := xt.Unknown(make([]byte, 20))
	for _, tc := range []struct {
		name string
		e    expr.Any
		want bool
	}{
		{name: "ct helper ftp", e: &expr.Target{Name: "CT", Rev: 2, Info: info("ftp")}, want: true},
		{name: "ct helper sane", e: &expr.Target{Name: "CT", Rev: 2, Info: info("sane")}, want: false},
		{name: "ct helper ftp-x", e: &expr.Target{Name: "CT", Rev: 2, Info: info("ftp-x")}, want: false},
		{name: "other target", e: &expr.Target{Name: "NFQUEUE", Info: info("ftp")}, want: false},
		{name: "short info", e: &expr.Target{Name: "CT", Info: &short}, want: false},
		{name: "not a target", e: &expr.Counter{}, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, isCTFTPTarget(tc.e)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckPrivilegesAndUserNS(t *testing.T) {
	skipUnlessRoot(t)
	if err := CheckPrivileges(); err != nil {
		t.Errorf("CheckPrivileges as root: %v", err)
	}
	if err := CheckUserNS(); err != nil {
		t.Errorf("CheckUserNS as root in the host user namespace: %v", err)
	}
}

func TestCheckConntrack(t *testing.T) {
	newLab(t)
	if err := CheckConntrack(); err != nil {
		t.Errorf("CheckConntrack: %v", err)
	}
	if err := probeHelper(CarrierHelper); err != nil {
		t.Errorf("probeHelper(%q): %v", CarrierHelper, err)
	}
	if err := probeHelper("no-such-helper"); err == nil {
		t.Errorf("probeHelper(no-such-helper) succeeded")
	}
}

func TestCheckKernelFTPHelper(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(l *lab)
		ports []uint16
		want  string // "" = no error; else a fragment of the error text
	}{
		{name: "clean: carrier only", setup: func(l *lab) { l.master(lo4, 21) }, ports: []uint16{21}},
		{
			name: "nft ct helper object",
			setup: func(l *lab) {
				l.nft(`table ip fw { ct helper ftp-standard { type "ftp" protocol tcp; }; }`)
			},
			ports: []uint16{21},
			want:  `nft ct helper "ftp-standard" of type "ftp" in table ip fw`,
		},
		{
			name: "iptables CT rule",
			setup: func(l *lab) {
				l.run("", "iptables-nft", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
			},
			ports: []uint16{21},
			want:  "iptables CT --helper ftp rule in table ip raw chain PREROUTING",
		},
		{
			name:  "live flow",
			setup: liveFTPFlow,
			ports: []uint16{2121, 21},
			want:  `1 live connection(s) with helper "ftp"`,
		},
		{name: "live flow on another port", setup: liveFTPFlow, ports: []uint16{2121}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			tc.setup(l)
			err := CheckKernelFTPHelper(tc.ports)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("CheckKernelFTPHelper: %v, want nil", err)
			case tc.want != "" && (!errors.Is(err, ErrKernelFTPHelper) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("CheckKernelFTPHelper: %v, want ErrKernelFTPHelper naming %q", err, tc.want)
			}
		})
	}
}

// liveFTPFlow leaves a port-21 connection carrying the kernel ftp helper, then removes the
// ruleset that attached it: only the live entry remains to be found.
func liveFTPFlow(l *lab) {
	l.nft(`flush ruleset
table inet fw {
	ct helper ftph { type "ftp" protocol tcp; }
	chain out { type filter hook output priority filter; tcp dport 21 ct helper set "ftph"; }
}`)
	m := l.master(lo4, 21)
	l.nft("delete table inet fw")
	f, err := l.c.Lookup(m)
	if err != nil || f.Helper != "ftp" {
		l.t.Fatalf("setup: flow %+v, %v; want helper ftp", f, err)
	}
}
