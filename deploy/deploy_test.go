// Package deploy_test checks the deployment files of deploy/: the container image (built and run
// with podman, root only), the systemd unit (systemd-analyze), the Grafana dashboard. The
// Kubernetes manifests and the Compose file are checked by deploy/manifestcheck, a module of its
// own (`make manifests`).
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// testVersion is stamped into the binary the tests build (-X main.version).
const testVersion = "deploytest"

// metricsPort is the port of --metrics-listen in every shipped file.
const metricsPort = 9821

var tmpRoot string // removed by TestMain

func TestMain(m *testing.M) {
	var err error
	tmpRoot, err = os.MkdirTemp("", "ftpalg-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpRoot)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// ftpalgBinary builds the static daemon once per test binary, as `make build` does, and returns
// the directory holding it (named ftpalg: the image's build context).
func ftpalgBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir = filepath.Join(tmpRoot, "bin")
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = "/usr/local/go/bin/go"
		}
		cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags", "-s -w -X main.version="+testVersion,
			"-o", filepath.Join(buildDir, "ftpalg"), "../cmd/ftpalg")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/ftpalg: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// requireRoot skips when not root (podman rootful, network namespaces, nftables); as root (CI)
// the tests always run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: rootful podman, network namespaces and nftables (CI runs as root)")
	}
}

// requireTool fails (as root or in CI) or skips (otherwise) when a program is missing.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Geteuid() == 0 || os.Getenv("CI") != "" {
			t.Fatalf("%s not found: run `make deps` (.ci/deps installs it)", name)
		}
		t.Skipf("%s not found (`make deps` installs it)", name)
	}
}

// podman is the one place podman is invoked: the flags every call needs on these machines.
//   - vfs storage: works on any filesystem, no fuse-overlayfs or kernel overlay needed.
//   - runc: the OCI runtime that works here (Debian's crun fails on these hosts).
func podman(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "podman", append([]string{"--storage-driver", "vfs", "--runtime", "runc"}, args...)...)
}

// containerFlags are the `podman run` flags of every ftpalg container: CAP_NET_ADMIN only, and
// explicit rlimits. Podman's rootful defaults (nofile 1048576, nproc 4194304) exceed the hard
// limits of a root without CAP_SYS_RESOURCE (a sandboxed CI host), and runc then fails with
// "error setting rlimit ... operation not permitted".
func containerFlags() []string {
	return []string{
		"--cap-drop", "all", "--cap-add", "NET_ADMIN",
		"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
	}
}

