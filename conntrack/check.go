package conntrack

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/ftpalg/ftpalg/conntrack/rules"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

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

// probeHelper asks the kernel whether the conntrack helper name exists (rules.ProbeHelper:
// the kernel loads its module on demand and refuses an unknown type).
func probeHelper(name string) error { return rules.ProbeHelper(name, name) }

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
//
// It streams the table instead of loading it: a router may track hundreds of thousands of
// connections, and a library dump (ti-mo/conntrack's Dump, which also collects the whole
// multipart reply in mdlayher/netlink) would hold every one of them in memory at once, more
// than a unit's MemoryMax allows. Here each recvmsg lands in one reused buffer, each entry is
// decoded only as far as the check needs (family, protocol, ports, helper name) and dropped.
// The kernel is also asked to send only TCP entries to or from the control ports
// (CTA_FILTER, Linux 5.8+): one dump per family and port for the original destination port and
// one for the reply source port (a port-forward's entry has the control port only there). A
// kernel that refuses the filter gets one plain dump, matched here.
func liveFTPHelperFlows(ports []uint16) ([]string, error) {
	d, err := openCTDump()
	if err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	defer d.close()
	var m ftpHelperMatches
	if _, err := d.scanFTPHelper(ports, &m, true); err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	if m.n == 0 {
		return nil, nil
	}
	return []string{fmt.Sprintf("%d live connection(s) with helper \"ftp\" (first %s): something attaches it", m.n, m.first)}, nil
}

// ftpHelperMatches counts the entries with helper "ftp" on a control port.
type ftpHelperMatches struct {
	n     int
	first Tuple // original tuple of the first one
}

// ctDumpStats says what one scan cost: how many dumps were sent, how many entries the kernel
// sent back, and whether the kernel's filter was used.
type ctDumpStats struct {
	dumps, entries int
	filtered       bool
	retried        int // dumps repeated because the kernel flagged them interrupted
}

// ctnetlink numbers the streaming dump needs beyond attrs.go's (include/uapi/linux/netfilter/
// nfnetlink_conntrack.h, nfnetlink.h).
const (
	nfnlSubsysCTNetlink = 1 // NFNL_SUBSYS_CTNETLINK (the message type is subsystem<<8 | message)

	dumpCTATupleOrig  = 1  // CTA_TUPLE_ORIG
	dumpCTATupleReply = 2  // CTA_TUPLE_REPLY
	dumpCTAHelp       = 5  // CTA_HELP
	dumpCTAFilter     = 25 // CTA_FILTER
	dumpCTAHelpName   = 1  // CTA_HELP_NAME (in CTA_HELP)

	dumpCTAFilterOrigFlags  = 1 // CTA_FILTER_ORIG_FLAGS (in CTA_FILTER)
	dumpCTAFilterReplyFlags = 2 // CTA_FILTER_REPLY_FLAGS

	// CTA_FILTER_FLAG_CTA_PROTO_DST_PORT (conn.go has the others).
	filterFlagProtoDstPort = 1 << 5

	nfgenmsgLen = 4 // struct nfgenmsg: family, version, res_id

	nlaTypeMask = 0x3fff // NLA_TYPE_MASK: without NLA_F_NESTED and NLA_F_NET_BYTEORDER
	nlaFNested  = 0x8000 // NLA_F_NESTED

	// ctDumpBufSize holds any one dump datagram: the kernel fills a dump skb up to 32 KiB
	// (netlink_dump caps max_recvmsg_len there). MSG_TRUNC would reveal a larger one.
	ctDumpBufSize = 64 << 10
	// ctDumpTimeout bounds each wait for the kernel's next datagram.
	ctDumpTimeout = 10 * time.Second
)

var (
	errDumpTruncated = errors.New("ctnetlink dump datagram larger than the receive buffer")
	errDumpMalformed = errors.New("malformed ctnetlink dump message")
)

