package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var kubeFiles = []string{
	"../kubernetes/namespace.yaml",
	"../kubernetes/serviceaccount.yaml",
	"../kubernetes/daemonset.yaml",
}

const composeFile = "../compose.yaml"

// TestShipped checks the files as they are in the repository.
func TestShipped(t *testing.T) {
	docs, errs := checkKubernetes(kubeFiles)
	for _, err := range errs {
		t.Error(err)
	}
	var kinds []string
	for _, d := range docs {
		kinds = append(kinds, d.obj.GetObjectKind().GroupVersionKind().Kind)
	}
	if diff := cmp.Diff([]string{"Namespace", "ServiceAccount", "DaemonSet"}, kinds); diff != "" {
		t.Errorf("kinds (-want +got):\n%s", diff)
	}
	for _, err := range checkCompose(composeFile) {
		t.Error(err)
	}
}

// mutate copies the shipped files to a temporary directory with one edit applied to file, so
// that each negative case differs from a passing set in exactly one place.
func mutate(t *testing.T, file, old, new string) (kube []string, compose string) {
	t.Helper()
	dir := t.TempDir()
	edited := false
	cp := func(src string) string {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(src) == file {
			if !strings.Contains(string(b), old) {
				t.Fatalf("%s does not contain %q: the test case is stale", src, old)
			}
			b = []byte(strings.Replace(string(b), old, new, 1))
			edited = true
		}
		dst := filepath.Join(dir, filepath.Base(src))
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	for _, f := range kubeFiles {
		kube = append(kube, cp(f))
	}
	compose = cp(composeFile)
	if !edited {
		t.Fatalf("no file named %s", file)
	}
	return kube, compose
}

func TestBrokenKubernetes(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		old, new string
		want     string // a substring of one reported error
	}{
		{"unknown field (schema)", "daemonset.yaml", "hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true", "schema: .spec.template.spec.hostNetwrok: field not declared in schema"},
		{"wrong type (schema)", "daemonset.yaml", "hostNetwork: true", `hostNetwork: "yes"`, "schema: .spec.template.spec.hostNetwork: expected boolean"},
		{"bad quantity", "daemonset.yaml", "memory: 256Mi", "memory: 256MB", "decode:"},
		{"duplicate key", "daemonset.yaml", "      hostPID: false", "      hostPID: false\n      hostPID: true", `yaml: unmarshal errors`},
		{"unknown kind", "serviceaccount.yaml", "kind: ServiceAccount", "kind: ServiceAcount", "unknown kind"},
		{"host network off", "daemonset.yaml", "hostNetwork: true", "hostNetwork: false", "hostNetwork must be true"},
		{"pod user namespace", "daemonset.yaml", "      hostUsers: true\n", "      hostUsers: false\n", "hostUsers must be set to true"},
		{"dns policy", "daemonset.yaml", "dnsPolicy: ClusterFirstWithHostNet", "dnsPolicy: ClusterFirst", "dnsPolicy must be ClusterFirstWithHostNet"},
		{"extra capability", "daemonset.yaml", `add: ["NET_ADMIN"]`, `add: ["NET_ADMIN", "SYS_ADMIN"]`, "capabilities.add must be [NET_ADMIN]"},
		{"capabilities kept", "daemonset.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "capabilities.drop must be [ALL]"},
		{"privileged", "daemonset.yaml", "privileged: false", "privileged: true", "must not be privileged"},
		{"escalation", "daemonset.yaml", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true", "allowPrivilegeEscalation must be false"},
		{"writable root", "daemonset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true"},
		{"non-root uid", "daemonset.yaml", "            runAsUser: 0\n            runAsNonRoot: false", "            runAsUser: 1000", "runAsUser must be 0"},
		{"probe path", "daemonset.yaml", "path: /healthz\n              port: metrics\n            periodSeconds: 10", "path: /metrics\n              port: metrics\n            periodSeconds: 10", "readinessProbe path \"/metrics\""},
		{"metrics port mismatch", "daemonset.yaml", "--metrics-listen=:9821", "--metrics-listen=:9822", "no container port 9822"},
		{"host port differs", "daemonset.yaml", "hostPort: 9821", "hostPort: 19821", "hostPort must equal containerPort"},
		{"request above limit", "daemonset.yaml", "memory: 32Mi", "memory: 512Mi", "memory request 512Mi is above its limit 256Mi"},
		{"selector mismatch", "daemonset.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: ftpalg", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: other", "does not match the template's labels"},
		{"namespace missing", "namespace.yaml", "name: ftpalg", "name: ftpalg-other", `namespace "ftpalg" is not defined`},
		{"pod security", "namespace.yaml", "enforce: privileged", "enforce: baseline", "pod-security.kubernetes.io/enforce must be privileged"},
		{"token mounted", "serviceaccount.yaml", "automountServiceAccountToken: false", "automountServiceAccountToken: true", "automountServiceAccountToken must be false"},
		{"no args", "daemonset.yaml", "            - run\n", "", `args must start with "run"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube, _ := mutate(t, tt.file, tt.old, tt.new)
			_, errs := checkKubernetes(kube)
			if !containsErr(errs, tt.want) {
				t.Errorf("want an error containing %q, got %v", tt.want, errs)
			}
		})
	}
}

func TestBrokenCompose(t *testing.T) {
	tests := []struct {
		name     string
		old, new string
		want     string
	}{
		{"unknown key (schema)", "read_only: true", "read_only: true\n    readonly: true", "services.ftpalg.readonly"},
		{"wrong type (schema)", "read_only: true", "read_only: [true]", "services.ftpalg.read_only"},
		{"bridge network", "network_mode: host", "network_mode: bridge", `network_mode must be host, got "bridge"`},
		{"remapped users", "userns_mode: host", "userns_mode: auto", `userns_mode must be host`},
		{"all capabilities", "cap_drop:\n      - ALL", "cap_drop:\n      - NET_RAW", "cap_drop must be [ALL]"},
		{"extra capability", "cap_add:\n      - NET_ADMIN", "cap_add:\n      - NET_ADMIN\n      - SYS_ADMIN", "cap_add must be [NET_ADMIN]"},
		{"restart always", "restart: unless-stopped", "restart: always", `restart must be unless-stopped, got "always"`},
		{"command", "      - run\n", "      - rules\n", "command must start with run"},
		{"healthcheck", "mem_limit: 256m", "mem_limit: 256m\n    healthcheck:\n      test: [\"CMD\", \"/ftpalg\", \"version\"]", "a healthcheck cannot run"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, compose := mutate(t, "compose.yaml", tt.old, tt.new)
			if errs := checkCompose(compose); !containsErr(errs, tt.want) {
				t.Errorf("want an error containing %q, got %v", tt.want, errs)
			}
		})
	}
}

func containsErr(errs []error, want string) bool {
	for _, err := range errs {
		if strings.Contains(fmt.Sprint(err), want) {
			return true
		}
	}
	return false
}
