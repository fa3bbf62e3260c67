package queue

import (
	"testing"

	"github.com/ftpalg/ftpalg/conntrack/internal/nstest"
)

// The namespace tests create their own network namespaces (package nstest).

type testNS = nstest.NS

func requireRoot(t testing.TB) {
	nstest.RequireRoot(t, "creates network namespaces, nftables tables and NFQUEUE bindings")
}

func newNS(t testing.TB, tag string) *testNS { return nstest.New(t, tag) }

func vethPair(t testing.TB, a *testNS, addrA string, b *testNS, addrB string) {
	nstest.VethPair(t, a, addrA, b, addrB)
}
