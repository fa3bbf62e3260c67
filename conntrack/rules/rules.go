package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// Defaults applied to a zero Config field.
const (
	DefaultTable  = "ftpalg"
	DefaultHelper = "ftpalg-carrier"
)

// Names of the objects inside the table. Tests and operators refer to them.
const (
	SetPorts            = "ports"
	ChainPrerouting     = "prerouting"
	ChainOutputHelper   = "output_helper"
	ChainForward        = "forward"
	ChainInput          = "input"
	ChainOutput         = "output"
	ChainControl        = "control"
	ChainNATPrerouting  = "nat_prerouting"
	ChainNATInput       = "nat_input"
	ChainNATOutput      = "nat_output"
	ChainNATPostrouting = "nat_postrouting"
)

// QueuePriority is the priority of the queue chains: after conntrack (-200) and
// destination NAT (-100), before the usual filter chains (0) and source NAT (100).
// doc.go explains the choice.
const QueuePriority = -10

// carrierHelperType is the kernel conntrack helper used as the inert carrier.
const carrierHelperType = "sane"

// NFQUEUE xtables target, revision 3 (struct xt_NFQ_info_v3).
const (
	nfqueueTarget   = "NFQUEUE"
	nfqueueRev      = 3
	nfqFlagBypass   = 0x01
	nfqInfoSize     = 8 // 3 × u16, padded to the 8-byte XT_ALIGN the kernel checks
	loopbackIfname  = "lo"
	ifnameSize      = unix.IFNAMSIZ
	tcpDportOffset  = 2
	tcpSportOffset  = 0
	tcpPortLen      = 2
	objTypeCtHelper = unix.NFT_OBJECT_CT_HELPER
)

// Config describes the table ftpalg installs.
type Config struct {
	Table    string   // default "ftpalg"; family inet (IPv4 and IPv6)
	Ports    []uint16 // control ports, e.g. 21
	Queue    uint16   // first queue number
	Queues   uint16   // number of queues (≥1, 0 means 1); >1 balances over Queue..Queue+Queues-1
	FailOpen bool     // NFQ_FLAG_BYPASS: accept when no program listens on the queue
	Helper   string   // carrier ct helper object name, default "ftpalg-carrier"
	// SkipLabel is the conntrack label bit that marks a control connection whose packets are
	// no longer queued (TLS passthrough, over limits): 0 means DefaultSkipLabel, a negative
	// value no such rule. The daemon sets the bit with conntrack's SetLabel.
	SkipLabel int
	// QueuePureACKs queues pure ACKs too (see doc.go "What is not queued"); by default they
	// pass without a queue traversal.
	QueuePureACKs bool
}

// DefaultSkipLabel is the label bit of Config.SkipLabel: the highest of the kernel's 128
// (XT_CONNLABEL_MAXBIT), the one least likely to collide with an operator's own labels,
// which connlabel.conf numbers from 0 up.
const DefaultSkipLabel = 127

// maxLabel is the highest conntrack label bit (NF_CT_LABELS_MAX_SIZE * 8 - 1).
const maxLabel = 127

// pureACKDoffs are the TCP header lengths (in 32-bit words) whose pure ACKs are let through
// without a queue traversal: no options, and the timestamps option that Linux and most stacks
// send on every segment. A pure ACK with other options (SACK blocks) or an IPv4 header with
// options is still queued: harmless, only the cost of a traversal.
var pureACKDoffs = []uint8{5, 8}

// Errors Install returns for a configuration it cannot install.
var (
	ErrNoPorts    = errors.New("no control ports")
	errPortZero   = errors.New("port 0 is not a control port")
	errQueueRange = errors.New("queue range exceeds 65535")
	errLabelRange = errors.New("conntrack label bits are 0-127")
	errBadName    = errors.New("name must be 1-255 characters of letters, digits, '-', '_' or '.'")
	// ErrNoHelper: the kernel has no "sane" conntrack helper for the carrier.
	ErrNoHelper = errors.New(`conntrack helper "sane" unavailable (CONFIG_NF_CONNTRACK_SANE, module nf_conntrack_sane)`)
)

// normalized returns cfg with defaults applied and the ports sorted and deduplicated.
func (cfg Config) normalized() Config {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Helper == "" {
		cfg.Helper = DefaultHelper
	}
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.SkipLabel == 0 {
		cfg.SkipLabel = DefaultSkipLabel
	}
	ports := slices.Clone(cfg.Ports)
	slices.Sort(ports)
	cfg.Ports = slices.Compact(ports)
	return cfg
}