// run runs cmd and returns its stdout, or an error with its stderr.
func run(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func mustRun(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	out, err := run(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// buildImage builds deploy/Containerfile as `make image` does and returns the image ID.
func buildImage(t *testing.T, ctx context.Context, tag string) string {
	t.Helper()
	bin := ftpalgBinary(t)
	out := mustRun(t, podman(ctx, "build", "--quiet", "--layers=false", "--timestamp", "0",
		"--identity-label=false", "--build-arg", "VERSION="+testVersion,
		"-f", "Containerfile", "-t", tag, bin))
	return strings.TrimSpace(out)
}

// imageConfig is the part of `podman image inspect` the tests look at.
type imageConfig struct {
	ID      string `json:"Id"`
	Created time.Time
	Size    int64
	Config  struct {
		User         string
		Entrypoint   []string
		Cmd          []string
		ExposedPorts map[string]struct{}
		StopSignal   string
		Labels       map[string]string
	}
	RootFS struct {
		Layers []string
	}
}

// TestImage builds the image, checks its configuration, and runs it: `version` without a
// network, then `run` in a network namespace of its own until it is ready, then SIGTERM.
func TestImage(t *testing.T) {
	requireRoot(t)
	requireTool(t, "podman")
	requireTool(t, "runc")
	requireTool(t, "ip")
	requireTool(t, "nft")
	requireTool(t, "curl")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	tag := fmt.Sprintf("localhost/ftpalg:deploytest%d", os.Getpid())
	t.Cleanup(func() { podman(context.Background(), "rmi", "--force", tag).Run() })
	start := time.Now()
	id := buildImage(t, ctx, tag)
	t.Logf("image %s built in %s", id[:12], time.Since(start).Round(time.Millisecond))

	t.Run("reproducible", func(t *testing.T) {
		// Same binary, same --timestamp: the same image, bit for bit (same ID).
		if again := buildImage(t, ctx, tag); again != id {
			t.Errorf("rebuild gave image %s, first build %s", again, id)
		}
	})

	t.Run("config", func(t *testing.T) {
		out := mustRun(t, podman(ctx, "image", "inspect", tag))
		var imgs []imageConfig
		if err := json.Unmarshal([]byte(out), &imgs); err != nil || len(imgs) != 1 {
			t.Fatalf("podman image inspect: %v (%d images)", err, len(imgs))
		}
		img := imgs[0]
		t.Logf("image size %d bytes, %d layer(s)", img.Size, len(img.RootFS.Layers))
		type summary struct {
			User         string
			Entrypoint   []string
			Cmd          []string
			Ports        []string
			StopSignal   string
			Layers       int
			Version      string
			Title        string
			Created      int64
			BuildahLabel bool
		}
		var ports []string
		for p := range img.Config.ExposedPorts {
			ports = append(ports, p)
		}
		_, buildah := img.Config.Labels["io.buildah.version"]
		got := summary{
			User:         img.Config.User,
			Entrypoint:   img.Config.Entrypoint,
			Cmd:          img.Config.Cmd,
			Ports:        ports,
			StopSignal:   img.Config.StopSignal,
			Layers:       len(img.RootFS.Layers),
			Version:      img.Config.Labels["org.opencontainers.image.version"],
			Title:        img.Config.Labels["org.opencontainers.image.title"],
			Created:      img.Created.Unix(),
			BuildahLabel: buildah,
		}
		want := summary{
			User:       "0:0",
			Entrypoint: []string{"/ftpalg"},
			Cmd:        []string{"run"},
			Ports:      []string{strconv.Itoa(metricsPort) + "/tcp"},
			StopSignal: "SIGTERM",
			Layers:     1,
			Version:    testVersion,
			Title:      "ftpalg",
			Created:    0,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("image config (-want +got):\n%s", diff)
		}
		// One static binary and nothing else: a size far above the binary's means something
		// else got in.
		fi, err := os.Stat(filepath.Join(ftpalgBinary(t), "ftpalg"))
		if err != nil {
			t.Fatal(err)
		}
		if img.Size < fi.Size() || img.Size > fi.Size()+64<<10 {
			t.Errorf("image size %d bytes, binary %d bytes: want the binary plus at most 64 KiB", img.Size, fi.Size())
		}
	})

	t.Run("version", func(t *testing.T) {
		args := append([]string{"run", "--rm", "--network", "none"}, containerFlags()...)
		args = append(args, tag, "version")
		out := mustRun(t, podman(ctx, args...))
		if diff := cmp.Diff("ftpalg "+testVersion+"\n", out); diff != "" {
			t.Errorf("ftpalg version (-want +got):\n%s", diff)
		}
	})

	t.Run("user namespace refused", func(t *testing.T) {
		// In a user namespace of its own the daemon must refuse to start and say why (the
		// kernel would refuse its packet rewrites later, silently from the operator's view).
		args := append([]string{"run", "--rm", "--network", "none",
			"--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"}, containerFlags()...)
		args = append(args, tag, "run", "--ports", "21")
		out, err := run(podman(ctx, args...))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("want exit code 1, got %v\n%s", err, out)
		}
		if !strings.Contains(err.Error(), "user namespace") || !strings.Contains(out, `"event":"error"`) {
			t.Errorf("want an error event naming the user namespace, got stdout %q, %v", out, err)
		}
	})

	t.Run("run on the lab router", func(t *testing.T) {
		// The e2e lab (client behind SNAT, router with a default-drop forward chain, outside
		// vsftpd): the container joins the router's network namespace as it would join a
		// real router's host network.
		l, err := lab.New(ctx, lab.Config{Addrs: lab.Grow(), Logf: t.Logf})
		if err != nil {
			t.Fatalf("lab: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		ns := l.NS(lab.Router)
		x := l.Addrs
		vs, err := l.StartVsftpd(ctx, lab.OutsideServer, x.OutsideServer, t.TempDir(), lab.VsftpdOptions{})
		if err != nil {
			t.Fatalf("vsftpd: %v", err)
		}
		// The carrier helper's module; the image has no modprobe (see ftpalg-modules.conf).
		// Built-in or already loaded is fine: then modprobe has nothing to do or fails harmlessly.
		exec.Command("modprobe", "nf_conntrack_sane").Run()

		name := fmt.Sprintf("ftpalgdeploy%d", os.Getpid())
		t.Cleanup(func() { podman(context.Background(), "rm", "--force", "--time", "0", name).Run() })
		args := append([]string{"run", "-d", "--name", name, "--network", "ns:/run/netns/" + ns}, containerFlags()...)
		args = append(args, tag, "run", "--ports", "21", "--queue", "2121", "--queues", "1",
			"--pinhole-timeout", "30s", "--log-format", "json",
			"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort), "--fail-open=true")
		start := time.Now()
		mustRun(t, podman(ctx, args...))
		waitEvent(t, ctx, name, "ready", 30*time.Second)
		t.Logf("ready %s after podman run", time.Since(start).Round(time.Millisecond))

		table := mustRun(t, exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "list", "table", "inet", "ftpalg"))
		if !strings.Contains(table, "ftpalg-carrier") {
			t.Errorf("table inet ftpalg has no carrier helper:\n%s", table)
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", metricsPort)
		health := mustRun(t, exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-fsS", "--max-time", "5", url+"/healthz"))
		if diff := cmp.Diff("ok\n", health); diff != "" {
			t.Errorf("/healthz (-want +got):\n%s", diff)
		}
		metrics := mustRun(t, exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-fsS", "--max-time", "5", url+"/metrics"))
		if want := `ftpalg_build_info{version="` + testVersion + `"} 1`; !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}

		// A passive and an active download through the container, client behind SNAT.
		for _, mode := range []lab.Mode{lab.PASV, lab.PORT} {
			local := filepath.Join(t.TempDir(), "got")
			res := l.RunClient(ctx, lab.Client, lab.Curl, "", lab.Transfer{
				Op: lab.Get, Mode: mode, Server: vs.URL(""), Local: local, Timeout: 20 * time.Second,
			})
			if res.Err != nil {
				t.Errorf("%s download through the container: %v\n%s\n%s", mode, res.Err, res.Stderr, containerLogs(ctx, name))
				continue
			}
			if sum, _, err := lab.FileSHA(local); err != nil || sum != vs.SHA {
				t.Errorf("%s download: sha256 %s, want %s (%v)", mode, sum, vs.SHA, err)
			}
		}
		logs := containerLogs(ctx, name)
		for _, cmd := range []string{`"cmd":"227"`, `"cmd":"PORT"`} {
			if !strings.Contains(logs, `"event":"pinhole_open"`) || !strings.Contains(logs, cmd) {
				t.Errorf("no pinhole_open with %s in the container's log:\n%s", cmd, logs)
			}
		}

		start = time.Now()
		mustRun(t, podman(ctx, "stop", "--time", "10", name))
		t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
		code := strings.TrimSpace(mustRun(t, podman(ctx, "inspect", "--format", "{{.State.ExitCode}}", name)))
		if code != "0" {
			t.Errorf("exit code after SIGTERM: %s, want 0\n%s", code, containerLogs(ctx, name))
		}
		if !slices.Contains(events(containerLogs(ctx, name)), "shutdown") {
			t.Errorf("no shutdown event in the log:\n%s", containerLogs(ctx, name))
		}
		// The table stays across a stop (a connection opened during a restart keeps its
		// carrier helper); the image's cleanup command removes it, idempotently.
		if _, err := run(exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "list", "table", "inet", "ftpalg")); err != nil {
			t.Errorf("table inet ftpalg gone after SIGTERM: it must stay until ftpalg cleanup")
		}
		for i := range 2 {
			cargs := append([]string{"run", "--rm", "--network", "ns:/run/netns/" + ns}, containerFlags()...)
			cargs = append(cargs, tag, "cleanup")
			if out, err := run(podman(ctx, cargs...)); err != nil {
				t.Errorf("ftpalg cleanup in the container (call %d): %v\n%s", i+1, err, out)
			}
		}
		if out, err := run(exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "list", "table", "inet", "ftpalg")); err == nil {
			t.Errorf("table inet ftpalg is still there after ftpalg cleanup:\n%s", out)
		}
	})
}

// containerLogs returns the container's output (stdout and stderr), or the error getting it.
func containerLogs(ctx context.Context, name string) string {
	out, err := podman(ctx, "logs", name).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(podman logs: %v: %s)", err, out)
	}
	return string(out)
}

// events returns the "event" of each JSON line of a log.
func events(log string) []string {
	var evs []string
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var line struct {
			Event string `json:"event"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Event != "" {
			evs = append(evs, line.Event)
		}
	}
	return evs
}

// waitEvent polls the container's log until it shows the event, fails if the container exits
// first or the timeout passes.
func waitEvent(t *testing.T, ctx context.Context, name, event string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs := containerLogs(ctx, name)
		if slices.Contains(events(logs), event) {
			return
		}
		state, _ := run(podman(ctx, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name))
		if st := strings.Fields(state); len(st) == 2 && st[0] == "exited" {
			t.Fatalf("container exited (code %s) before %q:\n%s", st[1], event, logs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q event after %s (state %q):\n%s", event, timeout, strings.TrimSpace(state), logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSystemdUnit checks the unit with systemd-analyze: `verify` must print nothing (it exits 0
// on unknown keys and bad values and only warns, so any output is a failure), and broken
// variants of the unit must be caught.
func TestSystemdUnit(t *testing.T) {
	requireTool(t, "systemd-analyze")
	unit, err := os.ReadFile("systemd/ftpalg.service")
	if err != nil {
		t.Fatal(err)
	}
	const shippedPath = "/usr/local/bin/ftpalg"
	if !bytes.Contains(unit, []byte("ExecStart="+shippedPath+" run ")) {
		t.Fatalf("ExecStart does not run %s run", shippedPath)
	}
	// verify needs ExecStart's program to exist: point it at a freshly built daemon.
	bin := filepath.Join(ftpalgBinary(t), "ftpalg")
	tests := []struct {
		name     string
		old, new string // edit to the shipped unit; none for the unit as shipped
		wantErr  string // a substring of the verify output; "" for a clean verify
	}{
		{name: "as shipped"},
		{name: "misspelt key", old: "AmbientCapabilities=", new: "AmbientCapabilites=", wantErr: "Unknown key"},
		{name: "bad service type", old: "Type=simple", new: "Type=simpel", wantErr: "Failed to parse service type"},
		{name: "bad address family", old: "RestrictAddressFamilies=AF_NETLINK", new: "RestrictAddressFamilies=AF_NETLNK", wantErr: "address family"},
		{name: "binary missing", old: bin, new: "/nonexistent/ftpalg", wantErr: "is not executable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(string(unit), "ExecStart="+shippedPath, "ExecStart="+bin, 1)
			if tt.old != "" {
				if !strings.Contains(text, tt.old) {
					t.Fatalf("unit does not contain %q: stale test case", tt.old)
				}
				text = strings.Replace(text, tt.old, tt.new, 1)
			}
			path := filepath.Join(t.TempDir(), "ftpalg.service")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
			got := strings.TrimSpace(string(out))
			if tt.wantErr == "" {
				if err != nil || got != "" {
					t.Errorf("systemd-analyze verify: %v\n%s", err, got)
				}
				return
			}
			if !strings.Contains(got, tt.wantErr) {
				t.Errorf("systemd-analyze verify: want output containing %q, got %v %q", tt.wantErr, err, got)
			}
		})
	}

	t.Run("exposure", func(t *testing.T) {
		// systemd's own sandboxing score (0 best .. 10 worst); it exits non-zero above the
		// threshold (tenths). The unit scores 2.1; 2.5 leaves room for systemd version drift only.
		path := filepath.Join(t.TempDir(), "ftpalg.service")
		if err := os.WriteFile(path, []byte(strings.Replace(string(unit), "ExecStart="+shippedPath, "ExecStart="+bin, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=25", "--no-pager", path).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security above 2.5: %v\n%s", err, out)
		}
	})
}

// TestSystemdDirectives checks the unit's security-relevant settings, which systemd-analyze
// accepts whatever their value.
func TestSystemdDirectives(t *testing.T) {
	got := unitKeys(t, "systemd/ftpalg.service")
	want := map[string][]string{
		"Type":                    {"simple"},
		"User":                    {"root"},
		"Restart":                 {"on-failure"},
		"KillSignal":              {"SIGTERM"},
		"TimeoutStopSec":          {"10"},
		"RuntimeDirectory":        nil, // no state files: the kernel holds the sessions' truth
		"ExecStopPost":            nil, // a restart must not remove the table (ftpalg cleanup is manual)
		"AmbientCapabilities":     {"CAP_NET_ADMIN"},
		"CapabilityBoundingSet":   {"CAP_NET_ADMIN"},
		"NoNewPrivileges":         {"yes"},
		"ProtectSystem":           {"strict"},
		"ProtectHome":             {"yes"},
		"PrivateTmp":              {"yes"},
		"ProtectKernelTunables":   {"yes"},
		"ProtectKernelModules":    {"yes"},
		"RestrictAddressFamilies": {"AF_NETLINK AF_INET AF_INET6 AF_UNIX"},
		"SystemCallArchitectures": {"native"},
		"MemoryMax":               {"256M"},
		"PrivateUsers":            nil, // must stay in the host user namespace
		"PrivateNetwork":          nil, // must see the host's packets
	}
	sub := map[string][]string{}
	for k := range want {
		if v := got[k]; v != nil {
			sub[k] = v
		}
	}
	for k, v := range want {
		if v == nil {
			delete(want, k)
		}
	}
	if diff := cmp.Diff(want, sub); diff != "" {
		t.Errorf("ftpalg.service [Service] settings (-want +got):\n%s", diff)
	}
	execStart := got["ExecStart"]
	if len(execStart) != 1 {
		t.Fatalf("want one ExecStart, got %q", execStart)
	}
	for _, flag := range []string{"run", "--ports 21", "--log-format json", "--metrics-listen 127.0.0.1:" + strconv.Itoa(metricsPort)} {
		if !strings.Contains(execStart[0], " "+flag) {
			t.Errorf("ExecStart lacks %q: %s", flag, execStart[0])
		}
	}
}

// unitKeys returns the [Service] section's settings, in order per key.
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	section := ""
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: not key=value: %q", path, line)
			}
			keys[k] = append(keys[k], v)
		}
	}
	return keys
}

// TestModulesLoad checks the modules-load.d file lists the modules ftpalg needs, one per line.
func TestModulesLoad(t *testing.T) {
	b, err := os.ReadFile("systemd/ftpalg-modules.conf")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' && line[0] != ';' {
			got = append(got, line)
		}
	}
	want := []string{"nf_conntrack_sane", "nfnetlink_queue", "xt_NFQUEUE", "nf_conntrack_netlink", "nft_ct"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modules (-want +got):\n%s", diff)
	}
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Panels        []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			X, Y, W, H int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
}

var metricRef = regexp.MustCompile(`\bftpalg_[a-z0-9_]+`)

// TestGrafanaDashboard checks the dashboard is valid JSON with well-formed panels, shows the
// metrics operators need, and names only metrics the daemon registers (gateway/metrics.go).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/ftpalg.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/ftpalg.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Errorf("dashboard needs uid, title, schemaVersion and panels: %+v", d)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	if diff := cmp.Diff([]string{"datasource", "instance"}, vars); diff != "" {
		t.Errorf("template variables (-want +got):\n%s", diff)
	}

	ids := map[int]bool{}
	used := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || p.Type == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d: needs a title, a type and targets", p.ID)
		}
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: gridPos %+v outside Grafana's 24 columns", p.ID, p.Title, p.GridPos)
		}
		for _, tg := range p.Targets {
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || tg.RefID == "" {
				t.Errorf("panel %d %q: target %q: unbalanced parentheses or no refId", p.ID, p.Title, tg.Expr)
			}
			for _, m := range metricRef.FindAllString(tg.Expr, -1) {
				used[m] = true
			}
		}
	}

	registered := daemonMetrics(t)
	for m := range used {
		base := m
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if s, ok := strings.CutSuffix(m, suf); ok && registered[s] {
				base = s
			}
		}
		if !registered[base] {
			t.Errorf("dashboard uses %s, which the daemon (gateway) does not register", m)
		}
	}
	for _, m := range []string{
		"ftpalg_pinholes_opened_total", "ftpalg_pinholes_used_total", "ftpalg_pinholes_expired_total",
		"ftpalg_rejections_total", "ftpalg_packets_total", "ftpalg_sessions",
		"ftpalg_packet_duration_seconds_bucket", "ftpalg_queue_errors_total",
	} {
		if !used[m] {
			t.Errorf("dashboard does not show %s", m)
		}
	}
}

// daemonMetrics returns the metric names declared as string constants in gateway/metrics.go.
func daemonMetrics(t *testing.T) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../gateway/metrics.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if s, err := strconv.Unquote(lit.Value); err == nil && metricRef.MatchString(s) && metricRef.FindString(s) == s {
				names[s] = true
			}
		}
		return true
	})
	if len(names) == 0 {
		t.Fatal("no ftpalg_ metric names found in gateway/metrics.go")
	}
	return names
}
