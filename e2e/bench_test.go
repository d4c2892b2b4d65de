package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The benchmarks of this file need the API server: they are run by
// `make bench` (hack/bench.sh), which writes docs/BENCHMARKS.md from them.

// apiCounters is what the API server counted of the requests it served, read
// from its own /metrics: the figures a cluster administrator would watch.
type apiCounters struct {
	requests    float64 // every request, of any client
	clusterOps  float64 // requests on RedisClusters, status included
	writes      float64 // PATCHes of a RedisCluster's status
	reads       float64 // GETs of ConfigMaps and Secrets
	watchEvents float64 // RedisCluster events sent to watchers
}

func readAPICounters(t testing.TB, cp *controlPlane) apiCounters {
	t.Helper()
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	raw, err := admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var c apiCounters
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		has := func(kv string) bool { return strings.Contains(labels, kv) }
		switch name {
		case "apiserver_request_total":
			c.requests += v
			switch {
			case has(`resource="redisclusters"`):
				c.clusterOps += v
				if has(`verb="PATCH"`) && has(`subresource="status"`) {
					c.writes += v
				}
			case (has(`resource="configmaps"`) || has(`resource="secrets"`)) && has(`verb="GET"`):
				c.reads += v
			}
		case "apiserver_watch_events_total":
			if has("redisclusters") || has("RedisCluster") {
				c.watchEvents += v
			}
		}
	}
	return c
}

func (c apiCounters) minus(o apiCounters) apiCounters {
	return apiCounters{c.requests - o.requests, c.clusterOps - o.clusterOps, c.writes - o.writes, c.reads - o.reads, c.watchEvents - o.watchEvents}
}

// percentileMS is the main package's, so that the p99s of one report
// are read the same way.
func percentileMS(d []time.Duration, p float64) float64 {
	d = slices.Clone(d)
	slices.Sort(d)
	return float64(d[min(len(d)-1, int(p*float64(len(d))))].Microseconds()) / 1000
}

// cpuTicks is a process's user plus system time, in 1/100 s.
func cpuTicks(pid int) int64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// cpuTime is the CPU a process's threads have run, from the scheduler's
// own nanosecond count (/proc/<pid>/task/*/schedstat): clock ticks (10 ms)
// are too coarse for an idle manager's millisecond a second. A thread that
// ended would take its time with it; Go's and Redis's threads stay.
func cpuTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		total += time.Duration(ns)
	}
	return total
}

// procMiB reads one of /proc/<pid>/status's memory lines, in MiB.
func procMiB(pid int, key string) float64 {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// fleetRBAC is deploy/rbac.yaml for every cluster of a namespace at once:
// the same verbs, without resourceNames, so that one token serves a fleet.
const fleetRBAC = `apiVersion: v1
kind: ServiceAccount
metadata: {name: fleet-instance}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: fleet-instance}
rules:
  - {apiGroups: [redisoperator.io], resources: [redisclusters], verbs: [get, list, watch]}
  - {apiGroups: [redisoperator.io], resources: [redisclusters/status], verbs: [patch]}
  - {apiGroups: [""], resources: [configmaps, secrets], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fleet-instance}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fleet-instance}
subjects: [{kind: ServiceAccount, name: fleet-instance}]
`

// createCluster creates a RedisCluster of n instances with its ConfigMap
// and password Secret, as deploy/cluster.yaml does.
func createCluster(t testing.TB, cp *controlPlane, name string, n int) {
	t.Helper()
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	if _, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name + "-config"},
		Data: map[string]string{"redis.conf": "appendonly yes\nrepl-diskless-sync-delay 0\n"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name + "-auth"},
		StringData: map[string]string{"password": password}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "redisoperator.io/v1", "kind": "RedisCluster",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"instances": int64(n), "targetPrimary": name + "-0",
			"configMapRef":  map[string]any{"name": name + "-config", "key": "redis.conf"},
			"authSecretRef": map[string]any{"name": name + "-auth", "key": "password"},
		},
	}}
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Create(ctx, rc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// fleetToken applies fleetRBAC and returns a kubeconfig with its token,
// pointing at the API server itself: the proxy of the tests, in the
// benchmark's process, would add its copying to the API server's figures.
func fleetToken(t testing.TB, cp *controlPlane) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rbac.yaml")
	os.WriteFile(f, []byte(fleetRBAC), 0o600)
	cp.apply(t, f, ns)
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "fleet-instance", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cp.kubeconfigFor(t, tr.Status.Token, cp.admin.Host)
}

