package gateway

import (
	"net/netip"
	"sync"
	"time"
)

// fxpBook remembers, per client, the data endpoints servers announced to it (227/229, as the
// client was told them) for --pinhole-timeout. A PORT/EPRT naming exactly one of them is a
// server-to-server transfer (FXP, RFC 959 figure 2): the client points one server at the
// other's passive endpoint. The two control connections may belong to different workers, so
// the book is shared; it is used per command, never per packet.
type fxpBook struct {
	ttl time.Duration

	mu sync.Mutex
	m  map[fxpClient][]fxpEntry
}

// fxpClient is a client address in its conntrack zone.
type fxpClient struct {
	zone uint16
	addr netip.Addr
}

type fxpEntry struct {
	ep      netip.AddrPort
	expires time.Time
}

const (
	maxFXPPerClient = 8     // announcements remembered per client (the newest)
	maxFXPClients   = 65536 // clients remembered; beyond it, nothing new is recorded
)

func newFXPBook(ttl time.Duration) *fxpBook {
	return &fxpBook{ttl: ttl, m: make(map[fxpClient][]fxpEntry)}
}

// announced records that a server told client to connect to ep.
func (b *fxpBook) announced(client fxpClient, ep netip.AddrPort, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	es := b.m[client]
	if es == nil && len(b.m) >= maxFXPClients {
		b.expireLocked(now)
		if len(b.m) >= maxFXPClients {
			return
		}
	}
	kept := es[:0]
	for _, e := range es {
		if now.Before(e.expires) && e.ep != ep {
			kept = append(kept, e)
		}
	}
	if len(kept) >= maxFXPPerClient {
		kept = append(kept[:0], kept[1:]...)
	}
	b.m[client] = append(kept, fxpEntry{ep: ep, expires: now.Add(b.ttl)})
}

// match reports whether ep is an endpoint a server announced to client within the last ttl.
func (b *fxpBook) match(client fxpClient, ep netip.AddrPort, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.m[client] {
		if e.ep == ep && now.Before(e.expires) {
			return true
		}
	}
	return false
}

func (b *fxpBook) expireLocked(now time.Time) {
	for c, es := range b.m {
		live := false
		for _, e := range es {
			if now.Before(e.expires) {
				live = true
				break
			}
		}
		if !live {
			delete(b.m, c)
		}
	}
}
