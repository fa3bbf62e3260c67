package conntrack

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// capNetAdmin is CAP_NET_ADMIN's bit in the capability sets (include/uapi/linux/capability.h).
const capNetAdmin = 12

// CheckPrivileges reports an error unless the process has CAP_NET_ADMIN in its effective
// capability set (ctnetlink writes, nftables and NFQUEUE all need it).
func CheckPrivileges() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	capEff, err := parseCapEff(b)
	if err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	if capEff&(1<<capNetAdmin) == 0 {
		return fmt.Errorf("check privileges: CAP_NET_ADMIN is not in the effective capability set "+
			"(CapEff %016x): run ftpalg as root or grant it NET_ADMIN "+
			"(systemd AmbientCapabilities=CAP_NET_ADMIN, container --cap-add NET_ADMIN)", capEff)
	}
	return nil
}

// parseCapEff returns the CapEff mask of a /proc/<pid>/status file.
func parseCapEff(status []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return 0, fmt.Errorf("parse CapEff %q: %w", strings.TrimSpace(v), err)
		}
		return m, nil
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// CheckUserNS reports an error unless the process runs in the host (initial) user namespace,
// whose uid_map is the identity "0 0 4294967295". In any other user namespace this kernel
// refuses NFQUEUE verdicts that carry a modified packet (EPERM), so ftpalg could not rewrite
// addresses.
func CheckUserNS() error {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return fmt.Errorf("check user namespace: %w", err)
	}
	if !isIdentityUIDMap(b) {
		return fmt.Errorf("check user namespace: ftpalg runs in a non-initial user namespace "+
			"(uid_map %q): the kernel refuses NFQUEUE packet rewriting there (EPERM); run it in "+
			"the host user namespace (rootful container without --userns, no user-namespace "+
			"remapping, Kubernetes hostUsers: true) with NET_ADMIN", strings.TrimSpace(string(b)))
	}
	return nil
}

// isIdentityUIDMap reports whether a uid_map maps the whole 32-bit range onto itself.
func isIdentityUIDMap(m []byte) bool {
	lines := strings.Split(strings.TrimSpace(string(m)), "\n")
	if len(lines) != 1 {
		return false
	}
	f := strings.Fields(lines[0])
	return len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295"
}

// CheckConntrack reports an error unless ctnetlink answers in this network namespace and the
// kernel has the SANE conntrack helper ftpalg uses as its carrier (built in, loaded, or
// loadable).
func CheckConntrack() error {
	c, err := Dial()
	if err != nil {
		return fmt.Errorf("check conntrack: ctnetlink unreachable: %w (the kernel needs "+
			"CONFIG_NF_CT_NETLINK, or modprobe nf_conntrack_netlink)", err)
	}
	defer c.Close()
	if _, err := c.ct.StatsGlobal(); err != nil {
		return fmt.Errorf("check conntrack: ctnetlink request failed: %w (load "+
			"nf_conntrack_netlink; ftpalg needs CAP_NET_ADMIN)", err)
	}
	if helperPresent("nf_conntrack_sane", "CONFIG_NF_CONNTRACK_SANE") {
		return nil
	}
	// No trace of it on disk: ask the kernel directly, which also loads the module on demand.
	if err := probeHelper(CarrierHelper); err != nil {
		return fmt.Errorf("check conntrack: the SANE conntrack helper (nf_conntrack_sane) is "+
			"unavailable: %w; ftpalg attaches it, inert, to FTP control connections so that "+
			"the kernel accepts its expectations: run modprobe nf_conntrack_sane, or use a "+
			"kernel built with CONFIG_NF_CONNTRACK_SANE", err)
	}
	return nil
}

