package e2e

// A real node for the real-node test: containerd and runc, a CNI bridge,
// a kubelet joined to the in-process API server, kube-controller-manager
// (node lifecycle, StatefulSet, PersistentVolume binding, the root CA
// ConfigMap, EndpointSlices), kube-scheduler and kube-proxy (so that pods reach the API server at the
// kubernetes Service, as in any cluster). All of it is built from the
// k8s.io/kubernetes module e2e/ already uses, runs as root on this machine,
// and is stopped and removed by the test that started it, failed or not.
// ../shared/notes/real-node.md has how each setting was found.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

const (
	nodeName    = "rnode"
	nodeBridge  = "rnode0"
	podSubnet   = "10.244.0.0/24"
	clusterCIDR = "10.244.0.0/16"
	// The names deploy/ is applied with: only these differ from the
	// shipped kustomization.
	managerImage = "docker.io/local/redis-operator:e2e"
	redisImage   = "docker.io/local/redis-server:e2e"
	pauseImage   = "registry.k8s.io/pause:3.6"
)

// node is one real node and the control plane it joined.
type node struct {
	t      testing.TB
	dir    string
	cp     *controlPlane
	admin  *kubernetes.Clientset
	socket string // containerd's
	procs  []*exec.Cmd
	// Whether the kubelet's iptables chains were there before the test.
	hadKubeletRules bool
	managers        map[string]string // version → a static manager binary
}

// nodeTools are what the machine must have; CI installs them.
var nodeTools = []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ldd", "nsenter", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"}

func startNode(t *testing.T) *node {
	if os.Geteuid() != 0 {
		t.Skip("a real node takes root: containerd, runc, network namespaces")
	}
	for _, tool := range nodeTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (apt-get install -y containerd runc containernetworking-plugins iptables): %v", tool, err)
		}
	}
	dir, err := os.MkdirTemp("", "rnode-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, dir: dir, socket: filepath.Join(dir, "containerd.sock"), managers: map[string]string{}}
	t.Cleanup(n.remove)
	start := time.Now()
	n.build()
	t.Logf("node: binaries built in %v", time.Since(start).Round(time.Second))
	n.startContainerd()
	n.importImages()
	n.startControlPlane()
	n.startComponents()
	t.Logf("node: %s ready in %v", nodeName, time.Since(start).Round(time.Second))
	return n
}

func (n *node) path(elem ...string) string { return filepath.Join(append([]string{n.dir}, elem...)...) }

// build compiles the node's components (cached by go build after the
// first time), the sandbox's pause, and two static managers: the shipped
// one and the one an in-place upgrade brings.
func (n *node) build() {
	bin := n.path("bin")
	build := exec.Command("go", "build", "-o", bin+"/", "k8s.io/kubernetes/cmd/kubelet",
		"k8s.io/kubernetes/cmd/kube-controller-manager", "k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kube-proxy")
	if out, err := build.CombinedOutput(); err != nil {
		n.t.Fatalf("building the node's components: %v\n%s", err, out)
	}
	if err := buildStatic(".", "./internal/pause", n.path("bin", "pause"), ""); err != nil {
		n.t.Fatal(err)
	}
	for _, v := range []string{"node", "node-v2"} {
		n.managers[v] = n.path("bin", "redis-operator-"+v)
		if err := buildStatic("..", ".", n.managers[v], "-X main.version="+v); err != nil {
			n.t.Fatal(err)
		}
	}
}

// start runs a component in the background, its output in dir/<name>.log.
func (n *node) start(name string, args ...string) *exec.Cmd {
	log, err := os.Create(n.path(name + ".log"))
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("%s: %v", name, err)
	}
	n.procs = append(n.procs, cmd)
	return cmd
}