// ctDump is a raw NETLINK_NETFILTER socket for streaming conntrack dumps. Not for concurrent
// use.
type ctDump struct {
	fd  int
	buf []byte
	req []byte
	seq uint32
}

// openCTDump opens the socket in the calling thread's network namespace (a caller that moved
// its thread must hold runtime.LockOSThread, as for Dial).
func openCTDump() (*ctDump, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	tv := unix.NsecToTimeval(ctDumpTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink receive timeout: %w", err)
	}
	return &ctDump{fd: fd, buf: make([]byte, ctDumpBufSize), seq: uint32(time.Now().UnixNano())}, nil
}

func (d *ctDump) close() error { return unix.Close(d.fd) }

// ctDumpEntry is what the check decodes of one conntrack entry. helper is a view into the
// receive buffer, valid only during the callback.
type ctDumpEntry struct {
	family          uint8
	proto           uint8 // of the original tuple; 0 when absent
	orig, reply     Tuple
	helper          []byte
	hasOrig, hasRep bool
}

// scanFTPHelper runs the dumps of liveFTPHelperFlows and adds what matches to m. With
// useFilter false (or when the kernel refuses the filter) it runs one unfiltered dump.
func (d *ctDump) scanFTPHelper(ports []uint16, m *ftpHelperMatches, useFilter bool) (ctDumpStats, error) {
	var st ctDumpStats
	if len(ports) == 0 {
		return st, nil
	}
	if useFilter {
		var found ftpHelperMatches
		err := d.scanFiltered(ports, &found, &st)
		switch {
		case err == nil:
			st.filtered = true
			*m = found
			return st, nil
		case !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL):
			return st, err
		}
		// A kernel without CTA_FILTER support on dumps: fall through to the plain dump.
	}
	var found ftpHelperMatches
	err := d.dumpRetry(unix.AF_UNSPEC, nil, &st, &found, func(e *ctDumpEntry) bool {
		return slices.Contains(ports, e.orig.Dst.Port()) || slices.Contains(ports, e.reply.Src.Port())
	})
	if err != nil {
		return st, err
	}
	*m = found
	return st, nil
}

