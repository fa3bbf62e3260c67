package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The sequence deltas of a rewritten control connection must outlive ftpalg: after a restart
// (or kill -9) every later packet of that connection still needs its seq/ack shifted, or the
// connection dies. The kernel cannot hold them for us (DESIGN.md: no seqadj for queued
// packets), so each session whose stream was resized has a small file in a runtime directory,
// written when a rewrite is recorded and at a clean shutdown, removed when the session ends.
// The next run claims a file when it meets that connection again (a packet that is not a SYN).
//
// The directory is $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) or /run/ftpalg, with one
// subdirectory per network namespace so that instances in different namespaces of one host
// (the lab, containers) never see each other's sessions.

const stateMaxAge = 24 * time.Hour // an unclaimed file older than this is stale

type sessionState struct {
	Client  netip.AddrPort `json:"client"`
	Server  netip.AddrPort `json:"server"`
	Liberal bool           `json:"liberal"`
	NAT     []byte         `json:"nat"` // nat.Conn.MarshalBinary
	Saved   time.Time      `json:"saved"`
}

type stateStore struct {
	dir string
	ops chan stateOp // when set, writes go to the writer goroutine (see writer)

	mu      sync.Mutex
	restore map[sessKey]sessionState // loaded at start, claimed by workers
}

// stateDir returns the directory for this network namespace.
func stateDir() (string, error) {
	base := os.Getenv("RUNTIME_DIRECTORY")
	if base == "" {
		base = "/run/ftpalg"
	}
	// RUNTIME_DIRECTORY may list several directories separated by colons.
	base, _, _ = strings.Cut(base, ":")
	ns, err := os.Readlink("/proc/self/ns/net") // "net:[4026531840]"
	if err != nil {
		return "", fmt.Errorf("network namespace identity: %w", err)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(ns, "net:["), "]")
	return filepath.Join(base, "netns-"+id), nil
}

// openState creates the directory and loads what an earlier run left.
func openState(dir string, now time.Time) (*stateStore, int, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("state directory: %w", err)
	}
	st := &stateStore{dir: dir, restore: make(map[sessKey]sessionState)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("state directory: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			if strings.HasSuffix(e.Name(), ".tmp") {
				os.Remove(p)
			}
			continue
		}
		b, err := os.ReadFile(p)
		var s sessionState
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil || !s.Client.IsValid() || !s.Server.IsValid() || now.Sub(s.Saved) > stateMaxAge {
			os.Remove(p)
			continue
		}
		st.restore[sessKey{s.Client, s.Server}] = s
	}
	return st, len(st.restore), nil
}

func (st *stateStore) path(k sessKey) string {
	// Addresses and ports only: no path separators can appear.
	name := strings.NewReplacer(":", "_", "[", "", "]", "").Replace(k.client.String() + "-" + k.server.String())
	return filepath.Join(st.dir, name+".json")
}

// claim returns the saved state of a connection met again after a restart.
func (st *stateStore) claim(k sessKey) (sessionState, bool) {
	if st == nil {
		return sessionState{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	s, ok := st.restore[k]
	if ok {
		delete(st.restore, k)
	}
	return s, ok
}

// stateOp is a save (state set) or a removal, for the writer goroutine.
type stateOp struct {
	key   sessKey
	state *sessionState
}

// writer performs the file operations handed to it in order, so that the packet path never
// waits for the file system (a PORT's rewrite would otherwise delay the server's reply behind
// it). It returns when ops is closed, after the last operation. A crash leaves at most the
// operations still queued undone.
func (st *stateStore) writer(onErr func(error)) {
	for op := range st.ops {
		if op.state == nil {
			st.removeNow(op.key)
			continue
		}
		if err := st.saveNow(*op.state); err != nil {
			onErr(err)
		}
	}
}

// save writes a session's state, through the writer goroutine when there is one.
func (st *stateStore) save(s sessionState) error {
	if st == nil {
		return nil
	}
	if st.ops != nil {
		st.ops <- stateOp{key: sessKey{s.Client, s.Server}, state: &s}
		return nil
	}
	return st.saveNow(s)
}

// saveNow writes a session's state atomically (write to a temporary file, rename).
func (st *stateStore) saveNow(s sessionState) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	p := st.path(sessKey{s.Client, s.Server})
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save session state: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save session state: %w", err)
	}
	return nil
}

func (st *stateStore) remove(k sessKey) {
	if st == nil {
		return
	}
	if st.ops != nil {
		st.ops <- stateOp{key: k}
		return
	}
	st.removeNow(k)
}

func (st *stateStore) removeNow(k sessKey) {
	if err := os.Remove(st.path(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = err // nothing better to do: a stale file expires after stateMaxAge
	}
}

// prune removes the files of restored sessions nobody claimed within maxAge of the start.
func (st *stateStore) prune() int {
	if st == nil {
		return 0
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	n := 0
	for k := range st.restore {
		st.remove(k)
		delete(st.restore, k)
		n++
	}
	return n
}
