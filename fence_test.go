package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

func TestIsFenced(t *testing.T) {
	for _, tc := range []struct {
		value  string
		fenced bool
		bad    bool
	}{
		{"", false, false},
		{`[]`, false, false},
		{`["cache-1"]`, true, false},
		{`["cache-2", "cache-1"]`, true, false},
		{`["*"]`, true, false},
		{`["cache-10"]`, false, false},
		{`cache-1`, false, true},
		{`{"cache-1": true}`, false, true},
		{`[1]`, false, true},
	} {
		ann := map[string]string{}
		if tc.value != "" {
			ann[fencedAnnotation] = tc.value
		}
		fenced, err := isFenced(ann, "cache-1")
		if fenced != tc.fenced || (err != nil) != tc.bad {
			t.Errorf("%q: fenced %v, error %v", tc.value, fenced, err)
		}
	}
}

// withFence adds the fence annotation to a cluster file made by clusterYAML.
func withFence(yaml, value string) string {
	return strings.Replace(yaml, "metadata:\n  name: cache\n", fmt.Sprintf("metadata:\n  name: cache\n  annotations:\n    %s: '%s'\n", fencedAnnotation, value), 1)
}

// Fencing stops redis-server at once and keeps it stopped, with its data;
// the manager stays alive and says so; unfencing brings it all back.
func TestFencingStopsRedisAndUnfencingRestoresIt(t *testing.T) {
	const fragment = "appendonly yes\nsave \"\""
	in := oneInstance(t, fragment)
	in.waitReady(20 * time.Second)
	writeKeys(t, in.redis(), "k", 1000)
	pid := in.redisPID()

	plain := clusterYAML("cache", "cache-0", fragment, in.password)
	start := time.Now()
	writeFile(t, in.clusterFile, withFence(plain, `["cache-0"]`))
	eventually(t, 5*time.Second, "redis-server to stop when fenced", func() bool {
		_, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, 100*time.Millisecond)
		return err != nil
	})
	t.Logf("fenced: redis-server stopped %s after the file changed", time.Since(start).Round(time.Millisecond))
	eventually(t, 5*time.Second, "the status to say fenced", func() bool {
		st := in.status()
		return st.Fenced && st.Role == "none" && !st.Ready
	})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503, "/startupz": 200} {
		if code, body := in.get(path); code != want {
			t.Errorf("fenced %s: %d %s, want %d", path, code, body, want)
		}
	}
	// Still fenced a while later: nothing restarts it.
	time.Sleep(time.Second)
	if _, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, 100*time.Millisecond); err == nil {
		t.Fatal("redis-server came back while fenced")
	}
	if st := in.status(); st.Restarts != 0 {
		t.Fatalf("a fence counted as a crash: restarts %d", st.Restarts)
	}

	// A malformed annotation changes nothing, and says why.
	writeFile(t, in.clusterFile, withFence(plain, `cache-0`))
	eventually(t, 5*time.Second, "lastError to explain the malformed annotation", func() bool {
		return strings.Contains(in.status().LastError, "must be a JSON array")
	})
	if st := in.status(); !st.Fenced {
		t.Fatal("a malformed annotation lifted the fence")
	}

	writeFile(t, in.clusterFile, plain)
	in.waitReady(20 * time.Second)
	if st := in.status(); st.Fenced || st.LastError != "" {
		t.Fatalf("after unfencing: %+v", st)
	}
	if in.redisPID() == pid {
		t.Fatal("redis-server was never stopped")
	}
	checkKeys(t, in.redis(), "k", 1000)
}

// A manager that starts while the annotation is malformed cannot know
// whether the pod is meant to be fenced: it starts nothing until it can.
func TestMalformedFenceAtStartStartsNothing(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	plain := clusterYAML("cache", "cache-0", "appendonly no", "")
	writeFile(t, cf, withFence(plain, `cache-0`))
	in := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	eventually(t, 5*time.Second, "the malformed annotation in lastError", func() bool {
		st := in.status()
		return st.Fenced && strings.Contains(st.LastError, "must be a JSON array")
	})
	if _, err := dialRedisAs("", localAddr(in.port), []string{""}, nil, 200*time.Millisecond); err == nil {
		t.Fatal("redis-server started under a malformed fence annotation")
	}
	writeFile(t, cf, withFence(plain, `[]`))
	in.waitReady(20 * time.Second)
}

