package conntrack

import (
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

var captureEvents = flag.Bool("capture-events", false, "capture ctnetlink event messages from the running kernel into testdata/events")

// rawEventSocket is a ctnetlink event socket opened with plain syscalls, independent of the
// netlink libraries, so that the captured bytes are exactly what the kernel queued.
type rawEventSocket struct{ fd int }

func openRawEventSocket(t testing.TB, groups ...uint32) *rawEventSocket {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("netlink socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		t.Fatalf("bind netlink: %v", err)
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			t.Fatalf("join group %d: %v", g, err)
		}
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatalf("rcvtimeo: %v", err)
	}
	return &rawEventSocket{fd: fd}
}

// drain returns every datagram queued until the socket stays empty for 200 ms.
func (s *rawEventSocket) drain(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EWOULDBLOCK {
			return out
		}
		if err != nil {
			t.Fatalf("recvfrom: %v", err)
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

// pick returns the one datagram whose decoded event is of type typ and whose original tuple
// matches orig (ports and addresses).
func pick(t testing.TB, msgs [][]byte, destroy bool, orig Tuple) []byte {
	t.Helper()
	var found [][]byte
	for _, b := range msgs {
		var m netlink.Message
		if err := m.UnmarshalBinary(b); err != nil {
			t.Fatalf("unmarshal netlink message: %v", err)
		}
		var ev ct.Event
		if err := ev.Unmarshal(m); err != nil || (ev.Type == ct.EventDestroy) != destroy || ev.Flow == nil {
			continue
		}
		got := Tuple{
			Src: netip.AddrPortFrom(ev.Flow.TupleOrig.IP.SourceAddress, ev.Flow.TupleOrig.Proto.SourcePort),
			Dst: netip.AddrPortFrom(ev.Flow.TupleOrig.IP.DestinationAddress, ev.Flow.TupleOrig.Proto.DestinationPort),
		}
		if got.unmap() == orig.unmap() {
			found = append(found, b)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d events (destroy %v) of %s among %d messages, want 1", len(found), destroy, orig, len(msgs))
	}
	return found[0]
}

// TestCaptureEvents records the event messages the unit tests of the filter replay. It runs
// only with -capture-events (as root): go test ./conntrack -run TestCaptureEvents -capture-events
func TestCaptureEvents(t *testing.T) {
	if !*captureEvents {
		t.Skip("run with -capture-events to record testdata/events from this kernel")
	}
	for _, fam := range []struct {
		name string
		ip   netip.Addr
	}{{"ipv4", lo4}, {"ipv6", lo6}} {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t)
			// A carrier on a port that is not a control port, and a port-forward to 21.
			l.nft(`add rule inet ftpalg_lab out tcp dport 990 ct helper set "sane"`)
			s := openRawEventSocket(t, 1, 3) // NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY
			uname := kernelRelease(t)
			save := func(name, what string, b []byte) {
				t.Helper()
				path := filepath.Join("testdata", "events", fam.name+"_"+name+".hex")
				text := fmt.Sprintf("# %s\n# captured from Linux %s by TestCaptureEvents\n%s\n", what, uname, hex.EncodeToString(b))
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}

			m := l.master(fam.ip, 21)
			plain := l.master(fam.ip, 80)
			carrier := l.master(fam.ip, 990)
			fwd, _ := l.connect(l.listeners[netip.AddrPortFrom(fam.ip, 21)], netip.AddrPortFrom(fam.ip, 2121))
			fwd = fwd.unmap()
			lnData := l.listen(netip.AddrPortFrom(fam.ip, 0))
			e := Expectation{Master: m, Src: fam.ip, Dst: netip.AddrPortFrom(fam.ip, portOf(lnData.Addr().String()))}
			if err := l.c.CreateExpect(e); err != nil {
				t.Fatal(err)
			}
			data, _ := l.connect(lnData, e.Dst)
			data = data.unmap()
			news := s.drain(t)
			save("new_master", "NEW of a data connection that used an expectation (CTA_TUPLE_MASTER present)", pick(t, news, false, data))
			save("new_nomaster", "NEW of a control connection to port 21 (carrier helper, no master)", pick(t, news, false, m))
			save("new_plain", "NEW of an unrelated connection to port 80", pick(t, news, false, plain))

			for _, tu := range []Tuple{m, plain, carrier, fwd, data} {
				l.run("", "conntrack", "-D", "-p", "tcp", "--orig-port-src", strconv.Itoa(int(tu.Src.Port())), "--orig-port-dst", strconv.Itoa(int(tu.Dst.Port())))
			}
			dels := s.drain(t)
			save("destroy_21", "DESTROY of a control connection to port 21 (carrier helper)", pick(t, dels, true, m))
			save("destroy_80", "DESTROY of an unrelated connection to port 80", pick(t, dels, true, plain))
			save("destroy_carrier990", "DESTROY of a connection to port 990 carrying the carrier helper", pick(t, dels, true, carrier))
			save("destroy_fwd2121", "DESTROY of a connection to port 2121 DNATed to 21 (reply source port 21)", pick(t, dels, true, fwd))
			save("destroy_data", "DESTROY of a data connection (it had a master)", pick(t, dels, true, data))
		})
	}
}

func portOf(hostport string) uint16 {
	i := strings.LastIndexByte(hostport, ':')
	p, _ := strconv.Atoi(hostport[i+1:])
	return uint16(p)
}

func kernelRelease(t testing.TB) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