// scanFiltered asks the kernel for TCP entries whose original destination port is a control
// port, then for those whose reply source port is one (a port-forward to it) and whose
// original one is not (those came with the first dumps).
func (d *ctDump) scanFiltered(ports []uint16, m *ftpHelperMatches, st *ctDumpStats) error {
	var attrs []byte
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, p := range ports {
			attrs = appendPortFilter(attrs[:0], dumpCTAFilterOrigFlags, dumpCTATupleOrig, ctaProtoDst, filterFlagProtoDstPort, p)
			err := d.dumpRetry(fam, attrs, st, m, func(e *ctDumpEntry) bool { return e.orig.Dst.Port() == p })
			if err != nil {
				return err
			}
			attrs = appendPortFilter(attrs[:0], dumpCTAFilterReplyFlags, dumpCTATupleReply, ctaProtoSrc, filterFlagProtoSport, p)
			err = d.dumpRetry(fam, attrs, st, m, func(e *ctDumpEntry) bool {
				return e.reply.Src.Port() == p && !slices.Contains(ports, e.orig.Dst.Port())
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// appendPortFilter appends CTA_FILTER {flagsAttr: PROTO_NUM|portFlag} and the tuple attribute
// tupleAttr {CTA_TUPLE_PROTO {CTA_PROTO_NUM tcp, portAttr port}} that it refers to.
func appendPortFilter(b []byte, flagsAttr, tupleAttr, portAttr uint16, portFlag uint32, port uint16) []byte {
	var flags [4]byte
	binary.NativeEndian.PutUint32(flags[:], filterFlagProtoNum|portFlag)
	filter := appendAttr(nil, flagsAttr, flags[:])
	b = appendAttr(b, dumpCTAFilter|nlaFNested, filter)
	proto := appendAttr(nil, ctaProtoNum, []byte{unix.IPPROTO_TCP})
	proto = appendAttr(proto, portAttr, binary.BigEndian.AppendUint16(nil, port))
	return appendAttr(b, tupleAttr|nlaFNested, appendAttr(nil, ctaTupleProto|nlaFNested, proto))
}

// appendAttr appends one netlink attribute (header, value, padding to 4 bytes).
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+len(v)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// dumpRetry runs one dump and adds to m the entries with helper "ftp" that keep accepts; a dump
// the kernel flags as interrupted (NLM_F_DUMP_INTR: the table changed under it) is run once
// more, its partial result dropped.
func (d *ctDump) dumpRetry(family uint8, attrs []byte, st *ctDumpStats, m *ftpHelperMatches, keep func(*ctDumpEntry) bool) error {
	for attempt := 0; ; attempt++ {
		var found ftpHelperMatches
		intr, err := d.dump(family, attrs, st, func(e *ctDumpEntry) {
			if e.proto != unix.IPPROTO_TCP || string(e.helper) != "ftp" || !keep(e) {
				return
			}
			if found.n == 0 {
				found.first = e.orig
			}
			found.n++
		})
		if err != nil {
			return err
		}
		if intr && attempt == 0 {
			st.retried++
			continue
		}
		// A second interruption keeps what this run found: an entry that carried the helper
		// was there, and the check runs again at every start.
		if m.n == 0 {
			m.first = found.first
		}
		m.n += found.n
		return nil
	}
}

// dump sends one IPCTNL_MSG_CT_GET dump request and calls fn for every entry until
// NLMSG_DONE. It reports whether the kernel flagged the dump interrupted.
func (d *ctDump) dump(family uint8, attrs []byte, st *ctDumpStats, fn func(*ctDumpEntry)) (interrupted bool, err error) {
	d.seq++
	seq := d.seq
	hdrLen := unix.SizeofNlMsghdr + nfgenmsgLen
	d.req = d.req[:0]
	d.req = binary.NativeEndian.AppendUint32(d.req, uint32(hdrLen+len(attrs)))
	d.req = binary.NativeEndian.AppendUint16(d.req, nfnlSubsysCTNetlink<<8|uint16(ipctnlMsgCTGet))
	d.req = binary.NativeEndian.AppendUint16(d.req, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	d.req = binary.NativeEndian.AppendUint32(d.req, seq)
	d.req = binary.NativeEndian.AppendUint32(d.req, 0) // port id: the kernel fills it in
	d.req = append(d.req, family, unix.NFNETLINK_V0, 0, 0)
	d.req = append(d.req, attrs...)
	if err := unix.Sendto(d.fd, d.req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, fmt.Errorf("send dump request: %w", err)
	}
	st.dumps++
	var e ctDumpEntry
	for {
		n, err := d.recv()
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EAGAIN) {
				return false, fmt.Errorf("receive dump: no answer within %v: %w", ctDumpTimeout, err)
			}
			return false, fmt.Errorf("receive dump: %w", err)
		}
		if n > len(d.buf) {
			return false, fmt.Errorf("receive dump: %d bytes: %w", n, errDumpTruncated)
		}
		b := d.buf[:n]
		for len(b) >= unix.SizeofNlMsghdr {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			typ := binary.NativeEndian.Uint16(b[4:6])
			flags := binary.NativeEndian.Uint16(b[6:8])
			mseq := binary.NativeEndian.Uint32(b[8:12])
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return false, fmt.Errorf("receive dump: message length %d of %d bytes: %w", l, len(b), errDumpMalformed)
			}
			body := b[unix.SizeofNlMsghdr:l]
			if al := nlmAlign(l); al < len(b) {
				b = b[al:]
			} else {
				b = nil
			}
			if mseq != seq {
				continue // an answer to an earlier request
			}
			if flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch typ {
			case unix.NLMSG_DONE:
				// The payload is the dump's final status (negative errno on failure).
				if len(body) >= 4 {
					if v := int32(binary.NativeEndian.Uint32(body)); v < 0 {
						return interrupted, fmt.Errorf("dump: %w", unix.Errno(-v))
					}
				}
				return interrupted, nil
			case unix.NLMSG_ERROR:
				if len(body) < 4 {
					return interrupted, fmt.Errorf("dump: short error message: %w", errDumpMalformed)
				}
				if v := int32(binary.NativeEndian.Uint32(body)); v < 0 {
					return interrupted, fmt.Errorf("dump: %w", unix.Errno(-v))
				}
				continue // an acknowledgement
			case unix.NLMSG_NOOP, unix.NLMSG_OVERRUN:
				continue
			}
			if typ>>8 != nfnlSubsysCTNetlink || len(body) < nfgenmsgLen {
				continue
			}
			st.entries++
			if decodeCTDumpEntry(&e, body); e.hasOrig {
				fn(&e)
			}
		}
	}
}

// recv reads one datagram into d.buf and returns its full length (MSG_TRUNC: larger than the
// buffer when it did not fit). A raw recvfrom without a source address: unix.Recvfrom would
// allocate one per call, and a dump of a large table takes thousands of calls.
func (d *ctDump) recv() (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(d.fd), uintptr(unsafe.Pointer(&d.buf[0])),
		uintptr(len(d.buf)), unix.MSG_TRUNC, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// decodeCTDumpEntry fills e from one ctnetlink entry message body (nfgenmsg, attributes). It
// reads only the tuples and the helper name and never fails: what it cannot read stays zero.
func decodeCTDumpEntry(e *ctDumpEntry, body []byte) {
	*e = ctDumpEntry{family: body[0]}
	forEachAttr(body[nfgenmsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case dumpCTATupleOrig:
			e.orig, e.proto, e.hasOrig = decodeDumpTuple(v)
		case dumpCTATupleReply:
			e.reply, _, e.hasRep = decodeDumpTuple(v)
		case dumpCTAHelp:
			forEachAttr(v, func(typ uint16, v []byte) {
				if typ == dumpCTAHelpName {
					if i := bytes.IndexByte(v, 0); i >= 0 {
						v = v[:i]
					}
					e.helper = v
				}
			})
		}
	})
}

// decodeDumpTuple reads a CTA_TUPLE_* nest: addresses, protocol and ports.
func decodeDumpTuple(b []byte) (t Tuple, proto uint8, ok bool) {
	var src, dst netip.Addr
	var sport, dport uint16
	forEachAttr(b, func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleIP:
			forEachAttr(v, func(typ uint16, v []byte) {
				v4 := typ == ctaIPv4Src || typ == ctaIPv4Dst
				v6 := typ == ctaIPv6Src || typ == ctaIPv6Dst
				if !(v4 && len(v) == 4 || v6 && len(v) == 16) {
					return
				}
				a, _ := netip.AddrFromSlice(v)
				if typ == ctaIPv4Src || typ == ctaIPv6Src {
					src = a
				} else {
					dst = a
				}
			})
		case ctaTupleProto:
			forEachAttr(v, func(typ uint16, v []byte) {
				switch {
				case typ == ctaProtoNum && len(v) == 1:
					proto = v[0]
				case typ == ctaProtoSrc && len(v) == 2:
					sport = binary.BigEndian.Uint16(v)
				case typ == ctaProtoDst && len(v) == 2:
					dport = binary.BigEndian.Uint16(v)
				}
			})
		}
	})
	t = Tuple{Src: netip.AddrPortFrom(src, sport), Dst: netip.AddrPortFrom(dst, dport)}
	return t, proto, src.IsValid() && dst.IsValid()
}

// forEachAttr calls fn for each netlink attribute in b (type without the nested and byte-order
// flags); it stops at the first malformed one.
func forEachAttr(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < unix.SizeofNlAttr || l > len(b) {
			return
		}
		fn(typ, b[unix.SizeofNlAttr:l])
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al >= len(b) {
			return
		}
		b = b[al:]
	}
}
