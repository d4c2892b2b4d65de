package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
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
	v, err := newLocalSource(cf, "cache", "default", "x").load()
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
		entries := newLocalSource(cf, "cache", "default", "x").readEntries()
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
	if _, err := dialRedis(localAddr(replica.port), "", 200*time.Millisecond); err == nil {
		t.Fatal("redis-server runs although the primary's address is unknown")
	}
	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	primary.waitReady(20 * time.Second)
	replica.waitReady(30 * time.Second)
	if st := replica.status(); st.Role != "replica" {
		t.Fatalf("replica role %q", st.Role)
	}
}

// A bad fragment never reaches redis-server: the file and the running
// server stay as they were, lastError says why, and fixing it clears it.
func TestBadFragmentKeepsTheLastGoodConfig(t *testing.T) {
	in := oneInstance(t, "appendonly no\nmaxmemory 100mb")
	in.waitReady(20 * time.Second)
	confPath := filepath.Join(in.dataDir, "redis.conf")
	before, _ := os.ReadFile(confPath)
	pid := in.redisPID()

	for _, bad := range []struct{ fragment, want string }{
		{"appendonly no\nmaxmemory 100mb\nport 1234", `"port" is set by the manager`},
		{"appendonly no\nmaxmemory \"100mb", "unbalanced double quotes"},
	} {
		writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", bad.fragment, "s3cret-pw"))
		eventually(t, 10*time.Second, "lastError to say "+bad.want, func() bool {
			return strings.Contains(in.status().LastError, bad.want)
		})
		if after, _ := os.ReadFile(confPath); !bytes.Equal(before, after) {
			t.Fatalf("redis.conf changed after a refused fragment:\n%s", after)
		}
		if in.redisPID() != pid {
			t.Fatal("redis-server was restarted for a refused fragment")
		}
		if got, _ := redis.Strings(in.redis().Do("CONFIG", "GET", "port")); got[1] != fmt.Sprint(in.port) {
			t.Fatalf("running port %v", got)
		}
	}
	if !in.hasLog("refusing the new redis.conf fragment; the last good configuration stays") {
		t.Error("the refusal was not logged")
	}

	// A good change is written; until a restart applies it, it is pending.
	writeFile(t, in.clusterFile, clusterYAML("cache", "cache-0", "appendonly no\nmaxmemory 200mb", "s3cret-pw"))
	eventually(t, 10*time.Second, "lastError to clear and maxmemory to be pending", func() bool {
		st := in.status()
		return st.LastError == "" && reflect.DeepEqual(st.PendingRestart, []string{"maxmemory"})
	})
	if after, _ := os.ReadFile(confPath); !bytes.Contains(after, []byte("maxmemory 200mb")) {
		t.Fatalf("redis.conf does not hold the new value:\n%s", after)
	}

	// A file that no longer parses is refused the same way.
	writeFile(t, in.clusterFile, "kind: RedisCluster\nmetadata: [\n")
	eventually(t, 10*time.Second, "lastError to name the cluster file", func() bool {
		return strings.Contains(in.status().LastError, "cluster file")
	})
	if st := in.status(); !st.Ready || in.redisPID() != pid {
		t.Fatalf("a broken cluster file disturbed a running instance: %+v", st)
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
	s := newLocalSource(cf, "cache", "prod", "cache-1")
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
