package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// doc is one YAML document of a manifest file, decoded twice: as plain data (checked against
// the Kubernetes schema) and as the typed Go object (checked strictly, then for our invariants).
type doc struct {
	file  string
	index int
	obj   runtime.Object
}

func (d doc) String() string { return fmt.Sprintf("%s#%d", d.file, d.index) }

// typeConverter validates plain objects against the schema compiled into client-go (the
// structured-merge-diff form of the Kubernetes OpenAPI schema of the pinned version). It is
// what server-side apply uses: an undeclared field or a wrong type is an error.
var typeConverter = applyconfigurations.NewTypeConverter(scheme.Scheme)

// checkKubernetes validates every document of files as a Kubernetes object, then checks
// ftpalg's invariants across them. It returns every problem found, not only the first.
func checkKubernetes(files []string) ([]doc, []error) {
	var docs []doc
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d, e := decodeManifests(f, b)
		errs = append(errs, e...)
		docs = append(docs, d...)
	}
	if len(errs) == 0 {
		errs = append(errs, checkInvariants(docs)...)
	}
	return docs, errs
}

// decodeManifests splits a file into documents and validates each.
func decodeManifests(file string, b []byte) ([]doc, []error) {
	var docs []doc
	var errs []error
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for i := 0; ; i++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: split documents: %w", file, err))
			break
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		d, err := decodeOne(file, i, raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		docs = append(docs, d)
	}
	if len(docs) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no Kubernetes object", file))
	}
	return docs, errs
}

func stripComments(b []byte) []byte {
	var out []byte
	for line := range bytes.Lines(b) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

func decodeOne(file string, index int, raw []byte) (doc, error) {
	where := fmt.Sprintf("%s#%d", file, index)
	// Duplicate keys are an error here (a silent last-wins is how a setting goes missing).
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		return doc{}, fmt.Errorf("%s: yaml: %w", where, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return doc{}, fmt.Errorf("%s: %w", where, err)
	}
	gvk := u.GroupVersionKind()
	where = fmt.Sprintf("%s (%s %s)", where, gvk.Kind, u.GetName())
	if !scheme.Scheme.Recognizes(gvk) {
		return doc{}, fmt.Errorf("%s: unknown kind %s for this Kubernetes version", where, gvk)
	}
	// 1. The OpenAPI schema: undeclared fields, wrong types, wrong list/map shapes.
	if _, err := typeConverter.ObjectToTyped(u); err != nil {
		return doc{}, fmt.Errorf("%s: schema: %w", where, err)
	}
	// 2. The Go types, strictly: quantities ("256Mi"), int-or-string ports, durations, enums
	// that the schema only knows as strings, and unknown fields once more.
	obj, err := scheme.Scheme.New(gvk)
	if err != nil {
		return doc{}, fmt.Errorf("%s: %w", where, err)
	}
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		return doc{}, fmt.Errorf("%s: decode: %w", where, err)
	}
	if u.GetName() == "" {
		return doc{}, fmt.Errorf("%s: metadata.name is empty", where)
	}
	return doc{file: file, index: index, obj: obj}, nil
}

// checkInvariants checks what ftpalg needs from its manifests: the properties that, if lost in
// an edit, give a pod that starts but cannot work (or works with more privilege than it needs).
func checkInvariants(docs []doc) []error {
	var errs []error
	fail := func(d doc, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", d, fmt.Sprintf(format, a...)))
	}
	namespaces := map[string]bool{}
	accounts := map[string]bool{} // namespace/name
	var sets []doc
	for _, d := range docs {
		switch o := d.obj.(type) {
		case *corev1.Namespace:
			namespaces[o.Name] = true
			if o.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
				fail(d, "namespace %s: label pod-security.kubernetes.io/enforce must be privileged (hostNetwork and NET_ADMIN are refused otherwise)", o.Name)
			}
		case *corev1.ServiceAccount:
			accounts[o.Namespace+"/"+o.Name] = true
			if o.AutomountServiceAccountToken == nil || *o.AutomountServiceAccountToken {
				fail(d, "service account %s: automountServiceAccountToken must be false (ftpalg does not use the API)", o.Name)
			}
		case *appsv1.DaemonSet:
			sets = append(sets, d)
		}
	}
	if len(sets) != 1 {
		errs = append(errs, fmt.Errorf("want exactly one DaemonSet, found %d", len(sets)))
		return errs
	}
	d := sets[0]
	ds := d.obj.(*appsv1.DaemonSet)
	if ds.Namespace == "" || !namespaces[ds.Namespace] {
		fail(d, "namespace %q is not defined by these manifests", ds.Namespace)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	switch {
	case err != nil:
		fail(d, "spec.selector: %v", err)
	case sel.Empty():
		fail(d, "spec.selector is empty")
	case !sel.Matches(labels.Set(ds.Spec.Template.Labels)):
		fail(d, "spec.selector %s does not match the template's labels", sel)
	}

	ps := ds.Spec.Template.Spec
	if !accounts[ds.Namespace+"/"+ps.ServiceAccountName] {
		fail(d, "serviceAccountName %q is not defined in namespace %s by these manifests", ps.ServiceAccountName, ds.Namespace)
	}
	if !ps.HostNetwork {
		fail(d, "hostNetwork must be true (ftpalg works on the node's own packets)")
	}
	if ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		fail(d, "dnsPolicy must be ClusterFirstWithHostNet with hostNetwork, got %q", ps.DNSPolicy)
	}
	if ps.HostUsers == nil || !*ps.HostUsers {
		fail(d, "hostUsers must be set to true (NFQUEUE payload changes are refused in a pod user namespace)")
	}
	if ps.HostPID || ps.HostIPC {
		fail(d, "hostPID and hostIPC must stay false")
	}
	if g := ps.TerminationGracePeriodSeconds; g == nil || *g < 10 || *g > 60 {
		fail(d, "terminationGracePeriodSeconds must be set within 10-60 (ftpalg removes its table on SIGTERM)")
	}
	if len(ps.Tolerations) == 0 {
		fail(d, "no tolerations: tainted router nodes would get no ftpalg")
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		fail(d, "automountServiceAccountToken must be false in the pod")
	}
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 0 {
		fail(d, "want exactly one container and no init containers, got %d and %d", len(ps.Containers), len(ps.InitContainers))
		return errs
	}
	c := ps.Containers[0]
	errs = append(errs, checkContainer(d, ds, c)...)
	return errs
}

