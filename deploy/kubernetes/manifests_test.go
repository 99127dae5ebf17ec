// Package kubernetes checks the manifests in this directory. It is a module
// of its own so that the kms-ha binary never links k8s.io; `make unit` runs
// its tests.
package kubernetes

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const namespace = "kms-ha"

// kustomization is the part of kustomization.yaml that is used here; it is
// not a Kubernetes API object, so it is decoded strictly into this.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

type manifests struct {
	files       []string
	namespaces  []*corev1.Namespace
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	sets        []*appsv1.StatefulSet
	pdbs        []*policyv1.PodDisruptionBudget
	netpols     []*networkingv1.NetworkPolicy
	kustomizeFn []string
}

// load decodes every document of every *.yaml file here strictly with the
// Kubernetes API types: an unknown kind, an unknown or misspelt field, a
// duplicate field or a value of the wrong type fails.
func load(t *testing.T) manifests {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if f == "kustomization.yaml" {
			var k kustomization
			if err := yaml.UnmarshalStrict(b, &k); err != nil {
				t.Errorf("%s: %v", f, err)
			}
			m.kustomizeFn = k.Resources
			continue
		}
		m.files = append(m.files, f)
		for i, doc := range splitDocs(b) {
			obj, gvk, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Errorf("%s, document %d: %v", f, i+1, err)
				continue
			}
			switch o := obj.(type) {
			case *corev1.Namespace:
				m.namespaces = append(m.namespaces, o)
			case *corev1.Service:
				m.services = append(m.services, o)
			case *corev1.ConfigMap:
				m.configMaps = append(m.configMaps, o)
			case *corev1.Secret:
				m.secrets = append(m.secrets, o)
			case *appsv1.StatefulSet:
				m.sets = append(m.sets, o)
			case *policyv1.PodDisruptionBudget:
				m.pdbs = append(m.pdbs, o)
			case *networkingv1.NetworkPolicy:
				m.netpols = append(m.netpols, o)
			default:
				t.Errorf("%s, document %d: unexpected kind %s", f, i+1, gvk)
			}
		}
	}
	return m
}

func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(b, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l...)
			out = append(out, '\n')
		}
	}
	return out
}

func one[T any](t *testing.T, what string, xs []T) T {
	t.Helper()
	if len(xs) != 1 {
		t.Fatalf("want exactly one %s, found %d", what, len(xs))
	}
	return xs[0]
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := load(t)
	if t.Failed() {
		return
	}
	// kubectl apply -k applies exactly the files here.
	if got, want := slices.Sorted(slices.Values(m.kustomizeFn)), m.files; !slices.Equal(got, want) {
		t.Errorf("kustomization.yaml resources %v, want every manifest here: %v", got, want)
	}
}

