// Package queue binds ftpalg to one NFQUEUE queue: it receives the control packets the
// table of package rules sends there and gives each its verdict, now or later.
//
// # Read loops
//
// Two loops read the queue (Config.Loop). The default, LoopLean (lean.go), reads each
// datagram with one blocking read(2) into a buffer it owns, on a locked OS thread, parses the attributes in place and writes each verdict
// with one write(2); it adds no allocation per packet or per verdict. LoopNfqueue is
// go-nfqueue's loop: a MSG_PEEK receive and a second receive per datagram, each parking the
// goroutine in the netpoller, and allocations per packet and per verdict. BENCHMARKS.md has
// the measurements that chose the default.
//
// # Payload ownership
//
// Packet.Payload is valid, and may be modified in place, until the Run callback returns:
// the lean loop reads the next packet into the same buffer. A caller that keeps a packet for
// a later verdict keeps a copy of the bytes it needs (with LoopNfqueue the payload is a
// fresh copy anyway).
//
// # Verdicts
//
// Every packet handed to the Run callback must get exactly one verdict, Accept or Drop,
// from any goroutine, before or after the callback returns: a held packet waits in the
// kernel queue (at most Config.MaxLen packets) until its verdict. Verdicts are sent
// without an acknowledgement; a refused verdict (for example an altered payload in a
// non-initial user namespace, EPERM) comes back asynchronously and reaches Run's onErr.
package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Defaults applied to zero Config fields.
const (
	DefaultMaxLen  = 4096
	DefaultReadBuf = 8 << 20
	maxPacketLen   = 0xffff
)

// Config configures one queue.
type Config struct {
	Num      uint16
	MaxLen   uint32 // kernel queue length, default 4096
	FailOpen bool   // NfQaCfgFlagFailOpen: accept when the kernel queue is full
	ReadBuf  int    // socket receive buffer bytes, default 8 MiB
	Loop     Loop   // the read loop, default LoopLean
}

// Loop selects the read loop.
type Loop uint8

const (
	LoopLean    Loop = iota // one blocking read per packet on a locked thread (lean.go)
	LoopNfqueue             // go-nfqueue's receive loop
)

// Packet is one queued packet. Payload starts at the IP header and belongs to the
// receiver: it may be kept (for a later verdict) and modified in place.
type Packet struct {
	ID      uint32
	Payload []byte
	HWProto uint16 // link-layer protocol (EtherType), 0 when absent
	InDev   uint32 // input interface index, 0 when absent
	OutDev  uint32 // output interface index, 0 when absent
}

// Queue is an open NFQUEUE binding. Accept, Drop and Close are safe for concurrent use.
type Queue struct {
	cfg  Config
	nf   *nfqueue.Nfqueue // LoopNfqueue
	lean *leanSock        // LoopLean

	closing chan struct{} // closed by Close
	bound   chan struct{} // closed once Run has bound the queue

	mu      sync.Mutex
	running bool
	closed  bool
}

var (
	// ErrClosed is returned by Run when the queue was closed while it ran.
	ErrClosed = errors.New("queue closed")

	errRunning = errors.New("queue already running or ran")
)

// Open opens the netlink socket for queue cfg.Num. The queue is bound, and packets
// start to flow, when Run is called.
func Open(cfg Config) (*Queue, error) {
	if cfg.MaxLen == 0 {
		cfg.MaxLen = DefaultMaxLen
	}
	if cfg.ReadBuf == 0 {
		cfg.ReadBuf = DefaultReadBuf
	}
	if cfg.Loop == LoopLean {
		ls, err := openLean(cfg)
		if err != nil {
			return nil, fmt.Errorf("open queue %d: %w", cfg.Num, err)
		}
		return &Queue{cfg: cfg, lean: ls, closing: make(chan struct{}), bound: make(chan struct{})}, nil
	}
	var flags uint32
	if cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      cfg.Num,
		MaxQueueLen:  cfg.MaxLen,
		MaxPacketLen: maxPacketLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		// Since Linux 3.8 a queue carries IPv4 and IPv6 whatever family is given here.
		AfFamily: unix.AF_INET,
	})
	if err != nil {
		return nil, fmt.Errorf("open queue %d: %w", cfg.Num, err)
	}
	q := &Queue{cfg: cfg, nf: nf, closing: make(chan struct{}), bound: make(chan struct{})}
	// Without NoENOBUFS an overrun receive buffer makes every later receive fail with
	// ENOBUFS; with it the kernel drops (or, with FailOpen, accepts) and goes on.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, fmt.Errorf("open queue %d: set NETLINK_NO_ENOBUFS: %w", cfg.Num, err)
	}
	if err := setReadBuffer(nf.Con, cfg.ReadBuf); err != nil {
		nf.Close()
		return nil, fmt.Errorf("open queue %d: set receive buffer %d: %w", cfg.Num, cfg.ReadBuf, err)
	}
	return q, nil
}

