package main

import (
	"bufio"
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

	"github.com/gomodule/redigo/redis"
)

// clientWriter runs one of testdata/clients' writers: a real client library
// that finds the primary through the discovery port and writes w:<i> = i.
type clientWriter struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	acked []int64   // every i acknowledged
	last  time.Time // of the last acknowledgement
	errs  int
	out   strings.Builder // its other lines, for a failure's report
	done  chan struct{}
}

// startClientWriter starts the writer of lang ("python" or "node") against
// the nodes' discovery ports.
func startClientWriter(t *testing.T, lang string, nodes []*instance) *clientWriter {
	t.Helper()
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	dir, _ := filepath.Abs("testdata/clients")
	args := []string{strings.Join(addrs, ","), "cache", nodes[0].password}
	var cmd *exec.Cmd
	switch lang {
	case "python":
		if exec.Command("/usr/bin/python3", "-c", "import redis").Run() != nil {
			t.Fatal("redis-py is not installed; run hack/ensure-clients.sh")
		}
		cmd = exec.Command("/usr/bin/python3", append([]string{filepath.Join(dir, "writer.py")}, args...)...)
	case "node":
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "ioredis")); err != nil {
			t.Fatal("ioredis is not installed; run hack/ensure-clients.sh")
		}
		cmd = exec.Command("node", append([]string{filepath.Join(dir, "writer.js")}, args...)...)
	}
	cmd.Dir = dir
	w := &clientWriter{t: t, cmd: cmd, done: make(chan struct{})}
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
			line := sc.Text()
			w.mu.Lock()
			if n, ok := strings.CutPrefix(line, "ack "); ok {
				i, _ := strconv.ParseInt(n, 10, 64)
				w.acked, w.last = append(w.acked, i), time.Now()
			} else {
				if strings.HasPrefix(line, "err ") {
					w.errs++
				}
				if w.out.Len() < 16<<10 {
					w.out.WriteString(line + "\n")
				}
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

// ackedSince says whether a write was acknowledged after t.
func (w *clientWriter) ackedSince(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last.After(t)
}

// stop closes the writer's stdin and waits for it to end.
func (w *clientWriter) stop() []int64 {
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

// Unmodified client libraries find the primary through the managers'
// discovery ports (the Sentinel protocol) and follow it: writing without
// a pause of their own through four switchovers and a fenced primary, they
// lose no acknowledged write and go on writing to the new primary.
func TestSentinelClientsFollowSwitchovers(t *testing.T) {
	for _, lang := range []string{"python", "node"} {
		t.Run(map[string]string{"python": "redis-py", "node": "ioredis"}[lang], func(t *testing.T) {
			const fragment = "appendonly yes\nappendfsync always\nrepl-diskless-sync-delay 0"
			cf, nodes := cluster3(t, fragment)
			w := startClientWriter(t, lang, nodes)
			eventually(t, 20*time.Second, "the client to find the primary and write", func() bool { return w.ackedSince(time.Time{}) })
			spec := func(target, fence string) {
				y := clusterYAML("cache", target, fragment, "s3cret-pw")
				if fence != "" {
					y = withFence(y, fence)
				}
				writeFile(t, cf, y)
			}
			for i, target := range []int{1, 2, 0, 1} {
				moved := time.Now()
				spec(nodes[target].pod, "")
				eventually(t, 20*time.Second, fmt.Sprintf("switchover %d: writes acknowledged by %s", i+1, nodes[target].pod), func() bool {
					return masterPort(t, nodes[target]) == "master" && w.ackedSince(time.Now().Add(-100*time.Millisecond)) && w.ackedSince(moved)
				})
				t.Logf("switchover %d to %s: writes acknowledged again %s after the change", i+1, nodes[target].pod, time.Since(moved).Round(time.Millisecond))
				time.Sleep(500 * time.Millisecond) // writes under load, and for the next replica to catch up with
			}
			// The primary fenced: no instance is named, writes stop; lifted,
			// the client writes to it again.
			spec("cache-1", `["cache-1"]`)
			eventually(t, 10*time.Second, "the fenced primary to stop", func() bool { return nodes[1].status().Fenced })
			fencedAt := time.Now()
			time.Sleep(time.Second)
			if w.ackedSince(fencedAt.Add(300 * time.Millisecond)) {
				t.Error("writes acknowledged while the only primary is fenced")
			}
			unfenced := time.Now()
			spec("cache-1", "")
			eventually(t, 20*time.Second, "writes after the fence is lifted", func() bool { return w.ackedSince(unfenced) })
			acked := w.stop()
			c := nodes[1].redis()
			defer c.Close()
			lost := 0
			for start := 0; start < len(acked); start += 1000 {
				batch := acked[start:min(start+1000, len(acked))]
				keys := make([]any, len(batch))
				for j, i := range batch {
					keys[j] = fmt.Sprintf("w:%d", i)
				}
				vals, err := redis.Strings(c.Do("MGET", keys...))
				if err != nil {
					t.Fatal(err)
				}
				for j, v := range vals {
					if v != strconv.FormatInt(batch[j], 10) {
						lost++
					}
				}
			}
			w.mu.Lock()
			t.Logf("%d writes acknowledged, %d refused and retried", len(acked), w.errs)
			w.mu.Unlock()
			if lost > 0 || len(acked) < 200 {
				t.Fatalf("%d of %d acknowledged writes lost; the client said:\n%s", lost, len(acked), w.out.String())
			}
		})
	}
}