func (n *node) write(name, content string) string {
	p := n.path(name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// ctr runs ctr against this node's containerd, in the CRI's namespace.
func (n *node) ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", n.socket, "-n", "k8s.io"}, args...)...).CombinedOutput()
	return string(out), err
}

// startContainerd runs containerd with its state under dir, the settings
// this machine needs (no AppArmor, no lowering of the OOM score a child
// cannot raise), and a bridge network of its own.
func (n *node) startContainerd() {
	n.write("cni/10-rnode.conflist", fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "rnode", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
  {"type": "loopback"}]}`, nodeBridge, podSubnet, n.path("cni-ipam")))
	conf := n.write("containerd.toml", fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  restrict_oom_score_adj = true
  sandbox_image = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, n.path("containerd", "root"), n.path("containerd", "state"), n.socket, pauseImage, n.path("cni")))
	n.start("containerd", "containerd", "--config", conf)
	eventually(n.t, 30*time.Second, "containerd to serve", func() bool {
		_, err := n.ctr("version")
		return err == nil
	})
}

// importImages makes the three images and loads them: the manager's, a
// Redis one (Debian's redis-server and its libraries) and the pause.
func (n *node) importImages() {
	redis, err := redisImageFiles()
	if err != nil {
		n.t.Fatal(err)
	}
	manager, err := staticFile("/redis-operator", n.managers["node"])
	if err != nil {
		n.t.Fatal(err)
	}
	pause, err := staticFile("/pause", n.path("bin", "pause"))
	if err != nil {
		n.t.Fatal(err)
	}
	images := []struct {
		ref   string
		files []imageFile
		cfg   imageConfig
	}{
		{managerImage, []imageFile{manager}, imageConfig{Entrypoint: []string{"/redis-operator"}, Cmd: []string{"version"}, User: "65532:65532"}},
		{redisImage, redis, imageConfig{Cmd: []string{"redis-server"}, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, User: "999:999"}},
		{pauseImage, []imageFile{pause}, imageConfig{Entrypoint: []string{"/pause"}, User: "65535:65535"}},
	}
	for i, img := range images {
		file := n.path(fmt.Sprintf("image-%d.tar", i))
		if err := writeImage(file, img.ref, img.files, img.cfg); err != nil {
			n.t.Fatal(err)
		}
		if out, err := n.ctr("images", "import", file); err != nil {
			n.t.Fatalf("importing %s: %v\n%s", img.ref, err, out)
		}
	}
}

// hostIP is this machine's address on its default route: where pods reach
// the API server once kube-proxy has translated the kubernetes Service.
func hostIP(t testing.TB) string {
	c, err := net.Dial("udp", "192.0.2.254:9") // no packet is sent
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// startControlPlane is the in-process API server of the other tests, with
// the ServiceAccount admission that gives pods their token, advertised at
// this machine's address (the test server listens on loopback: a proxy
// carries the advertised address to it).
func (n *node) startControlPlane() {
	ip := hostIP(n.t)
	n.cp = startControlPlaneWith(n.t, "--authorization-mode=RBAC", "--advertise-address="+ip)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(n.cp.admin.Host, "https://"))
	p := &cutProxy{t: n.t, target: "127.0.0.1:" + port, conns: map[net.Conn]bool{}}
	p.listen(net.JoinHostPort(ip, port))
	n.t.Cleanup(p.cut)
	n.admin = kubernetes.NewForConfigOrDie(n.cp.admin)
	// Registered after the API server's own clean-up, so run before it:
	// the pods are deleted through the API while the kubelet still runs.
	n.t.Cleanup(n.removePods)
}

// startComponents runs the kubelet, the controller manager, the scheduler
// and kube-proxy, and waits for the node to be Ready.
func (n *node) startComponents() {
	admin := n.cp.kubeconfigFor(n.t, n.cp.admin.BearerToken, n.cp.admin.Host)
	ca := n.write("ca.crt", n.servingCA())
	bin := func(name string) string { return n.path("bin", name) }
	n.start("kube-controller-manager", bin("kube-controller-manager"), "--kubeconfig", admin, "--leader-elect=false",
		"--controllers=node-lifecycle-controller,statefulset-controller,persistentvolume-binder-controller,root-ca-certificate-publisher-controller,endpointslice-controller,endpointslice-mirroring-controller,garbage-collector-controller,disruption-controller",
		"--root-ca-file", ca, "--secure-port=0")
	n.start("kube-scheduler", bin("kube-scheduler"), "--kubeconfig", admin, "--leader-elect=false", "--secure-port=0")
	n.start("kube-proxy", bin("kube-proxy"), "--kubeconfig", admin, "--hostname-override", nodeName, "--proxy-mode=iptables",
		"--cluster-cidr", clusterCIDR, "--conntrack-max-per-core=0",
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", freePort(n.t)), fmt.Sprintf("--healthz-bind-address=127.0.0.1:%d", freePort(n.t)))
	config := n.write("kubelet.yaml", fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
address: 127.0.0.1
healthzPort: 0
readOnlyPort: 0
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
`, n.socket, n.path("pod-logs")))
	n.hadKubeletRules = exec.Command("iptables", "-t", "mangle", "-S", "KUBE-KUBELET-CANARY").Run() == nil
	n.start("kubelet", bin("kubelet"), "--config", config, "--kubeconfig", admin, "--root-dir", n.path("kubelet"),
		"--hostname-override", nodeName, "--volume-plugin-dir", n.path("volume-plugins"))
	// The kubelet registers the node with a not-ready taint, which the
	// node lifecycle controller lifts once the node is Ready.
	eventually(n.t, 90*time.Second, "the node to be Ready, without taints", func() bool {
		node, err := n.admin.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		return len(node.Spec.Taints) == 0 && slices.ContainsFunc(node.Status.Conditions, func(c corev1.NodeCondition) bool {
			return c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue
		})
	})
}