// setReadBuffer sets the receive buffer to n bytes, beyond net.core.rmem_max when the
// process may (SO_RCVBUFFORCE needs CAP_NET_ADMIN, which NFQUEUE needs anyway).
func setReadBuffer(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	if serr == nil {
		return nil
	}
	return c.SetReadBuffer(n)
}

// ReadBuffer returns the socket's receive buffer size as the kernel reports it (twice
// the size asked for, for its bookkeeping).
func (q *Queue) ReadBuffer() (int, error) {
	if q.lean != nil {
		return q.lean.readBuffer()
	}
	return q.nf.Con.ReadBuffer()
}

// Run binds the queue and calls fn for every packet until ctx ends; it then returns nil,
// fn no longer running, and the receive loop unbinds the queue. fn runs on one
// goroutine, one packet at a time; each packet must get a verdict with Accept or Drop,
// now or later. Receive errors go to onErr (nil: ignored) and do not stop the loop.
// Run returns ErrClosed if the queue is closed meanwhile (fn may then run until Close
// returns), and an error at once if the queue cannot be bound (EPERM: another socket
// holds the queue, or no CAP_NET_ADMIN over the network namespace). Run may be called once.
func (q *Queue) Run(ctx context.Context, fn func(Packet), onErr func(error)) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if q.running {
		q.mu.Unlock()
		return errRunning
	}
	q.running = true
	q.mu.Unlock()

	if onErr == nil {
		onErr = func(error) {}
	}
	if q.lean != nil {
		return q.runLean(ctx, fn, onErr)
	}
	// stopped reports why the receive loop ended by itself. fnMu is held while fn runs;
	// once stop is set, fn is never called again.
	stopped := make(chan error, 1)
	report := func(err error) {
		select {
		case stopped <- err:
		default:
		}
	}
	var (
		fnMu sync.Mutex
		stop bool
	)
	hook := func(a nfqueue.Attribute) int {
		if a.PacketID == nil {
			return 0 // nothing to give a verdict to
		}
		fnMu.Lock()
		defer fnMu.Unlock()
		if stop {
			return 1
		}
		fn(packetOf(&a))
		return 0
	}
	errFn := func(err error) int {
		if ctx.Err() != nil {
			// go-nfqueue ends a blocked receive with a past read deadline.
			report(nil)
			return 1
		}
		if q.isClosed() {
			report(ErrClosed)
			return 1
		}
		onErr(fmt.Errorf("queue %d: receive: %w", q.cfg.Num, err))
		return 0
	}
	if err := q.nf.RegisterWithErrorFunc(ctx, hook, errFn); err != nil {
		q.mu.Lock()
		q.running = false
		q.mu.Unlock()
		return fmt.Errorf("bind queue %d: %w", q.cfg.Num, err)
	}
	close(q.bound)
	select {
	case err := <-stopped:
		return err
	case <-q.closing:
		return ErrClosed
	case <-ctx.Done():
	}
	// The loop ends by itself (go-nfqueue then unbinds the queue; the kernel drops the
	// packets still waiting for a verdict). Make sure fn is not running and will not run
	// again when Run returns.
	fnMu.Lock()
	stop = true
	fnMu.Unlock()
	return nil
}

func (q *Queue) runLean(ctx context.Context, fn func(Packet), onErr func(error)) error {
	if err := q.lean.bind(q.cfg); err != nil {
		q.mu.Lock()
		q.running = false
		q.mu.Unlock()
		return fmt.Errorf("bind queue %d: %w", q.cfg.Num, err)
	}
	close(q.bound)
	loopDone := make(chan struct{})
	defer close(loopDone)
	go func() {
		select {
		case <-ctx.Done():
			q.lean.stop.Store(true)
			q.lean.wake()
		case <-loopDone:
		}
	}()
	wrapped := func(err error) { onErr(fmt.Errorf("queue %d: %w", q.cfg.Num, err)) }
	err := q.lean.loop(q.cfg, fn, wrapped)
	if err != nil || q.isClosed() {
		return ErrClosed
	}
	// The context ended: unbind, as go-nfqueue's loop does (the kernel drops the packets
	// still waiting for a verdict; with the rules' bypass flag later packets pass).
	if err := q.lean.unbind(); err != nil && !errors.Is(err, ErrClosed) && !q.isClosed() {
		wrapped(fmt.Errorf("unbind: %w", err))
	}
	return nil
}

