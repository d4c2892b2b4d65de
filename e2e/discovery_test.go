package e2e

// Clients of the managers' discovery ports: a local cluster to ask, and
// go-redis's FailoverClient writing through it (clients_test.go has the
// others, discovery_bench_test.go what a switchover costs them).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// localCluster runs three managers in local mode (no API server), from one
// cluster file.
type localCluster struct {
	file     string
	fragment string
	nodes    []*instance
}

func startLocalCluster(t testing.TB, fragment string) *localCluster {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server is not installed; run hack/ensure-redis.sh")
	}
	dir := t.TempDir()
	lc := &localCluster{file: filepath.Join(dir, "cluster.yaml"), fragment: fragment}
	lc.write("cache-0", "")
	for i := range 3 {
		lc.nodes = append(lc.nodes, startLocalInstance(t, lc.file, fmt.Sprintf("cache-%d", i), filepath.Join(dir, fmt.Sprint(i))))
	}
	for _, n := range lc.nodes {
		eventually(t, 60*time.Second, n.pod+" to be ready", func() bool { return n.get("/readyz") == 200 })
	}
	return lc
}

// write puts the cluster file in place: targetPrimary, and a fence
// annotation when fence is not empty.
func (lc *localCluster) write(target, fence string) {
	annotations := ""
	if fence != "" {
		annotations = fmt.Sprintf("\n  annotations: {redisoperator.io/fencedInstances: '%s'}", fence)
	}
	doc := fmt.Sprintf(`apiVersion: redisoperator.io/v1
kind: RedisCluster
metadata:
  name: cache%s
spec:
  instances: 3
  targetPrimary: %s
  configMapRef: {name: cache-config, key: redis.conf}
  authSecretRef: {name: cache-auth, key: password}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cache-config}
data:
  redis.conf: %q
---
apiVersion: v1
kind: Secret
metadata: {name: cache-auth}
stringData: {password: %s}
`, annotations, target, lc.fragment, password)
	tmp := lc.file + ".tmp"
	os.WriteFile(tmp, []byte(doc), 0o600)
	os.Rename(tmp, lc.file)
}

func (lc *localCluster) sentinels() []string {
	var addrs []string
	for _, n := range lc.nodes {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	return addrs
}

func startLocalInstance(t testing.TB, clusterFile, pod, dataDir string) *instance {
	t.Helper()
	return launch(t, pod, dataDir, freePort(t), nil, "--cluster", "cache", "--pod-name", pod, "--cluster-file", clusterFile)
}

// goWriter writes w:<i> = i through a FailoverClient as fast as it is
// answered, and notes when each write was acknowledged.
type goWriter struct {
	prefix string // of its keys
	client *goredis.Client
	mu     sync.Mutex
	acked  []int64
	at     []time.Time
	err    error // the last write's error, when it failed
	stop   chan struct{}
	done   chan struct{}
}

// The Sentinels ask for sentinelPassword: the managers' discovery ports for
// the cluster's, real Sentinels here for none.
func startGoWriter(sentinels []string, sentinelPassword string) *goWriter {
	return startGoWriterAs("w", sentinels, sentinelPassword)
}

// startGoWriterAs is startGoWriter with keys of its own: prefix:<i>.
func startGoWriterAs(prefix string, sentinels []string, sentinelPassword string) *goWriter {
	return startGoWriterWith(prefix, &goredis.FailoverOptions{MasterName: "cache", SentinelAddrs: sentinels,
		Password: password, SentinelPassword: sentinelPassword})
}

// startGoWriterWith is startGoWriterAs with the client's options: TLS.
func startGoWriterWith(prefix string, opts *goredis.FailoverOptions) *goWriter {
	w := &goWriter{prefix: prefix, stop: make(chan struct{}), done: make(chan struct{}),
		client: goredis.NewFailoverClient(opts)}
	go func() {
		defer close(w.done)
		ctx := context.Background()
		for i := int64(0); ; {
			select {
			case <-w.stop:
				return
			default:
			}
			if err := w.client.Set(ctx, fmt.Sprintf("%s:%d", w.prefix, i), i, 0).Err(); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				time.Sleep(time.Millisecond)
				continue
			}
			w.mu.Lock()
			w.acked, w.at, w.err = append(w.acked, i), append(w.at, time.Now()), nil
			w.mu.Unlock()
			i++
		}
	}()
	return w
}

// ackedSince says whether a write was acknowledged after t.
func (w *goWriter) ackedSince(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.at) > 0 && w.at[len(w.at)-1].After(t)
}

// gap is the longest time between two acknowledgements from `from` on, the
// time the client could not write.
func (w *goWriter) gap(from time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	i, _ := slices.BinarySearchFunc(w.at, from, func(a, b time.Time) int { return a.Compare(b) })
	var longest time.Duration
	for j := max(i, 1); j < len(w.at); j++ {
		longest = max(longest, w.at[j].Sub(w.at[j-1]))
	}
	return longest
}

// count is how many writes were acknowledged so far.
func (w *goWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// lastError is the error of the last write, nil when it was acknowledged.
func (w *goWriter) lastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *goWriter) finish() []int64 {
	close(w.stop)
	<-w.done
	w.client.Close()
	return w.acked
}

// lostOn counts the acknowledged writes prefix:<i> the server at port does
// not hold.
func lostOn(t testing.TB, port int, prefix string, acked []int64) int {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Password: password})
	defer c.Close()
	return lostWith(t, c, prefix, acked)
}

// lostWith is lostOn through a client of the caller's.
func lostWith(t testing.TB, c *goredis.Client, prefix string, acked []int64) int {
	t.Helper()
	lost := 0
	for start := 0; start < len(acked); start += 1000 {
		batch := acked[start:min(start+1000, len(acked))]
		keys := make([]string, len(batch))
		for j, i := range batch {
			keys[j] = fmt.Sprintf("%s:%d", prefix, i)
		}
		vals, err := c.MGet(context.Background(), keys...).Result()
		if err != nil {
			t.Fatal(err)
		}
		for j, v := range vals {
			if v != strconv.FormatInt(batch[j], 10) {
				lost++
			}
		}
	}
	return lost
}

// role is what INFO says of the server at port: master, or slave.
func role(port int) string {
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Password: password})
	defer c.Close()
	r, err := c.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	return fmt.Sprint(r[0])
}

const discoveryFragment = "appendonly yes\nappendfsync always\nrepl-diskless-sync-delay 0"