// servingCA is the CA of the API server's serving certificate, as the
// server presents it (its chain ends with it): what pods trust through
// the kube-root-ca.crt ConfigMap. The admin's client config trusts another
// one, of the loopback certificate.
func (n *node) servingCA() string {
	c, err := tls.Dial("tcp", strings.TrimPrefix(n.cp.admin.Host, "https://"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		n.t.Fatal(err)
	}
	defer c.Close()
	chain := c.ConnectionState().PeerCertificates
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw}))
}

// localVolumes pre-creates one local PersistentVolume per instance on
// this node, for the StatefulSet's claims to bind.
func (n *node) localVolumes(count int) {
	for i := range count {
		dir := n.path("volumes", fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			n.t.Fatal(err)
		}
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("rnode-%d", i)},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName}}},
				}}}},
			},
		}
		if _, err := n.admin.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{}); err != nil {
			n.t.Fatal(err)
		}
	}
}

// deploy applies deploy/ as kubectl apply -k would build it, with only the
// image names overridden: the CRD first, then everything.
func (n *node) deploy() {
	fs := filesys.MakeFsInMemory()
	files, _ := filepath.Glob("../deploy/*.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			n.t.Fatal(err)
		}
		fs.WriteFile("/deploy/"+filepath.Base(f), data)
	}
	overlay, _ := json.Marshal(map[string]any{
		"resources": []string{"../deploy"},
		"images": []kusttypes.Image{
			{Name: "ghcr.io/redis-operator/redis-operator", NewName: strings.Split(managerImage, ":")[0], NewTag: "e2e"},
			{Name: "redis", NewName: strings.Split(redisImage, ":")[0], NewTag: "e2e"},
		},
	})
	fs.WriteFile("/overlay/kustomization.yaml", overlay)
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, "/overlay")
	if err != nil {
		n.t.Fatalf("kustomize deploy/: %v", err)
	}
	built, err := resources.AsYaml()
	if err != nil {
		n.t.Fatal(err)
	}
	if !bytes.Contains(built, []byte(managerImage[len("docker.io/"):])) || !bytes.Contains(built, []byte(redisImage[len("docker.io/"):])) {
		n.t.Fatalf("the images are not overridden:\n%s", built)
	}
	n.cp.apply(n.t, "../deploy/crd.yaml", ns)
	n.cp.awaitCRD(n.t)
	n.cp.apply(n.t, n.write("deploy.yaml", string(built)), ns)
}