// Bound is closed once Run has bound the queue. Install the rules that send packets to
// the queue only after that: go-nfqueue binds with several configuration requests and
// reads each reply on the socket packets arrive on, so a packet queued while it binds is
// read as a reply ("mismatched sequence in netlink reply") and the bind fails.
func (q *Queue) Bound() <-chan struct{} { return q.bound }

func (q *Queue) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// packetOf copies the attributes ftpalg uses out of a; it does not allocate.
func packetOf(a *nfqueue.Attribute) Packet {
	p := Packet{ID: *a.PacketID}
	if a.Payload != nil {
		p.Payload = *a.Payload
	}
	if a.HwProtocol != nil {
		p.HWProto = *a.HwProtocol
	}
	if a.InDev != nil {
		p.InDev = *a.InDev
	}
	if a.OutDev != nil {
		p.OutDev = *a.OutDev
	}
	return p
}

// Accept releases packet id; altered, when not nil, replaces the packet (from the IP
// header on; lengths and checksums are the caller's).
func (q *Queue) Accept(id uint32, altered []byte) error {
	var err error
	switch {
	case q.lean != nil:
		err = q.lean.verdict(id, verdictAccept, altered)
	case altered == nil:
		err = q.nf.SetVerdict(id, nfqueue.NfAccept)
	default:
		err = q.nf.SetVerdictModPacket(id, nfqueue.NfAccept, altered)
	}
	if err != nil {
		return fmt.Errorf("queue %d: accept packet %d: %w", q.cfg.Num, id, err)
	}
	return nil
}

// Drop drops packet id.
func (q *Queue) Drop(id uint32) error {
	var err error
	if q.lean != nil {
		err = q.lean.verdict(id, verdictDrop, nil)
	} else {
		err = q.nf.SetVerdict(id, nfqueue.NfDrop)
	}
	if err != nil {
		return fmt.Errorf("queue %d: drop packet %d: %w", q.cfg.Num, id, err)
	}
	return nil
}

// Close closes the socket; the kernel then drops the packets still waiting for a
// verdict (or, with the rules' FailOpen bypass, later packets pass). A running Run
// returns ErrClosed, or nil when its context had ended.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.closing)
	q.mu.Unlock()
	var err error
	if q.lean != nil {
		q.lean.stop.Store(true)
		q.lean.wake()
		err = q.lean.close() // waits for a read in progress to return
	} else {
		err = q.nf.Close()
	}
	if err != nil {
		return fmt.Errorf("close queue %d: %w", q.cfg.Num, err)
	}
	return nil
}

// Stats are the kernel's counters of one queue, from /proc/net/netfilter/nfnetlink_queue
// (per network namespace): the packets waiting for a verdict now, those dropped because the
// queue was full (without FailOpen; with it they are accepted uninspected and not counted
// anywhere), and those dropped because the socket's receive buffer was full.
type Stats struct {
	Backlog     uint64
	Dropped     uint64
	UserDropped uint64
}

const procQueues = "/proc/net/netfilter/nfnetlink_queue"

// ReadStats returns the counters of every bound queue of the current network namespace.
func ReadStats() (map[uint16]Stats, error) {
	b, err := os.ReadFile(procQueues)
	if err != nil {
		return nil, fmt.Errorf("queue stats: %w", err)
	}
	return parseStats(b)
}

// parseStats reads the lines "queue portid backlog copy_mode copy_range dropped user_dropped
// id_sequence 1".
func parseStats(b []byte) (map[uint16]Stats, error) {
	out := make(map[uint16]Stats)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 7 {
			return nil, fmt.Errorf("queue stats: short line %q", line)
		}
		var v [7]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("queue stats: line %q: %w", line, err)
			}
			v[i] = n
		}
		if v[0] > 65535 {
			return nil, fmt.Errorf("queue stats: queue %d", v[0])
		}
		out[uint16(v[0])] = Stats{Backlog: v[2], Dropped: v[5], UserDropped: v[6]}
	}
	return out, nil
}