func checkContainer(d doc, ds *appsv1.DaemonSet, c corev1.Container) []error {
	var errs []error
	fail := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: container %s: %s", d, c.Name, fmt.Sprintf(format, a...)))
	}
	if c.Image == "" {
		fail("no image")
	}
	if len(c.Command) != 0 {
		fail("command overrides the image's entrypoint /ftpalg; set args only")
	}
	if len(c.Args) == 0 || c.Args[0] != "run" {
		fail("args must start with \"run\", got %q", c.Args)
	}
	metricsPort := 0
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--metrics-listen="); ok {
			_, p, err := net.SplitHostPort(v)
			if err == nil {
				metricsPort, err = strconv.Atoi(p)
			}
			if err != nil {
				fail("--metrics-listen=%s: %v", v, err)
			}
		}
	}
	if metricsPort == 0 {
		fail("args need --metrics-listen=ADDR:PORT (the probes use /healthz there)")
	}

	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		fail("securityContext.capabilities must drop ALL and add NET_ADMIN")
	} else {
		if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			fail("capabilities.drop must be [ALL], got %v", sc.Capabilities.Drop)
		}
		if !slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
			fail("capabilities.add must be [NET_ADMIN], got %v", sc.Capabilities.Add)
		}
	}
	if sc != nil {
		if sc.Privileged != nil && *sc.Privileged {
			fail("must not be privileged")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			fail("allowPrivilegeEscalation must be false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			fail("readOnlyRootFilesystem must be true")
		}
		uid := sc.RunAsUser
		if uid == nil && ds.Spec.Template.Spec.SecurityContext != nil {
			uid = ds.Spec.Template.Spec.SecurityContext.RunAsUser
		}
		if uid == nil || *uid != 0 {
			fail("runAsUser must be 0 (a non-root UID does not get an added capability)")
		}
	}

	var metrics *corev1.ContainerPort
	for i, p := range c.Ports {
		if p.HostPort != 0 && p.HostPort != p.ContainerPort {
			fail("port %s: with hostNetwork, hostPort must equal containerPort", p.Name)
		}
		if int(p.ContainerPort) == metricsPort {
			metrics = &c.Ports[i]
		}
	}
	if metrics == nil {
		fail("no container port %d for --metrics-listen", metricsPort)
	} else if a := ds.Spec.Template.Annotations["prometheus.io/port"]; a != "" && a != strconv.Itoa(metricsPort) {
		fail("annotation prometheus.io/port %s is not the metrics port %d", a, metricsPort)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
	}{{"readinessProbe", c.ReadinessProbe}, {"livenessProbe", c.LivenessProbe}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			fail("%s must be an httpGet of /healthz", pr.name)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != "/healthz" {
			fail("%s path %q, want /healthz", pr.name, g.Path)
		}
		if metrics != nil && g.Port.String() != metrics.Name && g.Port.IntValue() != metricsPort {
			fail("%s port %s is not the metrics port %d", pr.name, g.Port.String(), metricsPort)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		if !okReq || !okLim {
			fail("resources: %s needs a request and a limit", r)
			continue
		}
		if req.Cmp(lim) > 0 {
			fail("resources: %s request %s is above its limit %s", r, req.String(), lim.String())
		}
	}
	return errs
}
