package rules

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// tableBlock returns the `table inet NAME { ... }` block of Render's text: what
// `nft list table inet NAME` prints for the installed table.
func tableBlock(t *testing.T, cfg Config) string {
	t.Helper()
	text := Render(cfg)
	i := strings.Index(text, "table inet "+cfg.normalized().Table+" {")
	if i < 0 {
		t.Fatalf("no table block in Render output:\n%s", text)
	}
	return text[i:]
}

func listTable(t *testing.T, ns *testNS, name string) string {
	t.Helper()
	return ns.MustExec(t, "nft", "list", "table", "inet", name)
}

func installed(t *testing.T, ns *testNS, cfg Config) bool {
	t.Helper()
	var ok bool
	if err := ns.Do(func() (err error) { ok, err = Installed(cfg); return err }); err != nil {
		t.Fatalf("Installed: %v", err)
	}
	return ok
}

// TestInstall installs each golden configuration in a fresh namespace and compares
// `nft list table` with Render's text, so Render describes what Install does.
func TestInstall(t *testing.T) {
	requireRoot(t)
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNS(t, "rules")
			name := tc.cfg.normalized().Table
			if installed(t, ns, tc.cfg) {
				t.Fatal("Installed before Install = true, want false")
			}
			if err := ns.Do(func() error { return Install(tc.cfg) }); err != nil {
				t.Fatalf("Install: %v", err)
			}
			if diff := cmp.Diff(tableBlock(t, tc.cfg), listTable(t, ns, name)); diff != "" {
				t.Errorf("nft list table mismatch (-Render +nft):\n%s", diff)
			}
			if !installed(t, ns, tc.cfg) {
				t.Error("Installed after Install = false, want true")
			}
		})
	}
}

// TestInstallReplacesStale installs over a stale table that has other ports and an
// extra chain, and checks that Remove leaves nothing and touches no other table.
func TestInstallReplacesStale(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "rules")
	ns.MustExec(t, "nft", "add", "table", "inet", "operator")
	old := Config{Ports: []uint16{2121}, Queue: 7}
	cfg := Config{Ports: []uint16{21}, Queue: 1, Queues: 2, FailOpen: true}
	if err := ns.Do(func() error { return Install(old) }); err != nil {
		t.Fatalf("Install(old): %v", err)
	}
	ns.MustExec(t, "nft", "add", "chain", "inet", "ftpalg", "stale")
	ns.MustExec(t, "nft", "add", "element", "inet", "ftpalg", "ports", "{ 8021 }")
	if err := ns.Do(func() error { return Install(cfg) }); err != nil {
		t.Fatalf("Install over stale table: %v", err)
	}
	if diff := cmp.Diff(tableBlock(t, cfg), listTable(t, ns, "ftpalg")); diff != "" {
		t.Errorf("after reinstall, nft list table mismatch (-Render +nft):\n%s", diff)
	}

	for i := range 2 { // the second Remove finds no table, which is not an error
		if err := ns.Do(func() error { return Remove(cfg) }); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if installed(t, ns, cfg) {
		t.Error("Installed after Remove = true, want false")
	}
	got := ns.MustExec(t, "nft", "list", "tables")
	if want := "table inet operator\n"; got != want {
		t.Errorf("nft list tables after Remove = %q, want %q", got, want)
	}
}

func TestInstallInvalid(t *testing.T) {
	// Validation happens before any netlink traffic: no root needed.
	if err := Install(Config{}); err == nil {
		t.Error("Install(Config{}) = nil, want an error")
	}
}