// validate checks a normalized Config.
func (cfg Config) validate() error {
	if len(cfg.Ports) == 0 {
		return ErrNoPorts
	}
	if cfg.Ports[0] == 0 {
		return errPortZero
	}
	if cfg.SkipLabel > maxLabel {
		return fmt.Errorf("label bit %d: %w", cfg.SkipLabel, errLabelRange)
	}
	if int(cfg.Queue)+int(cfg.Queues)-1 > 0xffff {
		return fmt.Errorf("queue %d, %d queues: %w", cfg.Queue, cfg.Queues, errQueueRange)
	}
	for _, n := range []string{cfg.Table, cfg.Helper} {
		if !validName(n) {
			return fmt.Errorf("%q: %w", n, errBadName)
		}
	}
	return nil
}

// validName keeps table and object names to what nft accepts unquoted, so that Render's
// text and the installed table agree.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case (r >= '0' && r <= '9') || r == '-' || r == '_' || r == '.':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// Render returns the ruleset as `nft -f` text: what Install installs, in one
// transaction (nft -f loads a file as one batch). The queue rules use the native queue
// statement, the closest text form of the xtables NFQUEUE target Install writes; a
// comment in the text says so.
func Render(cfg Config) string {
	cfg = cfg.normalized()
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	ports := make([]string, len(cfg.Ports))
	for i, p := range cfg.Ports {
		ports[i] = strconv.Itoa(int(p))
	}
	queue := renderQueue(cfg)

	w("# ftpalg: FTP control-channel rules (nftables table inet %s)\n", cfg.Table)
	w("# Installed through netlink as one batch that also replaces a stale table of this name.\n")
	w("# The queue rules are installed as the xtables NFQUEUE target (nft_compat, revision 3);\n")
	w("# %q is its closest nft text form, which needs a kernel with nft_queue\n", queue)
	w("# (CONFIG_NFT_QUEUE) to load from this text. nft lists the installed rules as that\n")
	w("# statement or as an xt target, depending on the nft version.\n")
	w("table inet %s\n", cfg.Table)
	w("delete table inet %s\n", cfg.Table)
	w("table inet %s {\n", cfg.Table)
	// The order is nft's listing order, so that the text compares with `nft list table`.
	w("\tct helper %s {\n\t\ttype %q protocol tcp\n\t\tl3proto inet\n\t}\n\n", cfg.Helper, carrierHelperType)
	w("\tset %s {\n\t\ttype inet_service\n", SetPorts)
	if len(ports) > 0 {
		w("\t\telements = { %s }\n", strings.Join(ports, ", "))
	}
	w("\t}\n")
	for _, c := range chains(cfg) {
		w("\n\tchain %s {\n", c.name)
		if c.hooknum == nil {
			// A regular chain: no type line.
		} else if c.nat {
			w("\t\ttype nat hook %s priority %s; policy accept;\n", c.hook, renderNATPriority(c.hook, c.priority))
		} else {
			w("\t\ttype filter hook %s priority %s; policy accept;\n", c.hook, renderPriority(c.priority))
		}
		for _, r := range c.rules {
			w("\t\t%s\n", r.text(cfg, queue))
		}
		w("\t}\n")
	}
	w("}\n")
	return b.String()
}

func renderQueue(cfg Config) string {
	s := "queue num " + strconv.Itoa(int(cfg.Queue))
	if cfg.Queues > 1 {
		s += "-" + strconv.Itoa(int(cfg.Queue)+int(cfg.Queues)-1)
	}
	if cfg.FailOpen {
		s += " bypass"
	}
	return s
}

// renderNATPriority names the standard NAT priorities as nft lists them: by name only at
// the hooks where nft accepts the name (dstnat at prerouting, srcnat at postrouting).
func renderNATPriority(hook string, p int32) string {
	switch {
	case hook == "prerouting" && p == natDstPriority:
		return "dstnat"
	case hook == "postrouting" && p == natSrcPriority:
		return "srcnat"
	}
	return strconv.Itoa(int(p))
}

func renderPriority(p int32) string {
	switch {
	case p == 0:
		return "filter"
	case p < 0:
		return fmt.Sprintf("filter - %d", -p)
	default:
		return fmt.Sprintf("filter + %d", p)
	}
}

// ruleKind names the few rules of the table; the text and the expressions of each are
// written side by side so that Render and Install cannot drift apart unnoticed.
type ruleKind int