// fleetEntries reads every RedisCluster's entries: cluster → pod → entry.
func fleetEntries(t testing.TB, dyn dynamic.Interface) map[string]map[string]map[string]any {
	t.Helper()
	list, err := dyn.Resource(redisCluster).Namespace(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]map[string]any{}
	for _, u := range list.Items {
		raw, _, _ := unstructured.NestedMap(u.Object, "status", "instancesStatus")
		es := map[string]map[string]any{}
		for k, v := range raw {
			es[k], _ = v.(map[string]any)
		}
		out[u.GetName()] = es
	}
	return out
}

// stopAll stops managers together, as a node drain would, rather than one
// after another in the tests' cleanups.
func stopAll(nodes []*instance) {
	var wg sync.WaitGroup
	for _, in := range nodes {
		wg.Go(func() {
			in.cmd.Process.Signal(syscall.SIGTERM)
			in.cmd.Wait()
		})
	}
	wg.Wait()
}

// BenchmarkFleet runs many managers, each with its own redis-server, in
// clusters of three against one real kube-apiserver, and measures what the
// API server carries when nothing happens, and how long a change made to
// every RedisCluster at once takes to show in every status entry. Sizes
// come from FLEET_SIZES (managers, rounded up to clusters of three).
func BenchmarkFleet(b *testing.B) {
	sizes := []int{51, 102, 201}
	if s := os.Getenv("FLEET_SIZES"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("FLEET_SIZES: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("managers=%d", (n+2)/3*3), func(b *testing.B) { runFleet(b, (n+2)/3) })
	}
}

func runFleet(b *testing.B, clusters int) {
	cp := startControlPlane(b)
	ctx := context.Background()
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	cp.apply(b, "../deploy/crd.yaml", ns)
	cp.awaitCRD(b)
	kubeconfig := fleetToken(b, cp)
	var nodes []*instance
	started := time.Now()
	for c := range clusters {
		name := fmt.Sprintf("fleet-%03d", c)
		createCluster(b, cp, name, 3)
		for i := range 3 {
			pod := fmt.Sprintf("%s-%d", name, i)
			nodes = append(nodes, startInstanceOf(b, name, pod, kubeconfig, filepath.Join(b.TempDir(), pod), freePort(b)))
		}
	}
	b.Cleanup(func() { stopAll(nodes) })
	allReady := func(wantGen int64) bool {
		n := 0
		for _, es := range fleetEntries(b, dyn) {
			for _, e := range es {
				gen, _ := e["observedGeneration"].(int64)
				if e["ready"] == true && (e["role"] == "master" || e["role"] == "replica") && gen >= wantGen {
					n++
				}
			}
		}
		return n == len(nodes)
	}
	eventually(b, 10*time.Minute, "every manager's entry to be ready", func() bool {
		time.Sleep(time.Second)
		return allReady(1)
	})
	startup := time.Since(started)
	time.Sleep(20 * time.Second) // past the start's own writes

	// A quiet window: what a fleet that nothing changes costs the API server.
	// Two minutes hold two heartbeats of every manager and two resyncs.
	window := 2 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("FLEET_WINDOW")); err == nil {
		window = d // shorter, to try the benchmark out
	}
	self := os.Getpid()
	var mgrTicks0 int64
	for _, in := range nodes {
		mgrTicks0 += cpuTicks(in.cmd.Process.Pid)
	}
	c0, t0 := readAPICounters(b, cp), cpuTicks(self)
	time.Sleep(window)
	idle, apiTicks := readAPICounters(b, cp).minus(c0), cpuTicks(self)-t0
	var mgrTicks int64
	for _, in := range nodes {
		mgrTicks += cpuTicks(in.cmd.Process.Pid)
	}
	mgrTicks -= mgrTicks0

	// A change to every RedisCluster's spec, as an operator rolling out a
	// setting: each entry reflects it once its observedGeneration moves.
	var reflect []time.Duration
	var allIn time.Duration
	b.ResetTimer()
	for i := range b.N {
		w, err := dyn.Resource(redisCluster).Namespace(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		patched := map[string]time.Time{}
		var mu sync.Mutex
		seen := map[string]bool{}
		done := make(chan time.Time, 1)
		go func() {
			for ev := range w.ResultChan() {
				if ev.Type != watch.Modified {
					continue
				}
				u := ev.Object.(*unstructured.Unstructured)
				at := time.Now()
				raw, _, _ := unstructured.NestedMap(u.Object, "status", "instancesStatus")
				mu.Lock()
				for pod, e := range raw {
					gen, _, _ := unstructured.NestedInt64(e.(map[string]any), "observedGeneration")
					if gen >= int64(i+2) && !seen[pod] {
						seen[pod] = true
						reflect = append(reflect, at.Sub(patched[u.GetName()]))
					}
				}
				n := len(seen)
				mu.Unlock()
				if n == len(nodes) {
					done <- at
					return
				}
			}
		}()
		start := time.Now()
		for c := range clusters {
			name := fmt.Sprintf("fleet-%03d", c)
			mu.Lock()
			patched[name] = time.Now()
			mu.Unlock()
			patch := fmt.Sprintf(`{"spec":{"replication":{"maxLagBytes":%d}}}`, 1<<20+i)
			if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case at := <-done:
			allIn += at.Sub(start)
		case <-time.After(5 * time.Minute):
			w.Stop()
			mu.Lock()
			defer mu.Unlock()
			b.Fatalf("after 5m, %d of %d entries reflect the change", len(seen), len(nodes))
		}
		w.Stop()
	}
	b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	secs := window.Seconds()
	b.ReportMetric(float64(len(nodes)), "managers")
	b.ReportMetric(startup.Seconds(), "startup-s")
	b.ReportMetric(idle.requests/secs, "idle-api-req/s")
	b.ReportMetric(idle.writes/secs*3600/float64(len(nodes)), "idle-writes/pod/h")
	b.ReportMetric(idle.reads/secs*3600/float64(len(nodes)), "idle-reads/pod/h")
	b.ReportMetric(idle.watchEvents/secs, "idle-watch-events/s")
	b.ReportMetric(float64(apiTicks)/secs, "apiserver-cpu-%")
	b.ReportMetric(float64(mgrTicks)/secs/float64(len(nodes)), "manager-cpu-%/pod")
	b.ReportMetric(procMiB(self, "VmRSS"), "apiserver-rss-MiB")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "apiserver-heap-MiB")
	b.ReportMetric(percentileMS(reflect, 0.5), "reflect-p50-ms")
	b.ReportMetric(percentileMS(reflect, 0.99), "reflect-p99-ms")
	b.ReportMetric(float64(allIn.Milliseconds())/float64(b.N), "all-reflected-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkFence times fencing through the real API server: from the
// annotation's patch to redis-server no longer accepting connections, and
// from its removal to redis-server answering again.
func BenchmarkFence(b *testing.B) {
	cp := startControlPlane(b)
	dyn := dynamic.NewForConfigOrDie(cp.admin)
	cp.apply(b, "../deploy/crd.yaml", ns)
	cp.awaitCRD(b)
	kubeconfig := fleetToken(b, cp)
	createCluster(b, cp, "cache", 1)
	in := startInstanceOf(b, "cache", "cache-0", kubeconfig, filepath.Join(b.TempDir(), "cache-0"), freePort(b))
	eventually(b, 30*time.Second, "cache-0 to be ready", func() bool { return in.get("/readyz") == http.StatusOK })
	if _, err := in.redis("SET", "kept", "yes"); err != nil {
		b.Fatal(err)
	}
	// Stopped is refused: a slow answer on a busy machine is not a stop.
	refused := func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", in.port), time.Second)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	serving := func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", in.port), 100*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(100 * time.Millisecond))
		fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n", len(password), password)
		r := bufio.NewReader(c)
		r.ReadString('\n')
		line, err := r.ReadString('\n')
		return err == nil && strings.HasPrefix(line, "+PONG")
	}
	var down, up []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		fence(b, dyn, `["cache-0"]`)
		for !refused() {
			if time.Since(start) > 30*time.Second {
				b.Fatal("redis-server still accepts connections 30s after the fence")
			}
			time.Sleep(time.Millisecond)
		}
		down = append(down, time.Since(start))
		start = time.Now()
		fence(b, dyn, `[]`)
		eventually(b, 30*time.Second, "redis-server back after unfencing", serving)
		up = append(up, time.Since(start))
	}
	b.StopTimer()
	if v, err := in.redis("GET", "kept"); err != nil || v != "yes" {
		b.Fatalf("the key did not survive fencing: %q %v", v, err)
	}
	b.ReportMetric(percentileMS(down, 0.5), "stop-p50-ms")
	b.ReportMetric(percentileMS(down, 0.99), "stop-p99-ms")
	b.ReportMetric(percentileMS(up, 0.5), "serve-again-p50-ms")
	b.ReportMetric(percentileMS(up, 0.99), "serve-again-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkIdleFootprint measures what the manager costs a pod when nothing
// happens: the size of the binary as shipped (static, stripped), the
// resident memory and CPU of that binary managing the primary of a cluster
// of three on the real API server through quiet minutes, beside
// redis-server's own CPU, and the API requests the three managers make.
func BenchmarkIdleFootprint(b *testing.B) {
	shipped := filepath.Join(b.TempDir(), "redis-operator")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", shipped, ".")
	build.Dir, build.Env = "..", append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	st, _ := os.Stat(shipped)

	cp := startControlPlane(b)
	ctx := context.Background()
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	cp.apply(b, "../deploy/crd.yaml", ns)
	cp.awaitCRD(b)
	cp.apply(b, "../deploy/rbac.yaml", ns)
	createCluster(b, cp, "cache", 3)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "cache-instance", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	built := binary
	binary = shipped
	defer func() { binary = built }()
	var nodes []*instance
	for i := range 3 {
		nodes = append(nodes, startInstance(b, fmt.Sprintf("cache-%d", i), cp.kubeconfig(b, tr.Status.Token)))
	}
	for _, in := range nodes {
		eventually(b, 30*time.Second, in.pod+" to be ready", func() bool { return in.get("/readyz") == http.StatusOK })
	}
	primary, replica := nodes[0], nodes[1]
	pid, replicaPID, redisPID := primary.cmd.Process.Pid, replica.cmd.Process.Pid, primary.redisPID(b)
	time.Sleep(10 * time.Second) // past the start's own work, and its trim (footprint.go)

	const window = time.Minute
	var manager, replicaManager, redis time.Duration
	var api apiCounters
	b.ResetTimer()
	for range b.N {
		m0, p0, r0, c0 := cpuTime(pid), cpuTime(replicaPID), cpuTime(redisPID), readAPICounters(b, cp)
		time.Sleep(window)
		manager += cpuTime(pid) - m0
		replicaManager += cpuTime(replicaPID) - p0
		redis += cpuTime(redisPID) - r0
		d := readAPICounters(b, cp).minus(c0)
		api.clusterOps += d.clusterOps
		api.writes += d.writes
		api.reads += d.reads
	}
	b.StopTimer()
	seconds := window.Seconds() * float64(b.N)
	perPodHour := func(n float64) float64 { return n / seconds * 3600 / float64(len(nodes)) }
	percent := func(d time.Duration) float64 { return 100 * d.Seconds() / seconds }
	b.ReportMetric(float64(st.Size())/(1<<20), "binary-MiB")
	b.ReportMetric(procMiB(pid, "VmRSS"), "rss-MiB")
	b.ReportMetric(procMiB(pid, "VmHWM"), "peak-rss-MiB")
	b.ReportMetric(procMiB(pid, "RssAnon"), "rss-anon-MiB") // the rest is the binary's pages, shared with the page cache
	b.ReportMetric(procMiB(replicaPID, "VmRSS"), "replica-rss-MiB")
	b.ReportMetric(percent(manager), "cpu-%-of-a-core")
	b.ReportMetric(percent(replicaManager), "replica-cpu-%-of-a-core") // a replica also asks its primary's offset
	b.ReportMetric(percent(redis), "redis-cpu-%-of-a-core")
	b.ReportMetric(perPodHour(api.writes), "api-writes/pod/h")                    // status patches
	b.ReportMetric(perPodHour(api.reads), "api-reads/pod/h")                      // the resync's ConfigMap and Secret
	b.ReportMetric(perPodHour(api.clusterOps-api.writes), "api-watch-list/pod/h") // a watch renewed every 5 to 10 minutes
}