// nativeQueue reports whether the kernel has nft's native queue expression.
func nativeQueue(t *testing.T, ns *testNS) bool {
	t.Helper()
	path := filepath.Join(t.TempDir(), "probe.nft")
	probe := "table inet probe {\n\tchain c {\n\t\ttype filter hook input priority 0;\n\t\tqueue num 0 bypass\n\t}\n}\n"
	if err := os.WriteFile(path, []byte(probe), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ns.Exec("nft", "-c", "-f", path)
	return err == nil
}

var nftErrPos = regexp.MustCompile(`(?m)^[^\n]*:(\d+):(\d+)-(\d+): Error: ([^\n]*)$`)

// TestRenderLoads checks Render's text with `nft -c -f` (the kernel checks the batch
// and discards it). On a kernel without nft_queue (CONFIG_NFT_QUEUE off, as on the
// project's machines) the only errors allowed are ENOENT at the queue statements, and
// the text with those statements replaced by "counter" must load.
func TestRenderLoads(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "rules")
	native := nativeQueue(t, ns)
	t.Logf("kernel has the native nft queue expression: %v", native)
	for _, tc := range renderCases {
		t.Run(tc.name, func(t *testing.T) {
			text := Render(tc.cfg)
			path := filepath.Join(t.TempDir(), "ruleset.nft")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ns.Exec("nft", "-c", "-f", path)
			if native {
				if err != nil {
					t.Fatalf("nft -c -f: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("nft -c -f succeeded on a kernel without nft_queue")
			}
			lines := strings.Split(text, "\n")
			matches := nftErrPos.FindAllStringSubmatch(err.Error(), -1)
			queueRules := len(regexp.MustCompile(`(?m)^\t\t(.* )?queue num `).FindAllString(text, -1))
			if len(matches) != queueRules {
				t.Errorf("nft -c -f reported %d errors, want %d (one per queue rule):\n%v", len(matches), queueRules, err)
			}
			for _, m := range matches {
				line, _ := strconv.Atoi(m[1])
				from, _ := strconv.Atoi(m[2])
				to, _ := strconv.Atoi(m[3])
				src := lines[line-1]
				if to > len(src) || src[from-1:to] != "queue" || m[4] != "Could not process rule: No such file or directory" {
					t.Errorf("unexpected nft error at line %d: %s\n%s", line, m[4], src)
				}
			}
			counted := regexp.MustCompile(`queue num [0-9-]+( bypass)?`).ReplaceAllString(text, "counter")
			if err := os.WriteFile(path, []byte(counted), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := ns.Exec("nft", "-c", "-f", path); err != nil {
				t.Errorf("nft -c -f with the queue statements replaced: %v", err)
			}
		})
	}
}

// TestCarrier connects a client namespace to a server namespace over veth, with the
// table installed in the server namespace (bypass on, no queue reader), and checks that
// the connection to port 21 carries the "sane" helper and the one to port 22 does not.
//
//	cli 192.0.2.1/24 veth0 ── veth1 192.0.2.2/24 srv (table inet ftpalg, servers on 21 and 22)
func TestCarrier(t *testing.T) {
	requireRoot(t)
	cli, srv := newNS(t, "cli"), newNS(t, "srv")
	vethPair(t, cli, "192.0.2.1/24", srv, "192.0.2.2/24")
	cfg := Config{Ports: []uint16{21}, FailOpen: true}
	if err := srv.Do(func() error { return Install(cfg) }); err != nil {
		t.Fatalf("Install: %v", err)
	}

	tests := []struct {
		name       string
		port       int
		wantHelper bool
	}{
		{name: "control port", port: 21, wantHelper: true},
		{name: "other port", port: 22, wantHelper: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ln net.Listener
			addr := net.JoinHostPort("192.0.2.2", strconv.Itoa(tc.port))
			if err := srv.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				if c, err := ln.Accept(); err == nil {
					defer c.Close()
					c.Write([]byte("220 ready\r\n"))
					time.Sleep(2 * time.Second)
				}
			}()
			var conn net.Conn
			err := cli.Do(func() (err error) {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				conn, err = (&net.Dialer{}).DialContext(ctx, "tcp4", addr)
				return err
			})
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			defer conn.Close()
			buf := make([]byte, 64)
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := conn.Read(buf); err != nil {
				t.Fatalf("read greeting: %v", err)
			}
			out := srv.MustExec(t, "conntrack", "-L", "-p", "tcp", "--dport", strconv.Itoa(tc.port))
			if !strings.Contains(out, fmt.Sprintf("dport=%d", tc.port)) {
				t.Fatalf("no conntrack entry for port %d:\n%s", tc.port, out)
			}
			if got := strings.Contains(out, "helper=sane"); got != tc.wantHelper {
				t.Errorf("helper=sane in conntrack entry = %v, want %v:\n%s", got, tc.wantHelper, out)
			}
		})
	}
}

// TestProbeHelper checks the probe Install uses to tell a missing "sane" helper from
// other ENOENT causes, and that it leaves no table behind.
func TestProbeHelper(t *testing.T) {
	requireRoot(t)
	ns := newNS(t, "rules")
	tests := []struct {
		name    string
		typ     string
		wantErr error // nil: success
	}{
		{name: "sane", typ: "sane"},
		{name: "unknown helper type", typ: "nosuchhelper", wantErr: unix.ENOENT},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ns.Do(func() error { return ProbeHelper(DefaultHelper, tc.typ) })
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("ProbeHelper(%q) = %v, want %v", tc.typ, err, tc.wantErr)
			}
			if got := ns.MustExec(t, "nft", "list", "tables"); got != "" {
				t.Errorf("tables left after probe: %q", got)
			}
		})
	}
}