const (
	ruleCarrier       ruleKind = iota
	ruleToControl              // a control-port packet, original direction: goto control
	ruleToControlRepl          // reply direction
	ruleSkipLabel              // a connection the daemon marked: return (not queued)
	rulePureACK4               // an IPv4 pure ACK: return
	rulePureACK6               // an IPv6 pure ACK: return
	ruleQueue                  // the queue
)

type rule struct {
	kind     ruleKind
	skipLoIn bool  // input chain: skip packets arriving on lo
	doff     uint8 // rulePureACK4/6: the TCP header length in 32-bit words
}

func (r rule) text(cfg Config, queue string) string {
	var s string
	if r.skipLoIn {
		s = fmt.Sprintf("iifname != %q ", loopbackIfname)
	}
	switch r.kind {
	case ruleCarrier:
		s += fmt.Sprintf("ct state new tcp dport @%s ct helper set %q", SetPorts, cfg.Helper)
	case ruleToControl:
		s += fmt.Sprintf("tcp dport @%s goto %s", SetPorts, ChainControl)
	case ruleToControlRepl:
		s += fmt.Sprintf("tcp sport @%s goto %s", SetPorts, ChainControl)
	case ruleSkipLabel:
		s += fmt.Sprintf("ct label %d return", cfg.SkipLabel)
	case rulePureACK4:
		s += fmt.Sprintf("tcp flags ! fin,syn,rst ip hdrlength 5 tcp doff %d ip length %d return", r.doff, 20+4*int(r.doff))
	case rulePureACK6:
		s += fmt.Sprintf("tcp flags ! fin,syn,rst tcp doff %d ip6 length %d return", r.doff, 4*int(r.doff))
	case ruleQueue:
		s += queue
	}
	return s
}

type chainSpec struct {
	nat      bool // an empty NAT chain (see natChains)
	name     string
	hook     string
	hooknum  *nftables.ChainHook
	priority int32
	rules    []rule
}

func chains(cfg Config) []chainSpec {
	carrier := []rule{{kind: ruleCarrier}}
	queue := func(skipLo bool) []rule {
		return []rule{
			{kind: ruleToControl, skipLoIn: skipLo},
			{kind: ruleToControlRepl, skipLoIn: skipLo},
		}
	}
	// The control chain decides, for a packet of a control connection, whether it is
	// queued. The base chains reach it with goto: its return ends the base chain (policy
	// accept), so a packet that returns is not queued.
	var control []rule
	if cfg.SkipLabel >= 0 {
		control = append(control, rule{kind: ruleSkipLabel})
	}
	if !cfg.QueuePureACKs {
		for _, d := range pureACKDoffs {
			control = append(control, rule{kind: rulePureACK4, doff: d})
		}
		for _, d := range pureACKDoffs {
			control = append(control, rule{kind: rulePureACK6, doff: d})
		}
	}
	control = append(control, rule{kind: ruleQueue})
	return []chainSpec{
		// First: the base chains' rules jump to it, and it must exist before them in the batch.
		{name: ChainControl, rules: control},
		{name: ChainPrerouting, hook: "prerouting", hooknum: nftables.ChainHookPrerouting, rules: carrier},
		{name: ChainOutputHelper, hook: "output", hooknum: nftables.ChainHookOutput, rules: carrier},
		{name: ChainForward, hook: "forward", hooknum: nftables.ChainHookForward, priority: QueuePriority, rules: queue(false)},
		{name: ChainInput, hook: "input", hooknum: nftables.ChainHookInput, priority: QueuePriority, rules: queue(true)},
		{name: ChainOutput, hook: "output", hooknum: nftables.ChainHookOutput, priority: QueuePriority, rules: queue(false)},
		// Empty NAT chains. The kernel applies NAT only at hooks where some NAT chain is
		// registered in the namespace, and that includes the NAT a pinhole carries
		// (nat-follow-master): on a router whose own ruleset has only a postrouting masquerade,
		// the DNAT of an active-mode data connection to the inside client would silently not
		// happen. These chains register the four NAT hooks; with no rules they translate
		// nothing and let the operator's NAT chains decide.
		{nat: true, name: ChainNATPrerouting, hook: "prerouting", hooknum: nftables.ChainHookPrerouting, priority: natDstPriority},
		{nat: true, name: ChainNATInput, hook: "input", hooknum: nftables.ChainHookInput, priority: natSrcPriority},
		{nat: true, name: ChainNATOutput, hook: "output", hooknum: nftables.ChainHookOutput, priority: natDstPriority},
		{nat: true, name: ChainNATPostrouting, hook: "postrouting", hooknum: nftables.ChainHookPostrouting, priority: natSrcPriority},
	}
}