// TestUnknownFieldFails: the decoder used above refuses a misspelt field,
// so a typo in a manifest cannot pass.
func TestUnknownFieldFails(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := appsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	b, err := os.ReadFile("statefulset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typo := bytes.Replace(b, []byte("serviceName:"), []byte("serviceNmae:"), 1)
	if _, _, err := dec.Decode(typo, nil, nil); err == nil {
		t.Fatal("a StatefulSet with serviceNmae decoded without error")
	}
}

func TestStatefulSet(t *testing.T) {
	m := load(t)
	ss := one(t, "StatefulSet", m.sets)
	svc := one(t, "Service", m.services)
	cm := one(t, "ConfigMap", m.configMaps)
	sec := one(t, "Secret", m.secrets)
	labels := ss.Spec.Template.Labels

	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", ss.Spec.Replicas)
	}
	for k, v := range ss.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, labels)
		}
	}
	// Stable network ids: a headless Service that publishes pods before
	// they are ready (peers must reach a node to admit it).
	if ss.Spec.ServiceName != svc.Name || svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("serviceName %q: want the headless Service %q (clusterIP None, publishNotReadyAddresses)", ss.Spec.ServiceName, svc.Name)
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("Service selector %s=%s does not select the pods", k, v)
		}
	}

	// Anti-affinity across machines (required) and zones.
	aa := ss.Spec.Template.Spec.Affinity.PodAntiAffinity
	if aa == nil {
		t.Fatal("no podAntiAffinity")
	}
	var required, preferred []string
	for _, term := range aa.RequiredDuringSchedulingIgnoredDuringExecution {
		required = append(required, term.TopologyKey)
	}
	for _, w := range aa.PreferredDuringSchedulingIgnoredDuringExecution {
		preferred = append(preferred, w.PodAffinityTerm.TopologyKey)
	}
	if !slices.Contains(required, "kubernetes.io/hostname") {
		t.Errorf("required anti-affinity topology keys %v: want kubernetes.io/hostname", required)
	}
	if !slices.Contains(append(required, preferred...), "topology.kubernetes.io/zone") {
		t.Errorf("anti-affinity has no topology.kubernetes.io/zone term")
	}

	c := one(t, "container", ss.Spec.Template.Spec.Containers)
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["raft"] != 7001 || ports["api"] != 7101 || ports["metrics"] == 0 {
		t.Errorf("container ports %v: want raft 7001, api 7101, metrics", ports)
	}
	for _, sp := range svc.Spec.Ports {
		if _, ok := ports[sp.TargetPort.StrVal]; !ok {
			t.Errorf("Service port %s targets %q, not a container port", sp.Name, sp.TargetPort.String())
		}
	}
	probe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port != intstr.FromString("metrics") {
			t.Errorf("%s: want HTTP GET %s on the metrics port, got %+v", name, path, p)
		}
	}
	probe("livenessProbe", c.LivenessProbe, "/healthz")
	probe("readinessProbe", c.ReadinessProbe, "/readyz")
	probe("startupProbe", c.StartupProbe, "/healthz")

	// Node id = pod name.
	var podName bool
	for _, e := range c.Env {
		if e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			podName = true
		}
	}
	if !podName {
		t.Error("no POD_NAME from metadata.name: the entrypoint names the node after its pod")
	}

	// Volumes: every mount has a volume; the ConfigMap, the Secret and
	// the claim template exist; the entrypoint is the ConfigMap's.
	vols := map[string]corev1.Volume{}
	for _, v := range ss.Spec.Template.Spec.Volumes {
		vols[v.Name] = v
	}
	for _, vct := range ss.Spec.VolumeClaimTemplates {
		vols[vct.Name] = corev1.Volume{Name: vct.Name}
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		if _, ok := vols[vm.Name]; !ok {
			t.Errorf("volumeMount %s has no volume", vm.Name)
		}
		mounts[vm.Name] = vm.MountPath
	}
	if v := vols["config"]; v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
		t.Errorf("volume config: want ConfigMap %s", cm.Name)
	}
	if v := vols["secrets"]; v.Secret == nil || v.Secret.SecretName != sec.Name {
		t.Errorf("volume secrets: want Secret %s", sec.Name)
	}
	if _, ok := mounts["data"]; !ok {
		t.Error("no persistent data volume mounted")
	}
	if len(c.Command) != 2 || c.Command[1] != filepath.Join(mounts["config"], "entrypoint.sh") || cm.Data["entrypoint.sh"] == "" {
		t.Errorf("command %v: want bash running the ConfigMap's entrypoint.sh", c.Command)
	}
	if !strings.Contains(cm.Data["kms.yaml"], "node_id: __POD_NAME__") {
		t.Error("the ConfigMap's kms.yaml does not take its node id from the pod name")
	}
	// The Secret carries a certificate and key for every ordinal.
	for i := range int(*ss.Spec.Replicas) {
		for _, ext := range []string{".crt", ".key"} {
			k := ss.Name + "-" + string(rune('0'+i)) + ext
			if _, ok := sec.StringData[k]; !ok {
				if _, ok := sec.Data[k]; !ok {
					t.Errorf("Secret %s has no %s", sec.Name, k)
				}
			}
		}
	}
	if ss.Spec.Template.Spec.TerminationGracePeriodSeconds == nil || *ss.Spec.Template.Spec.TerminationGracePeriodSeconds < 10 {
		t.Error("terminationGracePeriodSeconds must leave the leader time to hand over (at least 10 s)")
	}
}

func TestDisruptionBudgetAndNetworkPolicy(t *testing.T) {
	m := load(t)
	ss := one(t, "StatefulSet", m.sets)
	labels := ss.Spec.Template.Labels
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}

	pdb := one(t, "PodDisruptionBudget", m.pdbs)
	if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget: want maxUnavailable 1 only, got max %v min %v", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	if !selects(pdb.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods", pdb.Spec.Selector.MatchLabels)
	}

	np := one(t, "NetworkPolicy", m.netpols)
	if !selects(np.Spec.PodSelector.MatchLabels) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Fatalf("NetworkPolicy must select the pods and restrict Ingress")
	}
	// Raft and API ports: admitted only by rules whose every source is a
	// member pod of this namespace.
	for _, port := range []int32{7001, 7101} {
		admitted := false
		for _, rule := range np.Spec.Ingress {
			if !rulePort(rule, port) {
				continue
			}
			admitted = true
			if len(rule.From) == 0 {
				t.Errorf("port %d is open to everyone", port)
			}
			for _, from := range rule.From {
				if from.PodSelector == nil || from.NamespaceSelector != nil || from.IPBlock != nil || !selects(from.PodSelector.MatchLabels) {
					t.Errorf("port %d admitted from %+v, not only from the members", port, from)
				}
			}
		}
		if !admitted {
			t.Errorf("port %d is not admitted from the members", port)
		}
	}
}

func rulePort(rule networkingv1.NetworkPolicyIngressRule, port int32) bool {
	if len(rule.Ports) == 0 {
		return true // every port
	}
	for _, p := range rule.Ports {
		if p.Port == nil || p.Port.IntVal == port {
			return true
		}
	}
	return false
}

func TestNamespace(t *testing.T) {
	m := load(t)
	one(t, "Namespace", m.namespaces)
	check := func(kind, name, ns string) {
		if ns != namespace {
			t.Errorf("%s %s: namespace %q, want %q", kind, name, ns, namespace)
		}
	}
	for _, o := range m.services {
		check("Service", o.Name, o.Namespace)
	}
	for _, o := range m.configMaps {
		check("ConfigMap", o.Name, o.Namespace)
	}
	for _, o := range m.secrets {
		check("Secret", o.Name, o.Namespace)
	}
	for _, o := range m.sets {
		check("StatefulSet", o.Name, o.Namespace)
	}
	for _, o := range m.pdbs {
		check("PodDisruptionBudget", o.Name, o.Namespace)
	}
	for _, o := range m.netpols {
		check("NetworkPolicy", o.Name, o.Namespace)
	}
}