// helperPresent looks for a conntrack helper module without side effects: built in or loaded
// (/sys/module), loaded (/proc/modules), loadable (/lib/modules/$(uname -r)), or configured
// (/proc/config.gz).
func helperPresent(module, config string) bool {
	if _, err := os.Stat(filepath.Join("/sys/module", module)); err == nil {
		return true
	}
	if b, err := os.ReadFile("/proc/modules"); err == nil && hasModuleLine(b, module) {
		return true
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
		for _, f := range []string{"modules.dep", "modules.builtin"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && bytes.Contains(b, []byte("/"+module+".ko")) {
				return true
			}
		}
	}
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if z, err := gzip.NewReader(f); err == nil {
			b, _ := io.ReadAll(z)
			return configEnabled(b, config)
		}
	}
	return false
}

// hasModuleLine reports whether /proc/modules content lists module.
func hasModuleLine(procModules []byte, module string) bool {
	for line := range strings.Lines(string(procModules)) {
		if name, _, _ := strings.Cut(line, " "); name == module {
			return true
		}
	}
	return false
}

// configEnabled reports whether a kernel config has option set to y or m.
func configEnabled(config []byte, option string) bool {
	for line := range strings.Lines(string(config)) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), option+"=")
		if ok && (v == "y" || v == "m") {
			return true
		}
	}
	return false
}

// probeHelper creates and removes a ct helper object of type name in a throwaway table: the
// kernel loads the helper module on demand (nfct-helper-<name>) and refuses an unknown type.
func probeHelper(name string) error {
	nft, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: fmt.Sprintf("ftpalg_probe_%d", os.Getpid()), Family: nftables.TableFamilyINet}
	nft.AddTable(t)
	nft.AddObj(&nftables.NamedObj{
		Table: t, Name: name, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: name, L3Proto: unix.NFPROTO_INET, L4Proto: unix.IPPROTO_TCP},
	})
	err = nft.Flush()
	nft.DelTable(t)
	if derr := nft.Flush(); err == nil && derr != nil && !errors.Is(derr, unix.ENOENT) {
		return fmt.Errorf("remove probe table %s: %w", t.Name, derr)
	}
	return err
}

// ErrKernelFTPHelper is wrapped by CheckKernelFTPHelper's error.
var ErrKernelFTPHelper = errors.New("kernel ftp conntrack helper in use")

// CheckKernelFTPHelper reports an error naming every place where the kernel's own "ftp"
// helper is attached to connections ftpalg would handle: nft ct helper objects of type "ftp"
// in any table, iptables CT --helper ftp rules (nft-based and legacy), automatic helper
// assignment (net.netfilter.nf_conntrack_helper = 1, kernels before 6.0), and live conntrack
// entries with helper "ftp" on one of ports. Both on the same connection would rewrite the
// same commands twice and create conflicting expectations.
func CheckKernelFTPHelper(ports []uint16) error {
	var found []string
	nftFound, err := nftFTPHelpers()
	if err != nil {
		return fmt.Errorf("check kernel ftp helper: read nftables ruleset: %w", err)
	}
	found = append(found, nftFound...)
	found = append(found, legacyFTPHelpers()...)
	if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_helper"); err == nil &&
		strings.TrimSpace(string(b)) == "1" && helperPresent("nf_conntrack_ftp", "CONFIG_NF_CONNTRACK_FTP") {
		found = append(found, "sysctl net.netfilter.nf_conntrack_helper = 1 attaches nf_conntrack_ftp to every port-21 connection (set it to 0)")
	}
	flows, err := liveFTPHelperFlows(ports)
	if err != nil {
		return fmt.Errorf("check kernel ftp helper: %w", err)
	}
	found = append(found, flows...)
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s; ftpalg replaces the kernel ftp helper and cannot run beside it: "+
		"remove these (keep `ct state established,related accept`) and start ftpalg again",
		ErrKernelFTPHelper, strings.Join(found, "; "))
}