// Standard NAT priorities (nft's dstnat and srcnat).
const (
	natDstPriority = -100
	natSrcPriority = 100
)

// exprs returns the expressions of r, the netlink form of r.text.
func (r rule) exprs(cfg Config, set *nftables.Set) []expr.Any {
	var e []expr.Any
	if r.skipLoIn {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(loopbackIfname)},
		)
	}
	tcpPort := func(offset uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: tcpPortLen},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		}
	}
	switch r.kind {
	case ruleCarrier:
		e = append(e,
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{
				SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW),
				Xor:  binaryutil.NativeEndian.PutUint32(0),
			},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		)
		e = append(e, tcpPort(tcpDportOffset)...)
		e = append(e, &expr.Objref{Type: objTypeCtHelper, Name: cfg.Helper})
	case ruleToControl, ruleToControlRepl:
		// By port alone, not by conntrack direction: after `conntrack -F` (or a conntrack
		// table that lost the entry) the kernel picks a live connection up from whichever
		// packet comes next, and a server's packet then makes the server→client direction the
		// "original" one. The packets of a connection whose stream ftpalg resized must keep
		// reaching it whatever conntrack thinks.
		off := uint32(tcpDportOffset)
		if r.kind == ruleToControlRepl {
			off = tcpSportOffset
		}
		e = append(e, tcpPort(off)...)
		e = append(e, &expr.Verdict{Kind: expr.VerdictGoto, Chain: ChainControl})
	case ruleSkipLabel:
		mask := make([]byte, labelLen)
		mask[cfg.SkipLabel/8] = 1 << (cfg.SkipLabel % 8)
		e = append(e,
			&expr.Ct{Key: expr.CtKeyLABELS, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: labelLen, Mask: mask, Xor: make([]byte, labelLen)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, labelLen)},
			&expr.Verdict{Kind: expr.VerdictReturn},
		)
	case rulePureACK4, rulePureACK6:
		// The expressions nft itself generates for the text form, in its order, so that
		// `nft list` prints Render's text: TCP, no SYN/FIN/RST, then a header of doff words
		// and a datagram of exactly the headers.
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsOffset, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFIN | tcpSYN | tcpRST}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		)
		doff := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpDoffOffset, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0xf0}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.doff << 4}},
		}
		nfproto := func(p byte) []expr.Any {
			return []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
			}
		}
		length := func(off uint32, n int) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(n))},
			}
		}
		if r.kind == rulePureACK4 {
			e = append(e, nfproto(unix.NFPROTO_IPV4)...)
			e = append(e,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x0f}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{5}},
			)
			e = append(e, doff...)
			e = append(e, length(ipv4LenOffset, 20+4*int(r.doff))...)
		} else {
			e = append(e, doff...)
			e = append(e, nfproto(unix.NFPROTO_IPV6)...)
			e = append(e, length(ipv6LenOffset, 4*int(r.doff))...)
		}
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case ruleQueue:
		e = append(e, nfqueueExpr(cfg))
	}
	return e
}

// Header fields of the pure-ACK rules, and the size of the conntrack label area.
const (
	tcpFlagsOffset = 13
	tcpDoffOffset  = 12
	tcpFIN         = 0x01
	tcpSYN         = 0x02
	tcpRST         = 0x04
	ipv4LenOffset  = 2
	ipv6LenOffset  = 4
	labelLen       = 16
)

// nfqueueExpr is the xtables NFQUEUE target, revision 3.
func nfqueueExpr(cfg Config) *expr.Target {
	info := make(xt.Unknown, nfqInfoSize)
	binary.NativeEndian.PutUint16(info[0:], cfg.Queue)
	binary.NativeEndian.PutUint16(info[2:], cfg.Queues)
	var flags uint16
	if cfg.FailOpen {
		flags |= nfqFlagBypass
	}
	binary.NativeEndian.PutUint16(info[4:], flags)
	return &expr.Target{Name: nfqueueTarget, Rev: nfqueueRev, Info: &info}
}

func ifname(s string) []byte {
	b := make([]byte, ifnameSize)
	copy(b, s)
	return b
}

func table(cfg Config) *nftables.Table {
	return &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
}