// remove stops and removes everything the node started, in the order that
// lets each part go: the pods through the API (a graceful stop each),
// the kubelet and the other components, whatever containerd still runs,
// containerd, mounts, the bridge and the rules kube-proxy wrote.
func (n *node) remove() {
	t := n.t
	for _, p := range slices.Backward(n.procs) {
		if p.Args[0] == "containerd" {
			n.removeContainers()
		}
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Logf("node: %s did not stop on SIGTERM; killing it", filepath.Base(p.Args[0]))
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	if _, err := os.Stat(n.path("bin", "kube-proxy")); err == nil {
		exec.Command(n.path("bin", "kube-proxy"), "--cleanup").Run()
	}
	n.removeKubeletRules()
	n.unmount()
	exec.Command("ip", "link", "delete", nodeBridge).Run()
	if t.Failed() {
		for _, log := range []string{"kubelet", "containerd", "kube-controller-manager", "kube-scheduler", "kube-proxy"} {
			if data, err := os.ReadFile(n.path(log + ".log")); err == nil {
				t.Logf("----- %s.log (last 4 KiB)\n%s", log, tail(data, 4096))
			}
		}
	}
	if err := os.RemoveAll(n.dir); err != nil {
		t.Errorf("removing %s: %v", n.dir, err)
	}
}

// removePods deletes the StatefulSet and its pods through the API, each
// stopped gracefully by the kubelet, and says what they were if the test
// failed.
func (n *node) removePods() {
	ctx := context.Background()
	if n.t.Failed() {
		pods, _ := n.admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		for _, p := range pods.Items {
			status, _ := json.Marshal(p.Status)
			n.t.Logf("pod %s on %q: %s", p.Name, p.Spec.NodeName, status)
		}
		events, _ := n.admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		for _, e := range events.Items {
			n.t.Logf("event %s %s: %s %s (×%d)", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message, e.Count)
		}
		logs, _ := filepath.Glob(n.path("pod-logs", "*", "*", "*.log"))
		for _, f := range logs {
			data, _ := os.ReadFile(f)
			n.t.Logf("----- %s (last 6 KiB)\n%s", strings.TrimPrefix(f, n.path("pod-logs")), tail(data, 6144))
		}
	}
	n.admin.AppsV1().StatefulSets(ns).Delete(ctx, "cache", metav1.DeleteOptions{})
	pods, _ := n.admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	for _, p := range pods.Items {
		n.admin.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		pods, err := n.admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	n.t.Errorf("the pods were not gone 90s after their delete")
}

// removeKubeletRules removes the chains the kubelet adds to iptables and
// ip6tables (kube-proxy --cleanup removes its own), unless this machine had
// them before the test: another kubelet's.
func (n *node) removeKubeletRules() {
	if n.hadKubeletRules {
		return
	}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, args := range [][]string{
			{"-D", "INPUT", "-j", "KUBE-FIREWALL"}, {"-D", "OUTPUT", "-j", "KUBE-FIREWALL"},
			{"-F", "KUBE-FIREWALL"}, {"-X", "KUBE-FIREWALL"},
			{"-t", "mangle", "-X", "KUBE-KUBELET-CANARY"}, {"-t", "nat", "-X", "KUBE-KUBELET-CANARY"},
			{"-t", "filter", "-X", "KUBE-KUBELET-CANARY"}, {"-t", "mangle", "-X", "KUBE-IPTABLES-HINT"},
		} {
			exec.Command(cmd, args...).Run()
		}
	}
}

// removeContainers stops what containerd still runs once the kubelet is
// gone: only what a failed test left, as every pod was deleted first.
func (n *node) removeContainers() {
	out, err := n.ctr("containers", "list", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		n.ctr("tasks", "kill", "-s", "SIGKILL", id)
		n.ctr("tasks", "delete", "-f", id)
		n.ctr("containers", "delete", id)
	}
}

// unmount lazily unmounts everything under dir, deepest first: the
// kubelet bind-mounts its root dir, and volumes, and containerd its
// sandboxes' shm and network namespaces.
func (n *node) unmount() {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], n.dir) {
			mounts = append(mounts, f[1])
		}
	}
	for _, m := range slices.Backward(mounts) {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			n.t.Logf("unmount %s: %v", m, err)
		}
	}
}

func tail(data []byte, size int) []byte {
	if len(data) > size {
		return data[len(data)-size:]
	}
	return data
}
