package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/e2e/lab"
)

// Binaries built once by TestMain.
var (
	ftpalgBin, ftppeerBin string
	ftpalgErr, ftppeerErr error
	binDir                string
	requiredTools         = []string{"ip", "nft", "vsftpd", "curl", "lftp", "sysctl"}
	defaultOpTimeout      = 20 * time.Second
	negativeOpTimeout     = 4 * time.Second
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() == 0 && runtime.GOOS == "linux" {
		var err error
		binDir, err = os.MkdirTemp("", "ftpalg-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(binDir)
		ftpalgBin, ftpalgErr = goBuild("ftpalg", "./cmd/ftpalg")
		ftppeerBin, ftppeerErr = goBuild("ftppeer", "./e2e/cmd/ftppeer")
	}
	return m.Run()
}

// goBuild builds a main package of the module (paths relative to the module root, which is
// the parent of this package's directory).
func goBuild(name, pkg string) (string, error) {
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goTool = p
	}
	out := filepath.Join(binDir, name)
	cmd := exec.Command(goTool, "build", "-o", out, pkg)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// toolBuilds holds one build of each e2e/cmd tool per test binary, by name (TestMain builds
// only ftpalg and ftppeer; the others are built by the first test that needs them).
var toolBuilds sync.Map // name -> func() (string, error)

// requireTool returns the path of e2e/cmd/<name>, built once; a failed build fails the test.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	build, _ := toolBuilds.LoadOrStore(name, sync.OnceValues(func() (string, error) {
		return goBuild(name, "./e2e/cmd/"+name)
	}))
	bin, err := build.(func() (string, error))()
	if err != nil {
		t.Fatalf("build %s: %v", name, err)
	}
	return bin
}

// requireLab skips when the lab cannot run here (not root: the lab creates network
// namespaces), and fails when a tool is missing under CI=true (CI installs them all).
func requireLab(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("e2e lab needs root on Linux: it creates network namespaces, veth links and nftables rules")
	}
	var missing []string
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing tools %v (bash .ci/deps installs them)", missing)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if ftppeerErr != nil {
		t.Fatalf("ftppeer: %v", ftppeerErr)
	}
}

// requireFtpalg fails the test when the daemon did not build.
func requireFtpalg(t *testing.T) {
	t.Helper()
	if ftpalgErr != nil {
		t.Fatalf("ftpalg daemon did not build: %v", ftpalgErr)
	}
}

// newLab builds a lab and registers its teardown, which also checks that none of its
// namespaces is left behind.
func newLab(t *testing.T, cfg lab.Config) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	l, err := lab.New(ctx, cfg)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab teardown: %v", err)
		}
		for _, n := range l.Namespaces() {
			if _, err := os.Stat("/run/netns/" + n); err == nil {
				t.Errorf("namespace %s left after teardown", n)
			}
		}
	})
	return l
}

// startFtpalg runs the daemon in the lab's router (lab.StartFtpalg waits for its ready
// event) and stops it at cleanup, checking the shutdown contract (exit 0 within 5 s, table
// inet ftpalg left in place), then runs `ftpalg cleanup` twice (exit 0, table gone). A daemon
// the test already ended (Stop, or kill -9 in the reliability tests) was judged by that test
// and is only cleaned up after.
func startFtpalg(t *testing.T, l *lab.Lab, args []string) *lab.Daemon {
	t.Helper()
	requireFtpalg(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := l.StartFtpalg(ctx, ftpalgBin, args)
	if err != nil {
		t.Fatalf("start ftpalg: %v", err)
	}
	t.Cleanup(func() {
		select {
		case <-d.Proc.Done():
		default:
			if err := d.Stop(); err != nil {
				t.Errorf("ftpalg shutdown: %v", err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := l.FtpalgCleanup(ctx, ftpalgBin); err != nil {
			t.Errorf("%v", err)
		}
		if t.Failed() {
			t.Logf("ftpalg %v stdout (last 60 lines):\n%s\nstderr:\n%s", d.Args, lastLines(d.Lines(), 60), d.Stderr.String())
		}
	})
	return d
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