// queueBatch buffers on c the whole table: a stale table of that name is deleted first
// (adding an existing table is a no-op, so add+delete never fails), all in c's batch.
func queueBatch(c *nftables.Conn, cfg Config) error {
	t := table(cfg)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	set := &nftables.Set{Table: t, Name: SetPorts, KeyType: nftables.TypeInetService}
	elems := make([]nftables.SetElement, len(cfg.Ports))
	for i, p := range cfg.Ports {
		elems[i] = nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)}
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("add set %s: %w", SetPorts, err)
	}
	c.AddObj(&nftables.NamedObj{
		Table: t,
		Name:  cfg.Helper,
		Type:  nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{
			Name:    carrierHelperType,
			L3Proto: unix.NFPROTO_INET,
			L4Proto: unix.IPPROTO_TCP,
		},
	})
	accept := nftables.ChainPolicyAccept
	for _, cs := range chains(cfg) {
		typ := nftables.ChainTypeFilter
		if cs.nat {
			typ = nftables.ChainTypeNAT
		}
		chain := &nftables.Chain{
			Name:     cs.name,
			Table:    t,
			Type:     typ,
			Hooknum:  cs.hooknum,
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(cs.priority)),
			Policy:   &accept,
		}
		if cs.hooknum == nil {
			chain = &nftables.Chain{Name: cs.name, Table: t}
		}
		ch := c.AddChain(chain)
		for _, r := range cs.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs(cfg, set)})
		}
	}
	return nil
}

// Install installs the table in one atomic batch, replacing a stale table of the same
// name. When the batch fails with ENOENT and the cause is the missing "sane" helper
// (module nf_conntrack_sane), Install runs `modprobe nf_conntrack_sane` and tries once
// more; if that fails too the error wraps ErrNoHelper.
func Install(cfg Config) error {
	cfg = cfg.normalized()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("install table inet %s: %w", cfg.Table, err)
	}
	err := install(cfg)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("install table inet %s: %w", cfg.Table, err)
	}
	if perr := probeHelper(cfg); !errors.Is(perr, unix.ENOENT) {
		return fmt.Errorf("install table inet %s: %w (the kernel lacks an nftables feature "+
			"ftpalg needs: nft_compat with the xt NFQUEUE target, nft ct or nft lookup)", cfg.Table, err)
	}
	out, mpErr := exec.Command("modprobe", saneModule).CombinedOutput()
	if mpErr != nil {
		return fmt.Errorf("install table inet %s: %w: modprobe %s: %v: %s (%w)",
			cfg.Table, ErrNoHelper, saneModule, mpErr, strings.TrimSpace(string(out)), err)
	}
	if err := install(cfg); err != nil {
		if errors.Is(probeHelper(cfg), unix.ENOENT) {
			return fmt.Errorf("install table inet %s after modprobe %s: %w (%w)", cfg.Table, saneModule, ErrNoHelper, err)
		}
		return fmt.Errorf("install table inet %s after modprobe %s: %w", cfg.Table, saneModule, err)
	}
	return nil
}

// saneModule provides the "sane" conntrack helper.
const saneModule = "nf_conntrack_sane"

func install(cfg Config) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	if err := queueBatch(c, cfg); err != nil {
		return err
	}
	return c.Flush()
}

// probeHelper creates, in a batch that leaves nothing behind, a scratch table holding
// only a carrier helper object, and returns the kernel's answer (ENOENT: no "sane"
// helper).
func probeHelper(cfg Config) error { return ProbeHelper(cfg.Helper, carrierHelperType) }

// ProbeHelper asks the kernel whether a conntrack helper of type typ exists, in one batch
// that creates a scratch table holding a ct helper object of that type named name and deletes
// it again: nothing is left behind, and the kernel loads the helper's module on demand. nil:
// it exists; ENOENT: no such helper. The scratch table is created exclusively, so that a table
// of that name, were there one, is left alone (the probe then fails with EEXIST).
func ProbeHelper(name, typ string) error {
	c, err := nftables.New()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: fmt.Sprintf("ftpalg-probe-%d", os.Getpid()), Family: nftables.TableFamilyINet}
	c.CreateTable(t)
	c.AddObj(&nftables.NamedObj{
		Table: t, Name: name, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: typ, L3Proto: unix.NFPROTO_INET, L4Proto: unix.IPPROTO_TCP},
	})
	c.DelTable(t)
	return c.Flush()
}

// Remove deletes the table. A missing table is not an error.
func Remove(cfg Config) error {
	cfg = cfg.normalized()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove table inet %s: %w", cfg.Table, err)
	}
	t := table(cfg)
	c.AddTable(t) // no-op when present; makes the delete succeed when absent
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove table inet %s: %w", cfg.Table, err)
	}
	return nil
}

// Installed reports whether the table exists (whatever it contains).
func Installed(cfg Config) (bool, error) {
	cfg = cfg.normalized()
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == cfg.Table {
			return true, nil
		}
	}
	return false, nil
}
