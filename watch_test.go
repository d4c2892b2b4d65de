package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"
)

// The example README's first command starts: three instances from
// examples/local/cluster.yaml replicate what is written to the primary.
func TestLocalClusterReplicates(t *testing.T) {
	example, err := os.ReadFile("examples/local/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, string(example))
	v, err := newLocalSource(cf, "cache", "default", "x", slog.New(slog.DiscardHandler)).load()
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*instance
	for i := range 3 {
		nodes = append(nodes, startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: v.password}))
	}
	for _, n := range nodes {
		n.waitReady(30 * time.Second)
	}
	primary := nodes[0]
	if _, err := primary.redis().Do("SET", "greeting", "hello from cache-0"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		c := n.redis()
		eventually(t, 10*time.Second, n.pod+" to have the key", func() bool {
			got, _ := redis.String(c.Do("GET", "greeting"))
			return got == "hello from cache-0"
		})
		if _, err := c.Do("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
			t.Errorf("%s accepted a write as a replica: %v", n.pod, err)
		}
		st := n.status()
		if st.Role != "replica" || st.MasterLinkStatus != "up" || !st.Ready || st.LagBytes < 0 {
			t.Errorf("%s status %+v", n.pod, st)
		}
	}
	eventually(t, 15*time.Second, "every status file to show its instance ready", func() bool {
		entries := newLocalSource(cf, "cache", "default", "x", slog.New(slog.DiscardHandler)).readEntries()
		for _, n := range nodes {
			if !entries[n.pod].Ready {
				return false
			}
		}
		return entries["cache-0"].Role == "master" && entries["cache-0"].ConnectedReplicas == 2
	})
	for _, n := range nodes {
		b, _ := os.ReadFile(filepath.Join(cf+".status", n.pod+".json"))
		if bytes.Contains(b, []byte(v.password)) || strings.Contains(n.out.String(), v.password) {
			t.Errorf("%s: the password appears in its status file or its log", n.pod)
		}
		code, body := n.get("/v1/status")
		if code != 200 || bytes.Contains(body, []byte(v.password)) {
			t.Errorf("%s: /v1/status %d leaks or fails: %s", n.pod, code, body)
		}
	}
}

// A replica starts only once it knows where its primary is, and never as a
// master meanwhile.
func TestReplicaWaitsForThePrimarysAddress(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", "appendonly no", ""))
	replica := startInstance(t, instanceOpts{pod: "cache-1", clusterFile: cf})
	time.Sleep(time.Second)
	if code, body := replica.get("/readyz"); code != 503 || !strings.Contains(string(body), "waiting for the target primary cache-0") {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if code, _ := replica.get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d while waiting on purpose", code)
	}
	if _, err := dialRedisAs("", localAddr(replica.port), []string{""}, nil, 200*time.Millisecond); err == nil {
		t.Fatal("redis-server runs although the primary's address is unknown")
	}
	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	primary.waitReady(20 * time.Second)
	replica.waitReady(30 * time.Second)
	if st := replica.status(); st.Role != "replica" {
		t.Fatalf("replica role %q", st.Role)
	}
}

// A restart with a ConfigMap that is now bad keeps the fragment the last
// run wrote, rather than starting on nothing.
func TestRestartWithBadFragmentUsesTheLastGoodOne(t *testing.T) {
	in := oneInstance(t, "appendonly no\nmaxmemory 123mb")
	in.waitReady(20 * time.Second)
	if code := in.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", "maxmemory 1mb\nbind 0.0.0.0", "s3cret-pw"))
	in2 := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: in.clusterFile, dataDir: in.dataDir, password: "s3cret-pw"})
	in2.waitReady(20 * time.Second)
	got, _ := redis.Strings(in2.redis().Do("CONFIG", "GET", "maxmemory"))
	if got[1] != fmt.Sprint(123<<20) {
		t.Fatalf("maxmemory %v, want the last good 123mb", got)
	}
	if st := in2.status(); !strings.Contains(st.LastError, `"bind" is set by the manager`) {
		t.Fatalf("lastError %q", st.LastError)
	}
}

