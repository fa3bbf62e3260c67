// Command impair degrades the TCP packets a network namespace sends, for the reliability
// tests: this kernel has no netem, so an NFQUEUE program does it. Run it in the namespace
// with the rule that feeds it:
//
//	iptables -t mangle -A OUTPUT -p tcp -m mark ! --mark 0x1d -j NFQUEUE --queue-num N
//	impair -queue N -loss 0.02 -dup 0.1 -reorder 0.25 -delay 20ms -jitter 10ms -seed S
//
// Each packet is dropped (loss: the sender retransmits, the receiver sends SACK blocks),
// held for delay±jitter before its verdict (reorder: later packets overtake it), or released
// at once; independently a copy is sent again through a raw socket marked 0x1d (dup: the rule
// lets the copy pass). IPv4 only. On SIGTERM it prints its counts as JSON and exits.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/conntrack/queue"
)

// Mark is the firewall mark of duplicated packets, which the queue rule lets through.
const Mark = 0x1d

// Counts is what impair prints at exit.
type Counts struct {
	Packets    int64 `json:"packets"`
	Dropped    int64 `json:"dropped"`
	Held       int64 `json:"held"`
	Duplicated int64 `json:"duplicated"`
}

func main() {
	num := flag.Uint("queue", 7, "NFQUEUE number")
	loss := flag.Float64("loss", 0.02, "probability of dropping a packet")
	dup := flag.Float64("dup", 0.1, "probability of sending a packet twice")
	reorder := flag.Float64("reorder", 0.25, "probability of holding a packet back")
	delay := flag.Duration("delay", 20*time.Millisecond, "how long a held packet waits")
	jitter := flag.Duration("jitter", 10*time.Millisecond, "± on the wait")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (printed, for a rerun)")
	flag.Parse()
	if err := run(uint16(*num), *loss, *dup, *reorder, *delay, *jitter, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "impair:", err)
		os.Exit(1)
	}
}

func run(num uint16, loss, dup, reorder float64, delay, jitter time.Duration, seed uint64) error {
	fmt.Fprintf(os.Stderr, "impair: queue %d seed %d\n", num, seed)
	q, err := queue.Open(queue.Config{Num: num})
	if err != nil {
		return err
	}
	defer q.Close()
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(raw)
	if err := unix.SetsockoptInt(raw, unix.SOL_SOCKET, unix.SO_MARK, Mark); err != nil {
		return fmt.Errorf("SO_MARK: %w", err)
	}

	var c Counts
	var mu sync.Mutex // the random source and the raw socket
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fn := func(p queue.Packet) {
		atomic.AddInt64(&c.Packets, 1)
		mu.Lock()
		r1, r2, r3 := rng.Float64(), rng.Float64(), rng.Float64()
		wait := delay + time.Duration((rng.Float64()*2-1)*float64(jitter))
		if r2 < dup && len(p.Payload) >= 20 && p.Payload[0]>>4 == 4 {
			var dst [4]byte
			copy(dst[:], p.Payload[16:20])
			sa := &unix.SockaddrInet4{Addr: netip.AddrFrom4(dst).As4()}
			if unix.Sendto(raw, p.Payload, 0, sa) == nil {
				atomic.AddInt64(&c.Duplicated, 1)
			}
		}
		mu.Unlock()
		switch {
		case r1 < loss:
			atomic.AddInt64(&c.Dropped, 1)
			q.Drop(p.ID)
		case r3 < reorder:
			atomic.AddInt64(&c.Held, 1)
			time.AfterFunc(wait, func() { q.Accept(p.ID, nil) })
		default:
			q.Accept(p.ID, nil)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- q.Run(ctx, fn, func(error) {}) }()
	select {
	case <-q.Bound():
		fmt.Println(`{"ready":true}`)
	case err := <-errc:
		return err
	}
	err = <-errc
	time.Sleep(delay + jitter) // the held packets' verdicts
	json.NewEncoder(os.Stdout).Encode(&c)
	return err
}
