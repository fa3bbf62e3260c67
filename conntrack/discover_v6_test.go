package conntrack

import (
	"net/netip"
	"testing"
)

func TestDiscoverIPv6(t *testing.T) {
	l := newLab(t)
	ln := l.listen(netip.AddrPortFrom(lo6, 21))
	orig, _ := l.connect(ln, netip.AddrPortFrom(lo6, 21))
	fs, err := l.c.Discover(orig)
	if err != nil || len(fs) != 1 || fs[0].Orig != unmapTuple(orig) {
		t.Fatalf("Discover(%s) = %+v, %v", orig, fs, err)
	}
}