// "*" fences every instance of the cluster.
func TestFenceAllStopsEveryInstance(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	plain := clusterYAML("cache", "cache-0", "appendonly no", "")
	writeFile(t, cf, plain)
	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf})
	replica := startInstance(t, instanceOpts{pod: "cache-1", clusterFile: cf})
	primary.waitReady(20 * time.Second)
	replica.waitReady(30 * time.Second)
	writeFile(t, cf, withFence(plain, `["*"]`))
	for _, in := range []*instance{primary, replica} {
		eventually(t, 5*time.Second, in.pod+" to be fenced", func() bool {
			code, _ := in.get("/readyz")
			return code == http.StatusServiceUnavailable && in.status().Fenced
		})
	}
}

// keyWriter SETs w:1, w:2, ... one at a time on whichever instance runs as
// master, and keeps the numbers acknowledged: a client that finds the
// primary by asking each instance, and gives a write up after a second (a
// write held back by CLIENT PAUSE may still be applied later; it is simply
// not counted).
type keyWriter struct {
	mu        sync.Mutex
	acked     []int
	lastAckOn map[int]time.Time // by Redis port
	stop      chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
}

func startKeyWriter(t *testing.T, nodes []*instance) *keyWriter {
	w := &keyWriter{lastAckOn: map[int]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { w.finish() }) // a test that failed half-way leaves no writer behind
	findMaster := func() (redis.Conn, int) {
		for _, in := range nodes {
			c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, 200*time.Millisecond)
			if err != nil {
				continue
			}
			info, err := infoReplication(c)
			c.Close()
			if err == nil && info.role() == "master" {
				if c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, time.Second); err == nil {
					return c, in.port
				}
			}
		}
		return nil, 0
	}
	go func() {
		defer close(w.done)
		var c redis.Conn
		var port int
		for n := 1; ; n++ {
			select {
			case <-w.stop:
				if c != nil {
					c.Close()
				}
				return
			default:
			}
			if c == nil {
				if c, port = findMaster(); c == nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
			}
			if _, err := c.Do("SET", fmt.Sprintf("w:%d", n), n); err != nil {
				c.Close()
				c = nil
				time.Sleep(10 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			w.acked, w.lastAckOn[port] = append(w.acked, n), time.Now()
			w.mu.Unlock()
		}
	}()
	return w
}

// ackedOn says whether the instance acknowledged a write after t.
func (w *keyWriter) ackedOn(in *instance, t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastAckOn[in.port].After(t)
}

func (w *keyWriter) finish() []int {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked
}

// missingKeys lists the acknowledged writes the server at c does not hold.
func missingKeys(t *testing.T, c redis.Conn, acked []int) []int {
	t.Helper()
	for _, n := range acked {
		c.Send("GET", fmt.Sprintf("w:%d", n))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	var missing []int
	for _, n := range acked {
		if v, err := redis.Int(c.Receive()); err != nil || v != n {
			missing = append(missing, n)
		}
	}
	return missing
}

// Fencing and a switchover in one write of the object, under writes:
//   - the new target fenced as the role moves to it: it stops, and the old
//     primary, which may not hand over, holds writes back and says why;
//     moving the target back makes it writable again within seconds;
//   - the role moved to the fenced instance again as it is unfenced: it
//     has missed the writes taken meanwhile, and must catch up before it
//     takes the role over;
//   - the old primary fenced as the role moves away from it: the new target
//     takes over (fails over) within seconds, and the fenced one comes back
//     as a replica when unfenced.
//
// Through all of it no acknowledged write is lost.
func TestFaultFenceDuringSwitchover(t *testing.T) {
	const fragment = "appendonly yes\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	c0, c1, c2 := nodes[0], nodes[1], nodes[2]
	spec := func(target, fence string) string {
		y := clusterYAML("cache", target, fragment, "s3cret-pw")
		if fence != "" {
			y = withFence(y, fence)
		}
		return y
	}
	stopped := func(in *instance) bool {
		c, err := net.DialTimeout("tcp", localAddr(in.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil && in.status().Fenced
	}
	says := func(in *instance, what string) bool {
		code, body := in.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), what) && strings.Contains(in.status().NotReadyReason, what)
	}
	w := startKeyWriter(t, nodes)
	// With data of its own: a target whose disk holds none is refused as
	// the primary (see TestEmptyPrimaryGuard), which is not the point here.
	eventually(t, 5*time.Second, "writes to reach cache-1", func() bool {
		n, _ := redis.Int(c1.redis().Do("DBSIZE"))
		return n > 100
	})

	writeFile(t, cf, spec("cache-1", `["cache-1"]`))
	eventually(t, 10*time.Second, "the fenced target's redis-server to stop", func() bool { return stopped(c1) })
	eventually(t, 10*time.Second, "the old primary to say why it does not take writes", func() bool {
		return says(c0, "the primary role moves to cache-1, which is fenced")
	})
	eventually(t, 10*time.Second, "the other replica to say why it is not ready", func() bool {
		return says(c2, "the target primary cache-1 is fenced")
	})

	moved := time.Now()
	writeFile(t, cf, spec("cache-0", `["cache-1"]`))
	eventually(t, 10*time.Second, "writes to resume on cache-0 once the target is back", func() bool { return w.ackedOn(c0, moved) })
	t.Logf("the target moved back: cache-0 took writes again after %s", time.Since(moved).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond) // writes the fenced cache-1 does not have

	moved = time.Now()
	writeFile(t, cf, spec("cache-1", ""))
	eventually(t, 20*time.Second, "writes on cache-1, unfenced as the role moves to it", func() bool { return w.ackedOn(c1, moved) })
	t.Logf("unfenced and moved: cache-1 took writes after %s", time.Since(moved).Round(time.Millisecond))
	// Settled first: fenced, an old primary stops at once, and a target
	// still reconnecting to it would fail over without its last writes.
	for _, in := range []*instance{c0, c2} {
		eventually(t, 10*time.Second, in.pod+" to replicate from cache-1", func() bool {
			info, err := infoReplication(in.redis())
			return err == nil && info["master_port"] == fmt.Sprint(c1.port) && info["master_link_status"] == "up"
		})
	}

	moved = time.Now()
	writeFile(t, cf, spec("cache-2", `["cache-1"]`))
	eventually(t, 10*time.Second, "the fenced old primary's redis-server to stop", func() bool { return stopped(c1) })
	eventually(t, 20*time.Second, "writes on cache-2, the old primary fenced as the role moves to it", func() bool { return w.ackedOn(c2, moved) })
	t.Logf("old primary fenced: cache-2 took writes after %s", time.Since(moved).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond)

	writeFile(t, cf, spec("cache-2", ""))
	c1.waitReady(30 * time.Second)
	acked := w.finish()
	t.Logf("%d writes acknowledged", len(acked))
	if m := missingKeys(t, c2.redis(), acked); len(m) > 0 {
		t.Fatalf("the primary cache-2 lacks %d of %d acknowledged writes, the first w:%d", len(m), len(acked), m[0])
	}
	for _, in := range []*instance{c0, c1} {
		if got := masterPort(t, in); got != fmt.Sprint(c2.port) {
			t.Errorf("%s follows %q, not cache-2", in.pod, got)
		}
		c := in.redis()
		eventually(t, 10*time.Second, in.pod+" to hold every acknowledged write", func() bool {
			return len(missingKeys(t, c, acked)) == 0
		})
	}
}

// BenchmarkFenceLocal is e2e's BenchmarkFence in local mode: the fence
// written into the cluster file, taken when inotify tells of it. stop runs
// from the file written to redis-server refusing connections (its
// graceful SHUTDOWN included), serve-again from the fence lifted to
// redis-server answering PING with its data.
func BenchmarkFenceLocal(b *testing.B) {
	const fragment = "appendonly yes\nsave \"\""
	in := oneInstance(b, fragment)
	in.waitReady(20 * time.Second)
	if _, err := in.redis().Do("SET", "kept", "yes"); err != nil {
		b.Fatal(err)
	}
	plain := clusterYAML("cache", "cache-0", fragment, in.password)
	refused := func() bool {
		c, err := net.DialTimeout("tcp", localAddr(in.port), time.Second)
		if err == nil {
			c.Close()
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	serving := func() bool {
		c, err := dialRedisAs("", localAddr(in.port), []string{in.password}, nil, 100*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Do("PING")
		return err == nil
	}
	var down, up []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		writeFile(b, in.clusterFile, withFence(plain, `["cache-0"]`))
		for !refused() {
			if time.Since(start) > 30*time.Second {
				b.Fatal("redis-server still accepts connections 30s after the fence")
			}
			time.Sleep(time.Millisecond)
		}
		down = append(down, time.Since(start))
		start = time.Now()
		writeFile(b, in.clusterFile, plain)
		for !serving() {
			if time.Since(start) > 30*time.Second {
				b.Fatal("redis-server not back 30s after unfencing")
			}
			time.Sleep(time.Millisecond)
		}
		up = append(up, time.Since(start))
	}
	b.StopTimer()
	if v, err := redis.String(in.redis().Do("GET", "kept")); err != nil || v != "yes" {
		b.Fatalf("the key did not survive fencing: %q %v", v, err)
	}
	b.ReportMetric(percentileMS(down, 0.5), "stop-p50-ms")
	b.ReportMetric(percentileMS(down, 0.99), "stop-p99-ms")
	b.ReportMetric(percentileMS(up, 0.5), "serve-again-p50-ms")
	b.ReportMetric(percentileMS(up, 0.99), "serve-again-p99-ms")
	b.ReportMetric(0, "ns/op")
}