// nftFTPHelpers lists ct helper objects of type "ftp" and xt CT targets with helper "ftp"
// (what iptables-nft installs for `-j CT --helper ftp`) in every table.
func nftFTPHelpers() ([]string, error) {
	nft, err := nftables.New()
	if err != nil {
		return nil, err
	}
	tables, err := nft.ListTables()
	if err != nil {
		return nil, err
	}
	var found []string
	for _, t := range tables {
		objs, err := nft.GetNamedObjects(t)
		if err != nil {
			return nil, fmt.Errorf("objects of table %s: %w", t.Name, err)
		}
		for _, o := range objs {
			no, ok := o.(*nftables.NamedObj)
			if !ok || no.Type != nftables.ObjTypeCtHelper {
				continue
			}
			if h, ok := no.Obj.(*expr.CtHelper); ok && h.Name == "ftp" {
				found = append(found, fmt.Sprintf("nft ct helper %q of type \"ftp\" in table %s %s",
					no.Name, familyName(t.Family), t.Name))
			}
		}
	}
	chains, err := nft.ListChains()
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		rules, err := nft.GetRules(c.Table, c)
		if err != nil {
			// google/nftables cannot decode every expression the kernel accepts (e.g. a
			// `ct original proto-dst` match): that chain is skipped (a CT --helper ftp rule
			// in it goes unnoticed; the live-flow check below still sees its effect) rather
			// than refusing to start on a valid ruleset.
			continue
		}
		for _, r := range rules {
			if slices.ContainsFunc(r.Exprs, isCTFTPTarget) {
				found = append(found, fmt.Sprintf("iptables CT --helper ftp rule in table %s %s chain %s",
					familyName(c.Table.Family), c.Table.Name, c.Name))
			}
		}
	}
	return found, nil
}

// isCTFTPTarget reports whether e is the xt CT target with helper "ftp". In every revision of
// struct xt_ct_target_info the helper name is a 16-byte string at offset 12.
func isCTFTPTarget(e expr.Any) bool {
	t, ok := e.(*expr.Target)
	if !ok || t.Name != "CT" {
		return false
	}
	u, ok := t.Info.(*xt.Unknown)
	if !ok || len(*u) < 12+16 {
		return false
	}
	return unix.ByteSliceToString((*u)[12:28]) == "ftp"
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return strconv.Itoa(int(f))
}

// legacyFTPHelpers lists CT --helper ftp rules of the legacy (x_tables) raw tables. It looks only
// when a legacy raw table exists, so that it loads nothing into the kernel.
func legacyFTPHelpers() []string {
	var found []string
	for _, v := range []struct{ names, save string }{
		{"/proc/net/ip_tables_names", "iptables-legacy-save"},
		{"/proc/net/ip6_tables_names", "ip6tables-legacy-save"},
	} {
		b, err := os.ReadFile(v.names)
		if err != nil || !slices.Contains(strings.Fields(string(b)), "raw") {
			continue
		}
		out, err := exec.Command(v.save, "-t", "raw").Output()
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(out)) {
			if strings.Contains(line, "--helper ftp") {
				found = append(found, fmt.Sprintf("legacy rule %q (%s)", strings.TrimSpace(line), v.save))
			}
		}
	}
	return found
}

// liveFTPHelperFlows lists conntrack entries that carry the kernel ftp helper on one of ports.
func liveFTPHelperFlows(ports []uint16) ([]string, error) {
	c, err := Dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	flows, err := c.ct.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	var (
		n     int
		first string
	)
	for i := range flows {
		f, ok := flowFrom(&flows[i])
		if !ok || f.Helper != "ftp" {
			continue
		}
		if !slices.Contains(ports, f.Orig.Dst.Port()) && !slices.Contains(ports, f.Reply.Src.Port()) {
			continue
		}
		if n == 0 {
			first = f.Orig.String()
		}
		n++
	}
	if n == 0 {
		return nil, nil
	}
	return []string{fmt.Sprintf("%d live connection(s) with helper \"ftp\" (first %s): something attaches it", n, first)}, nil
}