func TestLocalSourceLoad(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	base := `apiVersion: redisoperator.io/v1
kind: RedisCluster
metadata: {name: cache, namespace: prod, generation: 7}
spec:
  configMapRef: {name: cfg, key: redis.conf}
  authSecretRef: {name: auth, key: password}
---
apiVersion: redisoperator.io/v1
kind: RedisCluster
metadata: {name: cache, namespace: other}
spec: {targetPrimary: wrong}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {redis.conf: "maxmemory 1mb\n"}
`
	secret := "---\napiVersion: v1\nkind: Secret\nmetadata: {name: auth}\ndata: {password: " + "aHVudGVyMg==" + "}\n"
	writeFile(t, cf, base+secret)
	os.MkdirAll(cf+".status", 0o755)
	writeFile(t, filepath.Join(cf+".status", "cache-0.json"), `{"address": "10.0.0.1:6379", "role": "master"}`)
	s := newLocalSource(cf, "cache", "prod", "cache-1", slog.New(slog.DiscardHandler))
	v, err := s.load()
	if err != nil {
		t.Fatal(err)
	}
	if v.cluster.targetPrimary() != "cache-0" || v.cluster.Metadata.Generation != 7 || v.fragment != "maxmemory 1mb\n" || v.password != "hunter2" {
		t.Fatalf("view %+v", v)
	}
	if v.cluster.Status.InstancesStatus["cache-0"].Address != "10.0.0.1:6379" {
		t.Fatalf("entries %v", v.cluster.Status.InstancesStatus)
	}
	if r := roleFor(&v.cluster, "cache-1"); r.primary || r.replicaOf != "10.0.0.1:6379" {
		t.Fatalf("role %+v", r)
	}

	writeFile(t, cf, base)
	if _, err := s.load(); err == nil || !strings.Contains(err.Error(), "no Secret auth") {
		t.Fatalf("missing secret: %v", err)
	}
	writeFile(t, cf, base+"---\nkind: Secret\nmetadata: {name: auth}\ndata: {password: \"not base64 hunter2\"}\n")
	if _, err := s.load(); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a bad secret gave %v; it must fail without quoting the secret", err)
	}
	// A YAML mistake whose error would quote the value.
	writeFile(t, cf, base+"---\nkind: Secret\nmetadata: {name: auth}\nstringData: {~: hunter2}\n")
	if _, err := s.load(); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a secret with a null key gave %v; it must fail without quoting the secret", err)
	}
}

// fakeProcess stands in for the supervisor in unit tests of the reconciler.
type fakeProcess struct {
	mu      sync.Mutex
	wanted  bool
	started time.Time
	slow    time.Duration // how long each snapshot takes
}

func (f *fakeProcess) setWanted(run bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if run && !f.wanted {
		f.started = time.Now()
	}
	f.wanted = run
}
func (f *fakeProcess) isWanted() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.wanted }
func (f *fakeProcess) snapshot() supervisorState {
	time.Sleep(f.slow)
	f.mu.Lock()
	defer f.mu.Unlock()
	return supervisorState{wanted: f.wanted, running: f.wanted, startedAt: f.started, beat: time.Now()}
}

