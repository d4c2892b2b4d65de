package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
)

// sentinelWriter is a client that writes w:<i> = i through the discovery
// ports: go-redis in this process, or redis-py or ioredis running the
// writers of ../testdata/clients.
type sentinelWriter interface {
	ackedSince(t time.Time) bool
	finish() []int64
}

// scriptWriter runs one of ../testdata/clients' writers.
type scriptWriter struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	acked []int64
	last  time.Time
	done  chan struct{}
}

func startScriptWriter(t testing.TB, lang string, sentinels []string) *scriptWriter {
	t.Helper()
	dir, _ := filepath.Abs("../testdata/clients")
	args := []string{strings.Join(sentinels, ","), "cache", password, lang}
	var cmd *exec.Cmd
	switch lang {
	case "redis-py":
		if exec.Command("/usr/bin/python3", "-c", "import redis").Run() != nil {
			t.Fatal("redis-py is not installed; run hack/ensure-clients.sh")
		}
		cmd = exec.Command("/usr/bin/python3", append([]string{filepath.Join(dir, "writer.py")}, args...)...)
	case "ioredis":
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "ioredis")); err != nil {
			t.Fatal("ioredis is not installed; run hack/ensure-clients.sh")
		}
		cmd = exec.Command("node", append([]string{filepath.Join(dir, "writer.js")}, args...)...)
	}
	cmd.Dir = dir
	w := &scriptWriter{cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if w.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
				i, _ := strconv.ParseInt(n, 10, 64)
				w.mu.Lock()
				w.acked, w.last = append(w.acked, i), time.Now()
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { w.finish() })
	return w
}

func (w *scriptWriter) ackedSince(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.After(t)
}

func (w *scriptWriter) finish() []int64 {
	w.stdin.Close()
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
	}
	w.cmd.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// The three client libraries, unmodified, in local mode: each finds the
// primary through the managers' discovery ports, writes through four
// switchovers and a fenced primary, follows each time, and loses no
// acknowledged write.
func TestSentinelClientsFollowSwitchovers(t *testing.T) {
	lc := startLocalCluster(t, discoveryFragment)
	followSwitchovers(t, lc.nodes, lc.sentinels(), func(target int) { lc.write(lc.nodes[target].pod, "") },
		func(fenced bool) {
			if fenced {
				lc.write("cache-1", `["cache-1"]`)
			} else {
				lc.write("cache-1", "")
			}
		})
}

// The same, on the real API server: targetPrimary and the fence patched.
func TestSentinelClientsOnARealAPIServer(t *testing.T) {
	dyn, nodes, sentinels := startAPIServerCluster(t)
	followSwitchovers(t, nodes, sentinels, func(target int) {
		p := fmt.Sprintf(`{"spec":{"targetPrimary":"cache-%d"}}`, target)
		if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, []byte(p), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}, func(fenced bool) {
		fence(t, dyn, map[bool]string{true: `["cache-1"]`, false: `[]`}[fenced])
	})
}

// startAPIServerCluster runs a kube-apiserver and three managers of the
// RedisCluster cache on it, and returns a client of the API server, the
// managers, and their discovery ports.
func startAPIServerCluster(t testing.TB) (dynamic.Interface, []*instance, []string) {
	t.Helper()
	cp := startControlPlane(t)
	cp.apply(t, "../deploy/crd.yaml", ns)
	cp.awaitCRD(t)
	kubeconfig := fleetToken(t, cp)
	createCluster(t, cp, "cache", 3)
	var nodes []*instance
	var sentinels []string
	for i := range 3 {
		n := startInstanceOf(t, "cache", fmt.Sprintf("cache-%d", i), kubeconfig, filepath.Join(t.TempDir(), fmt.Sprint(i)), freePort(t))
		nodes, sentinels = append(nodes, n), append(sentinels, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	for _, n := range nodes {
		eventually(t, 60*time.Second, n.pod+" to be ready", func() bool { return n.get("/readyz") == 200 })
	}
	return dynamic.NewForConfigOrDie(cp.admin), nodes, sentinels
}

// followSwitchovers runs go-redis, redis-py and ioredis writers through
// the nodes' discovery ports while the role moves to cache-1, cache-2,
// cache-0 and cache-1, then while cache-1, the primary, is fenced and
// unfenced; it checks that each follows, and lost nothing acknowledged.
func followSwitchovers(t *testing.T, nodes []*instance, sentinels []string, moveTo func(target int), fenceTheTarget func(fenced bool)) {
	writers := map[string]sentinelWriter{
		"go-redis": startGoWriterAs("go-redis", sentinels, password),
		"redis-py": startScriptWriter(t, "redis-py", sentinels),
		"ioredis":  startScriptWriter(t, "ioredis", sentinels),
	}
	following := func(since time.Time) func() bool {
		return func() bool {
			for _, w := range writers {
				if !w.ackedSince(since) {
					return false
				}
			}
			return true
		}
	}
	eventually(t, 30*time.Second, "every client to find the primary and write", following(time.Time{}))
	for i, target := range []int{1, 2, 0, 1} {
		moved := time.Now()
		moveTo(target)
		eventually(t, 30*time.Second, fmt.Sprintf("switchover %d: every client writing to cache-%d", i+1, target), func() bool {
			return role(nodes[target].port) == "master" && following(moved)()
		})
		t.Logf("switchover %d to cache-%d: every client followed within %s", i+1, target, time.Since(moved).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond) // writes under load, for the next target to catch up with
	}
	fenceTheTarget(true)
	eventually(t, 10*time.Second, "the fenced primary to stop", func() bool { return role(nodes[1].port) == "" })
	fencedAt := time.Now()
	time.Sleep(time.Second)
	for name, w := range writers {
		if w.ackedSince(fencedAt.Add(300 * time.Millisecond)) {
			t.Errorf("%s: writes acknowledged while the only primary is fenced", name)
		}
	}
	unfenced := time.Now()
	fenceTheTarget(false)
	eventually(t, 30*time.Second, "every client writing again once the fence is lifted", following(unfenced))
	for name, w := range writers {
		acked := w.finish()
		if lost := lostOn(t, nodes[1].port, name, acked); lost > 0 || len(acked) < 100 {
			t.Errorf("%s: %d of %d acknowledged writes lost", name, lost, len(acked))
		}
		t.Logf("%s: %d writes acknowledged", name, len(acked))
	}
}
