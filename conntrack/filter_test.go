package conntrack

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
)

// filterVM assembles the event filter for ports and loads it, disassembled from the raw
// program the socket gets, into x/net/bpf's interpreter.
func filterVM(t testing.TB, ports ...uint16) *bpf.VM {
	t.Helper()
	raw, err := eventFilterProgram(ports)
	if err != nil {
		t.Fatalf("eventFilterProgram(%v): %v", ports, err)
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatalf("the event filter does not disassemble: %v", insns)
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatalf("bpf.NewVM: %v", err)
	}
	return vm
}

// kept runs the filter on msg and reports whether the kernel would queue it whole.
func kept(t testing.TB, vm *bpf.VM, msg []byte) bool {
	t.Helper()
	n, err := vm.Run(msg)
	if err != nil {
		t.Fatalf("filter run: %v", err)
	}
	switch n {
	case filterKeep:
		return true
	case filterDrop:
		return false
	}
	t.Fatalf("filter verdict %d: neither keep nor drop (a partial length would truncate the message)", n)
	return false
}

// readEvent reads a captured event message: '#' lines are comments, the rest is hex.
func readEvent(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "events", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var h strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
			h.WriteString(line)
		}
	}
	b, err := hex.DecodeString(h.String())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// requireLittleEndian skips golden tests on big-endian hosts: the captured messages carry the
// capturing host's (little-endian) byte order in their netlink headers.
func requireLittleEndian(t testing.TB) {
	t.Helper()
	if hostU16(1) != 1<<8 {
		t.Skip("golden event messages were captured on a little-endian host")
	}
}

// decodeWanted is the userspace verdict: the message decodes to an event that f selects.
func decodeWanted(msg []byte, f EventFilter) bool {
	var m netlink.Message
	if err := m.UnmarshalBinary(msg); err != nil {
		return false
	}
	ev, ok := decodeEvent(m)
	return ok && f.wants(ev)
}

// TestEventFilterGolden runs the filter on event messages captured from Linux 6.18 (see
// TestCaptureEvents), and checks it agrees with userspace decoding of the same messages.
func TestEventFilterGolden(t *testing.T) {
	requireLittleEndian(t)
	for _, tc := range []struct {
		name  string
		ports []uint16
		want  bool
	}{
		{name: "new_master", ports: []uint16{21}, want: true},
		{name: "new_nomaster", ports: []uint16{21}, want: false},
		{name: "new_plain", ports: []uint16{21}, want: false},
		{name: "new_plain", ports: []uint16{80}, want: false}, // ports select destroys only
		{name: "destroy_21", ports: []uint16{21}, want: true},
		{name: "destroy_21", ports: []uint16{2121, 21, 990}, want: true},
		{name: "destroy_21", ports: []uint16{20, 22}, want: false},
		{name: "destroy_80", ports: []uint16{21}, want: false},
		{name: "destroy_80", ports: []uint16{21, 80}, want: true},
		// DESTROY messages carry no CTA_HELP: the carrier helper cannot select them.
		{name: "destroy_carrier990", ports: []uint16{21}, want: false},
		{name: "destroy_carrier990", ports: []uint16{990}, want: true},
		{name: "destroy_fwd2121", ports: []uint16{21}, want: true},   // reply source port
		{name: "destroy_fwd2121", ports: []uint16{2121}, want: true}, // original destination port
		{name: "destroy_data", ports: []uint16{21}, want: false},
	} {
		for _, fam := range []string{"ipv4", "ipv6"} {
			name := fam + "_" + tc.name
			t.Run(fmt.Sprintf("%s/ports=%v", name, tc.ports), func(t *testing.T) {
				msg := readEvent(t, name)
				if got := kept(t, filterVM(t, tc.ports...), msg); got != tc.want {
					t.Errorf("filter(ports %v) keeps %s = %v, want %v", tc.ports, name, got, tc.want)
				}
				if got := decodeWanted(msg, EventFilter{Ports: tc.ports}); got != tc.want {
					t.Errorf("userspace (ports %v) wants %s = %v, want %v", tc.ports, name, got, tc.want)
				}
			})
		}
	}
}

