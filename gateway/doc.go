// Package gateway is ftpalg's packet path: it binds the NFQUEUE queues, hands every queued
// control packet to the worker that owns its session, carries out the alg engine's decisions
// (pinholes through ctnetlink, payload rewrites through nat, the kernel's sequence adjustment),
// follows the pinholes' life from conntrack events, and exposes metrics and health.
//
//	cfg := &gateway.Config{Ports: []uint16{21}, Queue: 2121, Queues: 1, ...}
//	log, q := gateway.NewAsyncLogger(os.Stdout, "json", gateway.DefaultLogQueue)
//	defer q.Close()
//	d, err := gateway.New(cfg, log)
//	d.Register(q.Collector())
//	err = d.Run(ctx) // until ctx ends; the nftables table stays (see Run)
//
// # Shape
//
// One worker per queue owns its sessions: everything it does for a packet runs on the
// queue's reader (its mutex is shared only with its own timer and event loop). A session is a
// cache of what the kernel's conntrack entry holds (DESIGN.md): the engine's parsing state,
// the replacement text of rewritten segments, the sequence adjustment as registered. A
// connection seen only in its handshake costs a small entry until data flows. The pinhole
// table, the FXP book and the conntrack event listener are shared by the workers; they are
// used per command or per event, never per packet.
//
// Per packet, the worker decodes (nat.Packet), finds or makes the session, feeds the engine
// (alg.Session.Feed), holds a segment that ends inside a candidate command (to join it with
// the next), carries out each decision (open: expectation first, rewrite, sequence adjustment
// before the verdict; reject: neutralise), and gives the verdict. A packet that carries no
// command allocates nothing.
//
// Every log line is one event (see README.md's table); the asynchronous logger never blocks
// the packet path and counts what it drops.
package gateway