func unstructuredFrom(t *testing.T, yamlText string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(yamlText), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

const fakeCluster = `apiVersion: redisoperator.io/v1
kind: RedisCluster
metadata: {name: cache, namespace: prod, generation: 3}
spec:
  targetPrimary: cache-0
  configMapRef: {name: cache-config, key: redis.conf}
  authSecretRef: {name: cache-auth, key: password}
status:
  instancesStatus:
    cache-0: {address: "10.0.0.1:6379", role: master}
`

// kubeHarness runs the Kubernetes source, the reconciler and the status
// writer against client-go's fake dynamic client, for instance cache-1.
type kubeHarness struct {
	t            *testing.T
	pod          string
	client       *dynamicfake.FakeDynamicClient
	proc         *fakeProcess
	rec          *reconciler
	observations chan *observation
	conf         string
	lists        atomic.Int32
}

func startKubeHarness(t *testing.T, watchReactors ...k8stesting.WatchReactionFunc) *kubeHarness {
	return startKubeHarnessWith(t, harnessOpts{pod: "cache-1", watches: watchReactors})
}

func startKubeHarnessFor(t *testing.T, pod string, watchReactors ...k8stesting.WatchReactionFunc) *kubeHarness {
	return startKubeHarnessWith(t, harnessOpts{pod: pod, watches: watchReactors})
}

// harnessOpts vary the harness: the pod it runs as, watch reactors tried
// before the fake's own, a handover of the test's (nil: the real one), and
// the resync period (default 300 ms).
type harnessOpts struct {
	pod      string
	watches  []k8stesting.WatchReactionFunc
	handover handoverFunc
	resync   time.Duration
	quick    time.Duration // kubeSource.quickClose
	port     int           // redis-server's; default 6379, where nothing may answer
	slow     time.Duration // fakeProcess.slow
	restore  restoreFunc
}

func startKubeHarnessWith(t *testing.T, o harnessOpts) *kubeHarness {
	t.Helper()
	pod, watchReactors := o.pod, o.watches
	objs := []runtime.Object{
		unstructuredFrom(t, fakeCluster),
		unstructuredFrom(t, "apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: other, namespace: prod}\nspec: {targetPrimary: other-0}\n"),
		unstructuredFrom(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cache-config, namespace: prod}\ndata: {redis.conf: \"maxmemory 10mb\\n\"}\n"),
		unstructuredFrom(t, "apiVersion: v1\nkind: Secret\nmetadata: {name: cache-auth, namespace: prod}\ndata: {password: aHVudGVyMg==}\n"),
	}
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{redisClusterGVR: "RedisClusterList"}, objs...)
	h := &kubeHarness{t: t, pod: pod, client: client, proc: &fakeProcess{slow: o.slow}, observations: make(chan *observation)}
	client.PrependReactor("list", "redisclusters", func(k8stesting.Action) (bool, runtime.Object, error) {
		h.lists.Add(1)
		return false, nil, nil
	})
	for _, r := range watchReactors {
		client.PrependWatchReactor("redisclusters", r)
	}
	dir := t.TempDir()
	h.conf = filepath.Join(dir, "redis.conf")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &settings{podName: pod, cluster: "cache", namespace: "prod", dataDir: dir, redisPort: cmp.Or(o.port, 6379), announceHost: "10.0.0.2"}
	h.rec = newReconciler(s, log, reconcilerDeps{sup: h.proc, creds: newCredentials(), primaryKeys: new(atomic.Int64), handover: o.handover})
	src := newKubeSource(client, "prod", "cache", pod, log)
	src.resync, src.quickClose = cmp.Or(o.resync, 300*time.Millisecond), o.quick
	ctx, cancel := context.WithCancel(context.Background())
	news := newFeed()
	var wg sync.WaitGroup
	wg.Go(func() { src.run(ctx, news) })
	wg.Go(func() { h.rec.run(ctx, news, h.observations) })
	wg.Go(func() { runStatusWriter(ctx, log, h.rec.statuses, src.writeStatus) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h
}

// patches returns the status patches sent so far, decoded.
func (h *kubeHarness) patches() []map[string]any {
	var out []map[string]any
	for _, a := range h.client.Actions() {
		p, ok := a.(k8stesting.PatchAction)
		if !ok || a.GetSubresource() != "status" {
			continue
		}
		if p.GetPatchType() != types.MergePatchType || p.GetName() != "cache" {
			h.t.Fatalf("unexpected patch %s of %s", p.GetPatchType(), p.GetName())
		}
		var m map[string]any
		if err := json.Unmarshal(p.GetPatch(), &m); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// lastEntry is this pod's entry in the latest patch, checking on the way
// that every patch touches that entry alone.
func (h *kubeHarness) lastEntry() map[string]any {
	ps := h.patches()
	for _, p := range ps {
		status, _ := p["status"].(map[string]any)
		entries, _ := status["instancesStatus"].(map[string]any)
		delete(status, "currentPrimary") // checked apart
		if len(p) != 1 || len(status) != 1 || len(entries) != 1 || entries[h.pod] == nil {
			h.t.Fatalf("a patch touches more than this pod's entry: %v", p)
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return ps[len(ps)-1]["status"].(map[string]any)["instancesStatus"].(map[string]any)[h.pod].(map[string]any)
}

func (h *kubeHarness) annotate(name, value string) {
	h.t.Helper()
	rcs := h.client.Resource(redisClusterGVR).Namespace("prod")
	u, err := rcs.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	u.SetAnnotations(map[string]string{fencedAnnotation: value})
	if _, err := rcs.Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func TestKubeWatchReconcilesAndPatchesOnlyItsEntry(t *testing.T) {
	h := startKubeHarness(t)
	eventually(t, 5*time.Second, "redis-server to be wanted and a status patch sent", func() bool {
		return h.proc.isWanted() && h.lastEntry() != nil
	})
	conf, err := os.ReadFile(h.conf)
	if err != nil || !strings.Contains(string(conf), "replicaof 10.0.0.1 6379\n") || !strings.Contains(string(conf), "maxmemory 10mb\n") || !strings.Contains(string(conf), "masterauth hunter2\n") {
		t.Fatalf("redis.conf %v:\n%s", err, conf)
	}
	if e := h.lastEntry(); e["address"] != "10.0.0.2:6379" || e["observedGeneration"] != 3.0 || e["fenced"] != false {
		t.Fatalf("entry %v", e)
	}

	// Nothing changes: no patch (the heartbeat is a minute away).
	n := len(h.patches())
	time.Sleep(2500 * time.Millisecond)
	if got := len(h.patches()); got != n {
		t.Fatalf("%d patches without a change", got-n)
	}

	// Another cluster's fence is not ours, even though the fake client
	// ignores the field selector and shows us its events.
	h.annotate("other", `["*"]`)
	time.Sleep(500 * time.Millisecond)
	if !h.proc.isWanted() {
		t.Fatal("fenced by another cluster's annotation")
	}

	h.annotate("cache", `["cache-1"]`)
	eventually(t, 5*time.Second, "fencing to stop redis-server and be reported", func() bool {
		e := h.lastEntry()
		return !h.proc.isWanted() && e["fenced"] == true
	})

	h.annotate("cache", `cache-1`)
	eventually(t, 5*time.Second, "a malformed annotation to be reported", func() bool {
		return strings.Contains(fmt.Sprint(h.lastEntry()["lastError"]), "must be a JSON array")
	})
	if h.proc.isWanted() || h.lastEntry()["fenced"] != true {
		t.Fatal("a malformed annotation lifted the fence")
	}

	h.annotate("cache", `[]`)
	eventually(t, 5*time.Second, "unfencing to start redis-server and clear the error", func() bool {
		e := h.lastEntry()
		return h.proc.isWanted() && e["fenced"] == false && e["lastError"] == ""
	})
	if out, _ := json.Marshal(h.patches()); strings.Contains(string(out), "hunter2") {
		t.Fatal("a status patch carries the password")
	}
}

// Only the ready primary claims status.currentPrimary, and a deleted
// RedisCluster is reported without stopping anything.
func TestKubePrimaryClaimsCurrentPrimaryAndDeletionIsReported(t *testing.T) {
	h := startKubeHarnessFor(t, "cache-0")
	eventually(t, 5*time.Second, "redis-server to be wanted", h.proc.isWanted)
	claimed := func() bool {
		for _, p := range h.patches() {
			if p["status"].(map[string]any)["currentPrimary"] != nil {
				return true
			}
		}
		return false
	}
	if claimed() {
		t.Fatal("currentPrimary claimed before Redis was seen serving as master")
	}
	h.observations <- &observation{at: time.Now(), primaryOffset: -1, info: redisInfo{"role": "master", "redis_version": "7.0.15"}}
	eventually(t, 5*time.Second, "a patch claiming currentPrimary", func() bool {
		return claimed() && h.lastEntry()["role"] == "master" && h.lastEntry()["ready"] == true
	})
	if p := h.patches(); p[len(p)-1]["status"].(map[string]any)["currentPrimary"] != "cache-0" {
		t.Fatalf("last patch %v", p[len(p)-1])
	}

	if err := h.client.Resource(redisClusterGVR).Namespace("prod").Delete(context.Background(), "cache", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the deletion in lastError", func() bool {
		return strings.Contains(h.rec.published.Load().status.LastError, "does not exist")
	})
	if !h.proc.isWanted() {
		t.Fatal("deleting the RedisCluster stopped redis-server")
	}
}

// A busy or idle primary's figures move all the time (its offset with each
// replication PING, memory with each INFO): they ride the minute's
// heartbeat instead of each costing every watcher of the object an event,
// while keys appearing, which the empty-primary guards read, go out at once.
func TestKubeFiguresRideTheHeartbeat(t *testing.T) {
	h := startKubeHarnessFor(t, "cache-0")
	eventually(t, 5*time.Second, "redis-server to be wanted", h.proc.isWanted)
	look := func(offset, memory int, keyspace string) {
		i := redisInfo{"role": "master", "redis_version": "7.0.15", "connected_slaves": "0",
			"master_repl_offset": fmt.Sprint(offset), "used_memory": fmt.Sprint(memory)}
		if keyspace != "" {
			i["db0"] = keyspace
		}
		h.observations <- &observation{at: time.Now(), primaryOffset: -1, info: i}
	}
	look(100, 1<<20, "")
	eventually(t, 5*time.Second, "the entry of a ready primary", func() bool { return h.lastEntry()["ready"] == true })
	n := len(h.patches())
	for i := range 35 { // three looks a second for twelve seconds: past the 10 s figures once had
		look(100+14*i, 1<<20+4096*i, "")
		time.Sleep(350 * time.Millisecond)
	}
	if got := len(h.patches()); got != n {
		t.Fatalf("%d patches for figures alone in 12 s; they must wait for the heartbeat", got-n)
	}
	look(600, 2<<20, "keys=5,expires=0,avg_ttl=0")
	eventually(t, 2*time.Second, "keys appearing to be written at once", func() bool { return h.lastEntry()["keys"] == 5.0 })
}

// A ConfigMap edit, which the watch of the RedisCluster cannot see, is
// read on the next resync.
func TestKubeResyncReadsTheConfigMap(t *testing.T) {
	h := startKubeHarness(t)
	eventually(t, 5*time.Second, "the first redis.conf", func() bool {
		b, _ := os.ReadFile(h.conf)
		return bytes.Contains(b, []byte("maxmemory 10mb\n"))
	})
	cms := h.client.Resource(configMapGVR).Namespace("prod")
	cm, err := cms.Get(context.Background(), "cache-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unstructured.SetNestedField(cm.Object, "maxmemory 20mb\n", "data", "redis.conf")
	if _, err := cms.Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the resync to bring the new maxmemory", func() bool {
		b, _ := os.ReadFile(h.conf)
		return bytes.Contains(b, []byte("maxmemory 20mb\n"))
	})
}

// A switchover changes the spec, but not what it names: the view reuses
// the ConfigMap and Secret it read, for a GET each would only delay the
// handover (and count against client-go's request rate). A spec that names
// another ConfigMap has it read at once.
func TestKubeSpecChangeReadsOnlyWhatItNames(t *testing.T) {
	h := startKubeHarness(t)
	eventually(t, 5*time.Second, "the first redis.conf", func() bool {
		b, _ := os.ReadFile(h.conf)
		return bytes.Contains(b, []byte("maxmemory 10mb\n"))
	})
	gets := func() int {
		n := 0
		for _, a := range h.client.Actions() {
			if a.GetVerb() == "get" && (a.GetResource() == configMapGVR || a.GetResource() == secretGVR) {
				n++
			}
		}
		return n
	}
	setSpec := func(field, value string) {
		rcs := h.client.Resource(redisClusterGVR).Namespace("prod")
		u, err := rcs.Get(context.Background(), "cache", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if field == "targetPrimary" {
			unstructured.SetNestedField(u.Object, value, "spec", "targetPrimary")
		} else {
			unstructured.SetNestedField(u.Object, value, "spec", "configMapRef", "name")
		}
		if _, err := rcs.Update(context.Background(), u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := gets()
	setSpec("targetPrimary", "cache-1")
	eventually(t, 5*time.Second, "redis.conf of the target, which follows no one", func() bool {
		b, _ := os.ReadFile(h.conf)
		return len(b) > 0 && !bytes.Contains(b, []byte("\nreplicaof "))
	})
	if got := gets() - before; got != 0 {
		t.Fatalf("a switchover cost %d GETs of the ConfigMap and Secret", got)
	}

	h.client.Resource(configMapGVR).Namespace("prod").Create(context.Background(),
		unstructuredFrom(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cache-config-2, namespace: prod}\ndata: {redis.conf: \"maxmemory 30mb\\n\"}\n"), metav1.CreateOptions{})
	setSpec("configMapRef", "cache-config-2")
	eventually(t, 5*time.Second, "the ConfigMap newly named to be read", func() bool {
		b, _ := os.ReadFile(h.conf)
		return bytes.Contains(b, []byte("maxmemory 30mb\n"))
	})
}

// Fault: a watch answered with 410 Gone (its resourceVersion compacted
// away). The manager lists afresh and goes on following the object, and
// redis-server, which the 410 says nothing about, keeps running.
func TestFaultWatchAnsweredGone(t *testing.T) {
	var watches atomic.Int32
	fire := make(chan struct{})
	gone := func(k8stesting.Action) (bool, watch.Interface, error) {
		if watches.Add(1) > 1 {
			return false, nil, nil // the default watch from now on
		}
		w := watch.NewFake()
		go func() {
			<-fire
			w.Error(&metav1.Status{Status: metav1.StatusFailure, Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: "too old resource version"})
		}()
		return true, w, nil
	}
	h := startKubeHarness(t, gone)
	eventually(t, 5*time.Second, "redis-server to be started", h.proc.isWanted)
	started := h.proc.snapshot().startedAt
	close(fire)
	eventually(t, 5*time.Second, "a second list after the 410", func() bool { return h.lists.Load() >= 2 && watches.Load() >= 2 })
	h.annotate("cache", `["cache-1"]`)
	eventually(t, 5*time.Second, "the new watch to deliver the fence", func() bool { return !h.proc.isWanted() })
	if now := h.proc.snapshot().startedAt; now != started {
		t.Fatalf("the 410 restarted redis-server: started at %v, then at %v", started, now)
	}
}

// Status writes that fail are retried with the latest entry until one
// gets through; the reconciler never waits for them.
func TestStatusWriterRetriesTheLatest(t *testing.T) {
	var mu sync.Mutex
	var failures int
	var written []int
	write := func(_ context.Context, u statusUpdate) error {
		mu.Lock()
		defer mu.Unlock()
		if failures < 3 {
			failures++
			return errors.New("connection refused")
		}
		written = append(written, u.entry.Restarts)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan statusUpdate, 1)
	go runStatusWriter(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), updates, write)
	for i := 1; i <= 5; i++ {
		offer(updates, statusUpdate{entry: instanceStatus{Restarts: i}})
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 5*time.Second, "the latest entry to be written", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(written) > 0 && written[len(written)-1] == 5
	})
}

// A reason for not being ready that changes in its words is news for the
// operator and for whoever reads the status: it is written at once, not
// with the next heartbeat a minute later. The figures a reason quotes
// (loading progress) ride the heartbeat, as the other figures do.
func TestKubeNewReasonIsWrittenAtOnce(t *testing.T) {
	h := startKubeHarnessWith(t, harnessOpts{pod: "cache-1", port: freePort(t)})
	eventually(t, 5*time.Second, "redis-server to be wanted", h.proc.isWanted)
	look := func(i redisInfo) {
		i["redis_version"] = "7.0.15"
		h.observations <- &observation{at: time.Now(), primaryOffset: -1, info: i}
	}
	loading := func(percent string) redisInfo {
		return redisInfo{"role": "slave", "loading": "1", "loading_loaded_perc": percent}
	}
	look(loading("10.0"))
	eventually(t, 5*time.Second, "the entry of a replica loading its dataset", func() bool {
		return strings.Contains(fmt.Sprint(h.lastEntry()["notReadyReason"]), "loading its dataset (10.0%)")
	})
	n := len(h.patches())
	for _, p := range []string{"20.0", "30.0", "40.0"} {
		look(loading(p))
		time.Sleep(200 * time.Millisecond)
	}
	if got := len(h.patches()); got != n {
		t.Errorf("%d patches for loading progress alone; it must wait for the heartbeat", got-n)
	}
	look(redisInfo{"role": "slave", "master_host": "10.0.0.1", "master_port": "6379", "master_link_status": "down"})
	eventually(t, 2*time.Second, "the link's state to be written", func() bool {
		return h.lastEntry()["notReadyReason"] == "replication link to the primary is down"
	})
	// Only the reason changes now: the target is fenced.
	h.annotate("cache", `["cache-0"]`)
	eventually(t, 2*time.Second, "the new reason to be written at once", func() bool {
		return h.lastEntry()["notReadyReason"] == "the target primary cache-0 is fenced"
	})
}

// Two different changes Redis is asked to make live are told apart, however
// their names and values run together.
func TestLiveChangesAreToldApart(t *testing.T) {
	if changeKey([]any{"ab", "c"}) == changeKey([]any{"a", "bc"}) {
		t.Fatal(`the changes ("ab", "c") and ("a", "bc") are taken for one`)
	}
	if changeKey([]any{"maxmemory", "1mb"}) != changeKey([]any{"maxmemory", "1mb"}) {
		t.Fatal("one change is taken for two")
	}
}