// Message builder for synthetic events, in host byte order like the kernel writes them.

type nlattr struct {
	typ      uint16
	data     []byte
	children []nlattr
}

func attr(typ uint16, data ...byte) nlattr { return nlattr{typ: typ, data: data} }
func nest(typ uint16, children ...nlattr) nlattr {
	return nlattr{typ: typ | 0x8000, children: children}
}
func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func (a nlattr) append(b []byte) []byte {
	start := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, a.typ)
	b = append(b, a.data...)
	for _, c := range a.children {
		b = c.append(b)
	}
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// ctMessage builds a ctnetlink message of type msgType (IPCTNL_MSG_CT_*) of subsystem subsys.
func ctMessage(subsys, msgType uint8, attrs ...nlattr) []byte {
	b := make([]byte, 16, 256)
	binary.NativeEndian.PutUint16(b[4:], uint16(subsys)<<8|uint16(msgType))
	b = append(b, 2, 0, 0, 0) // nfgenmsg: AF_INET, version 0, res_id 0
	for _, a := range attrs {
		b = a.append(b)
	}
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	return b
}

// tuple4 is a CTA_TUPLE_* nest of an IPv4 tuple with protocol proto.
func tuple4(typ uint16, proto uint8, sport, dport uint16, extra ...nlattr) nlattr {
	return nest(typ, append([]nlattr{
		nest(1, attr(1, 192, 0, 2, 1), attr(2, 198, 51, 100, 1)),
		nest(2, attr(1, proto), attr(2, be16(sport)...), attr(3, be16(dport)...)),
	}, extra...)...)
}

// TestEventFilterSynthetic covers what the captures do not: other protocols, attributes the
// kernel adds on some routers, lists longer than the bounded walk, malformed messages.
func TestEventFilterSynthetic(t *testing.T) {
	const (
		ctNew, ctDelete  = 0, 2
		ctnl, ctnlExp    = 1, 2
		tcp, udp         = 6, 17
		orig, reply      = 1, 2
		master           = 14
		zone, status, id = 18, 3, 12
	)
	filler := func(n int) []nlattr {
		var a []nlattr
		for range n {
			a = append(a, attr(id, 0, 0, 0, 1))
		}
		return a
	}
	newWith := func(proto uint8, rest ...nlattr) []byte {
		return ctMessage(ctnl, ctNew, append([]nlattr{tuple4(orig, proto, 40000, 50000), tuple4(reply, proto, 50000, 40000)}, rest...)...)
	}
	del := func(proto uint8, odport, rsport uint16, rest ...nlattr) []byte {
		return ctMessage(ctnl, ctDelete, append([]nlattr{tuple4(orig, proto, 40000, odport), tuple4(reply, proto, rsport, 40000)}, rest...)...)
	}
	masterTuple := tuple4(master, tcp, 40001, 21)
	for _, tc := range []struct {
		name string
		msg  []byte
		want bool
	}{
		{name: "new tcp master", msg: newWith(tcp, attr(status, 0, 0, 1, 0x89), masterTuple), want: true},
		{name: "new udp master", msg: newWith(udp, masterTuple), want: false},
		{name: "new no master", msg: newWith(tcp, attr(status, 0, 0, 1, 0x88)), want: false},
		{name: "new no attributes", msg: ctMessage(ctnl, ctNew), want: false},
		{name: "new master after zone and 10 more", msg: newWith(tcp, append(append([]nlattr{attr(zone, 0, 7)}, filler(10)...), masterTuple)...), want: true},
		{name: "new master beyond the walk", msg: newWith(tcp, append(filler(20), masterTuple)...), want: true},
		{name: "new long list without master", msg: newWith(tcp, filler(20)...), want: true}, // undecided: userspace drops it
		{name: "destroy tcp 21", msg: del(tcp, 21, 21), want: true},
		{name: "destroy tcp reply 21", msg: del(tcp, 2121, 21), want: true},
		{name: "destroy tcp 80", msg: del(tcp, 80, 80), want: false},
		{name: "destroy udp 21", msg: del(udp, 21, 21), want: false},
		{name: "destroy tcp 21 tuple zone", msg: ctMessage(ctnl, ctDelete, tuple4(orig, tcp, 40000, 21, attr(3, 0, 7)), tuple4(reply, tcp, 21, 40000, attr(3, 0, 7))), want: true},
		{name: "destroy tcp 80 tuple zone", msg: ctMessage(ctnl, ctDelete, tuple4(orig, tcp, 40000, 80, attr(3, 0, 7)), tuple4(reply, tcp, 80, 40000, attr(3, 0, 7))), want: false},
		{name: "destroy reply missing", msg: ctMessage(ctnl, ctDelete, tuple4(orig, tcp, 40000, 80)), want: true}, // undecided
		{name: "destroy no tuples", msg: ctMessage(ctnl, ctDelete, attr(id, 0, 0, 0, 1)), want: true},             // undecided
		{name: "expectation event", msg: ctMessage(ctnlExp, ctNew, attr(1)), want: true},                          // not filtered here
		{name: "update-like type", msg: ctMessage(ctnl, 1), want: true},
		{name: "runt", msg: []byte{16, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, want: true},
		{name: "zero nla_len", msg: append(ctMessage(ctnl, ctDelete), 0, 0, 1, 0, 0, 0, 0, 0), want: true},
		{name: "truncated attribute", msg: append(ctMessage(ctnl, ctDelete), 200, 0, 1, 0x80, 8, 0, 1, 0), want: false}, // the kernel stops at the read past the end
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := kept(t, filterVM(t, 21, 2100), tc.msg); got != tc.want {
				t.Errorf("filter keeps %q = %v, want %v\n%s", tc.name, got, tc.want, hex.Dump(tc.msg))
			}
		})
	}
}

