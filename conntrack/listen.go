package conntrack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// listenGroups are the ctnetlink multicast groups a Listener joins. Updates are not joined:
// they are by far the most frequent events and ftpalg needs none of them.
var listenGroups = []netfilter.NetlinkGroup{
	netfilter.GroupCTNew,
	netfilter.GroupCTDestroy,
	netfilter.GroupCTExpNew,
	netfilter.GroupCTExpDestroy,
}

// filteredGroups are the groups of a Listener with an EventFilter: no expectation events.
var filteredGroups = []netfilter.NetlinkGroup{
	netfilter.GroupCTNew,
	netfilter.GroupCTDestroy,
}

// listenReadBuffer is the receive buffer asked for the event socket: a burst of new
// connections on a busy router must not overflow it (ENOBUFS loses events).
const listenReadBuffer = 4 << 20

// Listener receives conntrack events on its own socket. Create it with Conn.Subscribe or
// Conn.SubscribeFiltered.
type Listener struct {
	sock      *netlink.Conn
	filter    EventFilter
	received  atomic.Uint64 // messages read from the socket
	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// Listen delivers events until ctx ends: a new conntrack entry whose master is set (a pinhole
// used), a TCP conntrack entry destroyed (forget the session), expectations of carrier masters
// created/destroyed, and EventsLost when the kernel dropped events. It runs its own socket
// (separate from the request socket) and returns nil when ctx ends.
//
// fn runs on Listen's goroutine; while it runs, events queue in the socket buffer.
//
// The kernel only reports the destruction of entries created while a listener was subscribed
// (net.netfilter.nf_conntrack_events = 2, the default, allocates the event extension at
// creation only when someone listens): use Subscribe before traffic flows to be sure the
// listener is in place.
func (c *Conn) Listen(ctx context.Context, fn func(Event)) error {
	l, err := c.Subscribe()
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Run(ctx, fn)
}

// Subscribe opens the event socket in c's network namespace and joins the event groups now, so
// that no event after Subscribe returns is missed. Run delivers them. It is
// SubscribeFiltered(EventFilter{}): every event Listen reports.
func (c *Conn) Subscribe() (*Listener, error) { return c.SubscribeFiltered(EventFilter{}) }

// SubscribeFiltered is Subscribe for the events f selects only. A non-zero f is enforced by a
// socket filter in the kernel (see EventFilter), so unwanted events never wake the listener
// nor fill its receive buffer. The filter is in place before any group is joined.
func (c *Conn) SubscribeFiltered(f EventFilter) (*Listener, error) {
	groups := listenGroups
	var prog []bpf.RawInstruction
	if !f.isZero() {
		var err error
		if prog, err = eventFilterProgram(f.Ports); err != nil {
			return nil, fmt.Errorf("subscribe to conntrack events: %w", err)
		}
		groups = filteredGroups
		if f.NewExpectations {
			groups = append(slices.Clone(groups), netfilter.GroupCTExpNew)
		}
		f.Ports = slices.Clone(f.Ports)
	}
	sock, err := c.dialSameNS()
	if err != nil {
		return nil, fmt.Errorf("subscribe to conntrack events: %w", err)
	}
	// Best effort: without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max.
	_ = sock.SetReadBuffer(listenReadBuffer)
	if prog != nil {
		if err := sock.SetBPF(prog); err != nil {
			sock.Close()
			return nil, fmt.Errorf("subscribe to conntrack events: attach filter: %w", err)
		}
	}
	for _, g := range groups {
		if err := sock.JoinGroup(uint32(g)); err != nil {
			sock.Close()
			return nil, fmt.Errorf("subscribe to conntrack events: join group %d: %w", g, err)
		}
	}
	return &Listener{sock: sock, filter: f, closed: make(chan struct{})}, nil
}

// dialSameNS opens a ctnetlink socket in the namespace Dial ran in. When the calling thread is
// in that namespace already, it is opened directly; otherwise the library enters the namespace
// on a helper thread (this needs CAP_SYS_ADMIN).
func (c *Conn) dialSameNS() (*netlink.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	same, err := sameNetNS(c.ns)
	if err != nil {
		return nil, err
	}
	if same {
		return netlink.Dial(unix.NETLINK_NETFILTER, nil)
	}
	return netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(c.ns.Fd())})
}

// sameNetNS reports whether the calling thread's network namespace is ns.
func sameNetNS(ns *os.File) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &a); err != nil {
		return false, fmt.Errorf("stat network namespace: %w", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &b); err != nil {
		return false, fmt.Errorf("stat network namespace: %w", err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// Received returns the number of event messages the listener has read from its socket, wanted
// or not: what the kernel's filter let through.
func (l *Listener) Received() uint64 { return l.received.Load() }

// Close closes the event socket; a running Run returns nil.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.closeErr = l.sock.Close()
	})
	return l.closeErr
}

// Run delivers events to fn until ctx ends or l is closed (then it returns nil), or the socket
// fails. An overflow of the socket buffer is reported as an EventsLost event, not an error.
func (l *Listener) Run(ctx context.Context, fn func(Event)) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		msgs, err := l.sock.Receive()
		if err != nil {
			select {
			case <-l.closed:
				return nil
			default:
			}
			if errors.Is(err, unix.ENOBUFS) {
				fn(Event{Kind: EventsLost})
				continue
			}
			return fmt.Errorf("receive conntrack events: %w", err)
		}
		l.received.Add(uint64(len(msgs)))
		for _, m := range msgs {
			if ev, ok := decodeEvent(m); ok && l.filter.wants(ev) {
				fn(ev)
			}
		}
	}
}

// decodeEvent turns one event message into an Event; ok is false for messages Listen does not
// report (non-TCP, new entries without a master, expectations of other helpers, undecodable).
func decodeEvent(m netlink.Message) (Event, bool) {
	var ev ct.Event
	if err := ev.Unmarshal(m); err != nil {
		return Event{}, false
	}
	switch ev.Type {
	case ct.EventNew, ct.EventDestroy:
		if ev.Flow == nil {
			return Event{}, false
		}
		f, ok := flowFrom(ev.Flow)
		if !ok {
			return Event{}, false
		}
		if ev.Type == ct.EventDestroy {
			return Event{Kind: FlowDestroy, Flow: f}, true
		}
		if f.Master == nil {
			return Event{}, false
		}
		return Event{Kind: FlowNew, Flow: f}, true
	case ct.EventExpNew, ct.EventExpDestroy:
		if ev.Expect == nil || ev.Expect.HelpName != CarrierHelper {
			return Event{}, false
		}
		e, ok := expectFrom(ev.Expect)
		if !ok {
			return Event{}, false
		}
		kind := ExpectNew
		if ev.Type == ct.EventExpDestroy {
			kind = ExpectDestroy
		}
		return Event{Kind: kind, Expect: e}, true
	}
	return Event{}, false
}