func TestEventFilterPorts(t *testing.T) {
	requireLittleEndian(t)
	msg := readEvent(t, "ipv4_destroy_80")
	many := make([]uint16, 0, 1000)
	for p := range uint16(1000) {
		many = append(many, 1000+p)
	}
	if got := kept(t, filterVM(t, append(many, 80)...), msg); !got {
		t.Errorf("filter with %d ports drops a destroy on port 80 in the list", len(many)+1)
	}
	if got := kept(t, filterVM(t, many...), msg); got {
		t.Errorf("filter with %d ports keeps a destroy on port 80 not in the list", len(many))
	}
	dup := []uint16{80, 21, 80, 21}
	a, _ := eventFilterProgram(dup)
	b, _ := eventFilterProgram([]uint16{21, 80})
	if len(a) != len(b) {
		t.Errorf("duplicate ports make %d instructions, want %d", len(a), len(b))
	}
	all := make([]uint16, 0, 65535)
	for p := 1; p <= 65535; p++ {
		all = append(all, uint16(p))
	}
	if _, err := eventFilterProgram(all); !errors.Is(err, errTooManyPorts) {
		t.Errorf("eventFilterProgram(65535 ports) = %v, want errTooManyPorts", err)
	}
}

// FuzzEventFilter checks the filter's one promise on any input: it never drops a message that
// userspace would deliver, and it never truncates one.
func FuzzEventFilter(f *testing.F) {
	if hostU16(1) == 1<<8 {
		for _, fam := range []string{"ipv4", "ipv6"} {
			for _, n := range []string{"new_master", "new_nomaster", "new_plain", "destroy_21", "destroy_80", "destroy_carrier990", "destroy_fwd2121", "destroy_data"} {
				f.Add(readEvent(f, fam+"_"+n))
			}
		}
	}
	f.Add(ctMessage(1, 2))
	vm := filterVM(f, 21)
	filter := EventFilter{Ports: []uint16{21}}
	f.Fuzz(func(t *testing.T, msg []byte) {
		got := kept(t, vm, msg)
		if !got && decodeWanted(msg, filter) {
			t.Errorf("filter drops a message userspace delivers:\n%s", hex.Dump(msg))
		}
	})
}
