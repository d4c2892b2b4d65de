package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/gomodule/redigo/redis"
)

func TestParseInfo(t *testing.T) {
	info := parseInfo("# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\nmaster_link_status:up\r\nslave_repl_offset:1234\r\n\r\n# Persistence\r\nloading:0\r\nweird line\r\n")
	if info.role() != "slave" || info["master_host"] != "10.0.0.1" || info.int("slave_repl_offset") != 1234 || info["loading"] != "0" {
		t.Fatalf("parsed %v", info)
	}
	if _, ok := info["weird line"]; ok {
		t.Fatal("a line without a colon became a key")
	}
}

func FuzzParseInfo(f *testing.F) {
	f.Add("# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=10.0.0.2,port=6379,state=online,offset=14,lag=0\r\nmaster_repl_offset:14\r\n")
	f.Add("loading:1\nloading_loaded_perc:12.5\n")
	f.Fuzz(func(t *testing.T, text string) {
		info := parseInfo(text)
		// Every "key:value" line that is not a header is read, the last of
		// a key winning, and nothing else is.
		want := redisInfo{}
		for _, line := range strings.Split(text, "\n") {
			line = strings.TrimRight(line, "\r")
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
				want[k] = v
			}
		}
		if !maps.Equal(info, want) {
			t.Fatalf("parsed %q as %v, want %v", text, info, want)
		}
		info.int("master_repl_offset")
		info.float("loading_loaded_perc")
		info.keys()
	})
}

func TestReadiness(t *testing.T) {
	now := time.Now()
	replica := func(kv ...string) *observation {
		o := &observation{at: now, primaryOffset: 1000, info: redisInfo{"role": "slave", "master_host": "10.0.0.1", "master_port": "6379", "master_link_status": "up", "slave_repl_offset": "900"}}
		for i := 0; i < len(kv); i += 2 {
			o.info[kv[i]] = kv[i+1]
		}
		return o
	}
	want := desiredRole{target: "cache-0", replicaOf: "10.0.0.1:6379"}
	for _, tc := range []struct {
		name   string
		obs    *observation
		want   desiredRole
		maxLag int64
		ready  bool
		reason string
	}{
		{"no observation", nil, want, 0, false, "not been observed"},
		{"no answer", &observation{at: now, err: errors.New("refused")}, want, 0, false, "does not answer"},
		{"loading", &observation{at: now, info: redisInfo{"loading": "1", "loading_loaded_perc": "42.0"}}, want, 0, false, "loading its dataset (42.0%)"},
		{"replica in sync", replica(), want, 0, true, ""},
		{"primary as master", &observation{at: now, info: redisInfo{"role": "master"}}, desiredRole{primary: true}, 0, true, ""},
		{"primary as replica", replica(), desiredRole{primary: true}, 0, false, "target primary but runs as slave"},
		{"replica as master", &observation{at: now, info: redisInfo{"role": "master"}}, want, 0, false, "must replicate from cache-0"},
		{"wrong master", replica("master_host", "10.0.0.9"), want, 0, false, "not from cache-0"},
		{"link down", replica("master_link_status", "down"), want, 0, false, "link to the primary is down"},
		{"lag under", replica(), want, 200, true, ""},
		{"lag over", replica(), want, 50, false, "lag 100 bytes is over maxLagBytes 50"},
	} {
		ready, reason := readiness(tc.obs, tc.want, tc.maxLag)
		if ready != tc.ready || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: ready %v %q", tc.name, ready, reason)
		}
	}
	old := replica()
	old.at = now.Add(-10 * time.Second)
	if ready, reason := readiness(old, want, 0); ready || !strings.Contains(reason, "no recent answer") {
		t.Errorf("a stale observation: %v %q", ready, reason)
	}
}

// cluster3 starts three instances of one cluster in local mode.
func cluster3(t testing.TB, fragment string, extra ...string) (string, []*instance) {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, cf, clusterYAML("cache", "cache-0", fragment, "s3cret-pw"))
	var nodes []*instance
	for i := range 3 {
		nodes = append(nodes, startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: "s3cret-pw", extraArgs: extra}))
	}
	for _, n := range nodes {
		n.waitReady(30 * time.Second)
	}
	return cf, nodes
}

// writer INCRs one counter as fast as it can on what it believes is the
// primary, and moves to the next one when the old one refuses: a client
// that only learns of a switchover from its errors.
type writer struct {
	mu        sync.Mutex
	acked     int64
	firstOnTo time.Time
	ackedOnTo int64
	stop      chan struct{}
	done      chan struct{}
}

func startWriter(t *testing.T, from, to *instance) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	dial := func(in *instance) redis.Conn {
		c, err := dialRedisAs(in.user, localAddr(in.port), []string{in.password}, in.clientTLS, 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		return c
	}
	go func() {
		defer close(w.done)
		cur, onTo := dial(from), false
		defer func() { cur.Close() }()
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			_, err := cur.Do("INCR", "counter")
			if err == nil {
				w.mu.Lock()
				w.acked++
				if onTo {
					w.ackedOnTo++
					if w.firstOnTo.IsZero() {
						w.firstOnTo = time.Now()
					}
				}
				w.mu.Unlock()
				continue
			}
			if !onTo {
				cur.Close()
				cur, onTo = dial(to), true
				continue
			}
			if _, isReply := err.(redis.Error); !isReply {
				cur.Close()
				cur = dial(to)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish() (acked int64) {
	close(w.stop)
	<-w.done
	return w.acked
}

func (w *writer) onTo() (int64, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ackedOnTo, w.firstOnTo
}

func masterPort(t *testing.T, in *instance) string {
	t.Helper()
	text, err := redis.String(in.redis().Do("INFO", "replication"))
	if err != nil {
		t.Fatal(err)
	}
	info := parseInfo(text)
	if info.role() == "master" {
		return "master"
	}
	return info["master_port"]
}

// A planned switchover, both ways, under a continuous write load: every
// write the client saw acknowledged is on the new primary, and the others
// follow it.
func TestSwitchoverLosesNoAcknowledgedWrite(t *testing.T) {
	const fragment = "appendonly no\nsave \"\"\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	var total int64
	for _, move := range [][2]int{{0, 1}, {1, 0}} {
		from, to := nodes[move[0]], nodes[move[1]]
		w := startWriter(t, from, to)
		time.Sleep(300 * time.Millisecond) // writes flowing to the old primary
		changed := time.Now()
		writeFile(t, cf, clusterYAML("cache", to.pod, fragment, "s3cret-pw"))
		eventually(t, 10*time.Second, to.pod+" to acknowledge writes as the new primary", func() bool {
			n, _ := w.onTo()
			return n >= 200
		})
		_, first := w.onTo()
		acked := w.finish()
		total += acked
		t.Logf("%s -> %s: first write acknowledged by the new primary %s after the change; %d writes acknowledged",
			from.pod, to.pod, first.Sub(changed).Round(time.Millisecond), acked)
		got, err := redis.Int64(to.redis().Do("GET", "counter"))
		if err != nil || got != total {
			t.Fatalf("counter on the new primary %s is %d (%v); the writer saw %d acknowledged", to.pod, got, err, total)
		}
		for _, n := range nodes {
			want := fmt.Sprint(to.port)
			if n == to {
				want = "master"
			}
			eventually(t, 10*time.Second, n.pod+" to follow "+to.pod, func() bool { return masterPort(t, n) == want })
		}
		if _, err := from.redis().Do("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
			t.Fatalf("the old primary %s still takes writes: %v", from.pod, err)
		}
		to.waitReady(10 * time.Second)
	}
}

// The primary's redis-server and manager die together; the target moves:
// the new target promotes itself once the old one has been gone for the
// failover window, the third follows, and the old one comes back as a
// replica that never takes a write.
func TestFailoverWhenThePrimaryIsGone(t *testing.T) {
	const fragment = "appendonly yes\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	if _, err := nodes[0].redis().Do("SET", "before", "crash"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the key on cache-1", func() bool {
		v, _ := redis.String(nodes[1].redis().Do("GET", "before"))
		return v == "crash"
	})
	old := nodes[0]
	pid := old.redisPID()
	old.cmd.Process.Kill()
	<-old.done
	syscall.Kill(pid, syscall.SIGKILL)

	moved := time.Now()
	writeFile(t, cf, clusterYAML("cache", "cache-1", fragment, "s3cret-pw"))
	eventually(t, 15*time.Second, "cache-1 to take writes", func() bool {
		_, err := nodes[1].redis().Do("SET", "after", "failover")
		return err == nil
	})
	t.Logf("cache-1 took writes %s after the target moved (failover window 2s)", time.Since(moved).Round(time.Millisecond))
	eventually(t, 10*time.Second, "cache-2 to follow cache-1", func() bool { return masterPort(t, nodes[2]) == fmt.Sprint(nodes[1].port) })

	back := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, dataDir: old.dataDir, port: old.port, password: old.password})
	back.waitReady(30 * time.Second)
	if got := masterPort(t, back); got != fmt.Sprint(nodes[1].port) {
		t.Fatalf("the old primary came back following %q", got)
	}
	if _, err := back.redis().Do("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("the old primary took a write after coming back: %v", err)
	}
	v, _ := redis.String(back.redis().Do("GET", "after"))
	if v != "failover" {
		t.Fatalf("the old primary did not catch up with the new one: %q", v)
	}
}

// The switchover benchmarks: N switchovers under a continuous INCR load,
// timed from the trigger to the first write the new primary acknowledges,
// and the writes lost counted at the end. make bench runs them (see
// docs/BENCHMARKS.md for its commands).
//
// BenchmarkSwitchoverManager moves spec.targetPrimary (local mode: the file
// is edited); BenchmarkSwitchoverFailoverTo sends Redis's own FAILOVER TO
// to three bare redis-servers of the same build and configuration;
// BenchmarkSwitchoverSentinel has three Redis Sentinels watch the same three
// and asks one of them for SENTINEL FAILOVER; it takes some 20 s a
// switchover, mostly Sentinel's own waits.

// flipWriter INCRs a counter on what it believes is the primary and, when
// that one refuses, moves to where it is told the primary is now.
type flipWriter struct {
	mu       sync.Mutex
	acked    int64
	flips    int
	firstAck []time.Time // the first acknowledgement after each flip
	stop     chan struct{}
	done     chan struct{}
}

// startFlipWriter writes to one of two servers and moves to the other
// whenever the one it writes to refuses.
func startFlipWriter(b testing.TB, addrs [2]string, password string) *flipWriter {
	return startLocatingWriter(b, addrs[0], password, func(refused string) string {
		if refused == addrs[0] {
			return addrs[1]
		}
		return addrs[0]
	})
}

// startLocatingWriter starts on addr. It asks locate only when the primary
// it had refuses (an error reply or a broken connection): until the new one
// acknowledges a write, a refusal there means it is not writable yet, and
// it is tried again.
func startLocatingWriter(b testing.TB, addr, password string, locate func(refused string) string) *flipWriter {
	w := &flipWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var c redis.Conn
		for {
			select {
			case <-w.stop:
				if c != nil {
					c.Close()
				}
				return
			default:
			}
			if c == nil {
				var err error
				if c, err = dialRedisAs("", addr, []string{password}, nil, 5*time.Second); err != nil {
					time.Sleep(time.Millisecond)
					continue
				}
			}
			_, err := c.Do("INCR", "counter")
			w.mu.Lock()
			// Refused by the primary it had: the role moved.
			moved := err != nil && len(w.firstAck) == w.flips
			switch {
			case err == nil:
				w.acked++
				if len(w.firstAck) < w.flips {
					w.firstAck = append(w.firstAck, time.Now())
				}
			case moved:
				w.flips++
			}
			w.mu.Unlock()
			if err == nil {
				continue
			}
			if _, isReply := err.(redis.Error); moved || !isReply {
				c.Close()
				c = nil
			}
			if moved {
				addr = locate(addr) // unlocked: it may ask a server
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	return w
}

// await returns when the writer has had its first acknowledgement after
// the n-th flip, and when.
func (w *flipWriter) await(b testing.TB, n int) time.Time {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		if len(w.firstAck) >= n {
			t := w.firstAck[n-1]
			w.mu.Unlock()
			return t
		}
		w.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	b.Fatalf("no write acknowledged by the new primary within 30s of switchover %d", n)
	return time.Time{}
}

func (w *flipWriter) finish() int64 {
	close(w.stop)
	<-w.done
	return w.acked
}

// runSwitchovers times b.N switchovers back and forth between two servers,
// made by trigger(i), and reports p50, p99 and the writes lost, read from
// final.
func runSwitchovers(b *testing.B, addrs [2]string, password string, trigger func(i int), final func() int64) []time.Time {
	return timeSwitchovers(b, startFlipWriter(b, addrs, password), trigger, final)
}

// timeSwitchovers is runSwitchovers with a writer of the caller's. The
// writer stamps its first acknowledgement on the new primary itself, so
// trigger may return before it or long after.
func timeSwitchovers(b *testing.B, w *flipWriter, trigger func(i int), final func() int64) (starts []time.Time) {
	time.Sleep(300 * time.Millisecond)
	var took []time.Duration
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		start := time.Now()
		starts = append(starts, start)
		trigger(i)
		took = append(took, w.await(b, i).Sub(start))
		time.Sleep(300 * time.Millisecond) // writes flowing before the next one
	}
	b.StopTimer()
	acked := w.finish()
	lost := acked - final()
	b.ReportMetric(percentileMS(took, 0.50), "p50-ms")
	b.ReportMetric(percentileMS(took, 0.99), "p99-ms")
	b.ReportMetric(float64(lost), "lost-writes")
	b.ReportMetric(float64(acked), "acked-writes")
	b.ReportMetric(0, "ns/op")
	return starts
}

func BenchmarkSwitchoverManager(b *testing.B) {
	const fragment = "appendonly no\nsave \"\"\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(b, fragment)
	starts := runSwitchovers(b, [2]string{localAddr(nodes[0].port), localAddr(nodes[1].port)}, "s3cret-pw",
		func(i int) { writeFile(b, cf, clusterYAML("cache", nodes[i%2].pod, fragment, "s3cret-pw")) },
		func() int64 {
			n, _ := redis.Int64(nodes[b.N%2].redis().Do("GET", "counter"))
			return n
		})
	reportHandoverSteps(b, nodes[:2], starts)
}

// reportHandoverSteps reports where the handovers' time went, from the
// managers' own log lines: the target's "took over the primary role" and
// the old primary's "holding writes", whose pause may begin before the
// target's. writes-held is what a client meets: from the first of the
// two pauses to the old primary answering READONLY.
func reportHandoverSteps(b *testing.B, nodes []*instance, starts []time.Time) {
	type event struct {
		pod string
		at  time.Time
		rec map[string]any
	}
	var tookOver, holding []event
	for _, in := range nodes {
		for _, r := range in.logRecords() {
			at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r["time"]))
			switch r["msg"] {
			case "took over the primary role":
				tookOver = append(tookOver, event{in.pod, at, r})
			case "this master is not the target: holding writes for its take-over":
				holding = append(holding, event{in.pod, at, r})
			}
		}
	}
	dur := func(r map[string]any, k string) time.Duration {
		d, err := time.ParseDuration(fmt.Sprint(r[k]))
		if err != nil {
			b.Fatalf("%s of %v: %v", k, r, err)
		}
		return d
	}
	var toView, afterView, beforePause, catchUp, promoted, paused, held []time.Duration
	looks := 0
	for _, t := range tookOver {
		r := t.rec
		if r["promotedAfterPause"] == nil {
			continue // no promotion in a pause of its own: the role had moved already
		}
		// The view that asked for it came after the last trigger before.
		viewAt := t.at.Add(-dur(r, "took")).Add(-dur(r, "afterView"))
		if i, _ := slices.BinarySearchFunc(starts, viewAt, time.Time.Compare); i > 0 {
			toView = append(toView, viewAt.Sub(starts[i-1]))
		}
		afterView = append(afterView, dur(r, "afterView"))
		beforePause = append(beforePause, dur(r, "beforePause"))
		catchUp = append(catchUp, dur(r, "catchUp"))
		promoted = append(promoted, dur(r, "promotedAfterPause"))
		paused = append(paused, dur(r, "writesPaused"))
		looks = max(looks, int(r["offsetLooks"].(float64)))
		// The old primary's own hold of writes for this take-over, when
		// it began first: at most a moment before.
		demoted := t.at
		began := demoted.Add(-dur(r, "took")).Add(dur(r, "beforePause"))
		for _, h := range holding {
			if h.pod != t.pod && h.rec["target"] == t.pod && h.at.Before(began) && began.Sub(h.at) < 200*time.Millisecond {
				began = h.at
			}
		}
		held = append(held, demoted.Sub(began))
	}
	if len(paused) == 0 {
		b.Fatal("no handover logged its steps")
	}
	for _, m := range []struct {
		name string
		d    []time.Duration
	}{{"trigger-to-view", toView}, {"view-to-handover", afterView}, {"handover-to-pause", beforePause}, {"catch-up", catchUp},
		{"pause-to-promoted", promoted}, {"pause-to-demoted", paused}, {"writes-held", held}} {
		b.ReportMetric(percentileMS(m.d, 0.50), m.name+"-p50-ms")
	}
	b.ReportMetric(percentileMS(catchUp, 0.99), "catch-up-p99-ms")
	b.ReportMetric(percentileMS(held, 0.99), "writes-held-p99-ms")
	b.ReportMetric(float64(looks), "max-offset-looks")
}

// bareServers starts three bare redis-servers of the managers' build and
// configuration, the first the primary and the others its replicas, and
// returns their ports once both replicas' links are up, with a way to
// connect to them.
func bareServers(b *testing.B) ([3]int, func(port int) redis.Conn) {
	redisServer := requireRedis(b)
	var ports [3]int
	for i := range ports {
		ports[i] = freePort(b)
		args := []string{"--port", fmt.Sprint(ports[i]), "--dir", b.TempDir(), "--save", "", "--appendonly", "no",
			"--repl-diskless-sync-delay", "0", "--requirepass", "s3cret-pw", "--masterauth", "s3cret-pw"}
		if i > 0 {
			args = append(args, "--replicaof", "127.0.0.1", fmt.Sprint(ports[0]))
		}
		cmd := exec.Command(redisServer, args...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	conn := func(port int) redis.Conn {
		var c redis.Conn
		var err error
		for range 100 {
			if c, err = dialRedisAs("", localAddr(port), []string{"s3cret-pw"}, nil, time.Second); err == nil {
				return c
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.Fatal(err)
		return nil
	}
	for _, p := range ports[1:] {
		c := conn(p)
		for {
			info, _ := infoReplication(c)
			if info["master_link_status"] == "up" {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
	}
	return ports, conn
}

func BenchmarkSwitchoverFailoverTo(b *testing.B) {
	ports, conn := bareServers(b)
	runSwitchovers(b, [2]string{localAddr(ports[0]), localAddr(ports[1])}, "s3cret-pw",
		func(i int) {
			from, to := ports[(i-1)%2], ports[i%2]
			c := conn(from)
			defer c.Close()
			if _, err := c.Do("FAILOVER", "TO", "127.0.0.1", to); err != nil {
				b.Fatal(err)
			}
		},
		func() int64 {
			c := conn(ports[b.N%2])
			defer c.Close()
			n, _ := redis.Int64(c.Do("GET", "counter"))
			return n
		})
}

// BenchmarkSwitchoverSentinel: three Redis Sentinels (a quorum of two)
// watch the same three bare servers, and the first is asked for SENTINEL
// FAILOVER, which needs no vote. Sentinel picks the replica, promotes it and
// points the other at it, and the sentinels publish +switch-master
// (switch-p50-ms, from the call to the first of them: the earliest a client
// subscribed to them could move). Sentinel does not stop the old primary,
// which takes writes until a sentinel, having seen it report itself a
// master for 8 s on the 10 s INFO period Sentinel keeps for replicas, makes
// it a replica (REPLICAOF, and CLIENT KILL of its clients). The writer is a
// Sentinel client that learns from its errors: refused or cut off, it asks
// a sentinel where the primary is and goes there. What it had acknowledged
// on the old primary since the promotion is lost: reported, not failed on.
func BenchmarkSwitchoverSentinel(b *testing.B) {
	ports, _ := bareServers(b)
	sentinels := startSentinels(b, ports[0])
	primary := localAddr(ports[0])
	settled := func(primary string) bool {
		for _, s := range sentinels {
			if !sentinelSettled(s, primary) {
				return false
			}
		}
		return true
	}
	eventually(b, 60*time.Second, "the sentinels to know each other and both replicas", func() bool { return settled(primary) })

	switched := make(chan time.Time, 16)
	for _, s := range sentinels {
		sub, err := redis.Dial("tcp", localAddr(s))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sub.Close() })
		events := redis.PubSubConn{Conn: sub}
		if err := events.Subscribe("+switch-master"); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				switch events.Receive().(type) {
				case redis.Message:
					switched <- time.Now()
				case error:
					return
				}
			}
		}()
	}

	// As a Sentinel client does: ask the first sentinel that answers, and
	// while it still names the server that refused, ask again.
	locate := func(refused string) string {
		for range 3000 {
			for _, s := range sentinels {
				if p, err := sentinelPrimary(s); err == nil {
					if p != refused {
						return p
					}
					break
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		return refused
	}
	var switchTook []time.Duration
	timeSwitchovers(b, startLocatingWriter(b, primary, "s3cret-pw", locate),
		func(i int) {
			start := time.Now()
			if _, err := sentinelDo(sentinels[0], "SENTINEL", "FAILOVER", "cache"); err != nil {
				b.Fatalf("failover %d: %v", i, err)
			}
			// SENTINEL FAILOVER refuses while a failover is in progress and
			// picks from what the replicas said in their last INFO: the next
			// one waits until every sentinel sees both replicas following
			// the new primary, the old one included. A failover whose
			// replicas do not follow would end by failover-timeout (60 s).
			old := primary
			eventually(b, 90*time.Second, fmt.Sprintf("failover %d to end with the old primary a replica, as every sentinel sees it", i), func() bool {
				p, err := sentinelPrimary(sentinels[0])
				if err != nil || p == old || !settled(p) {
					return false
				}
				primary = p
				return true
			})
			var first time.Time
			for range sentinels {
				select {
				case at := <-switched:
					if first.IsZero() || at.Before(first) {
						first = at
					}
				case <-time.After(5 * time.Second):
					b.Fatalf("failover %d: not every sentinel published +switch-master", i)
				}
			}
			switchTook = append(switchTook, first.Sub(start))
		},
		func() int64 {
			c, err := dialRedisAs("", primary, []string{"s3cret-pw"}, nil, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			n, _ := redis.Int64(c.Do("GET", "counter"))
			return n
		})
	b.ReportMetric(percentileMS(switchTook, 0.50), "switch-p50-ms")
}

// startSentinels starts three sentinels watching the primary at port as
// "cache", each on a config file of its own, which it rewrites. The timings
// are those of Sentinel's own tutorial: down-after-milliseconds 5000 (how
// soon a silent server is held down; a requested failover does not wait
// for it), failover-timeout 60000 (how long a failover may take to point
// the replicas at the new primary; the doubled wait before a sentinel tries
// a failed failover again does not hold for SENTINEL FAILOVER), one
// replica resynchronising at a time.
func startSentinels(b *testing.B, port int) []int {
	// Debian ships redis-sentinel in a package of its own (make bench installs it);
	// without it, the same executable runs as one with --sentinel.
	bin, mode := "redis-sentinel", []string{}
	if _, err := exec.LookPath(bin); err != nil {
		bin, mode = requireRedis(b), []string{"--sentinel"}
	}
	var ports []int
	for range 3 {
		p, dir := freePort(b), b.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		writeFile(b, conf, fmt.Sprintf("port %d\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir %s\n"+
			"sentinel monitor cache 127.0.0.1 %d 2\nsentinel auth-pass cache s3cret-pw\n"+
			"sentinel down-after-milliseconds cache 5000\nsentinel failover-timeout cache 60000\nsentinel parallel-syncs cache 1\n",
			p, dir, port))
		out := &syncBuffer{}
		cmd := exec.Command(bin, append([]string{conf}, mode...)...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if b.Failed() {
				b.Logf("log of the sentinel on %d:\n%s", p, out.String())
			}
		})
		ports = append(ports, p)
	}
	return ports
}

func sentinelDo(port int, cmd string, args ...any) (any, error) {
	c, err := dialRedisAs("", localAddr(port), nil, nil, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Do(cmd, args...)
}

// sentinelPrimary is where the sentinel at port says the primary is.
func sentinelPrimary(port int) (string, error) {
	a, err := redis.Strings(sentinelDo(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "cache"))
	if err != nil {
		return "", err
	}
	if len(a) != 2 {
		return "", fmt.Errorf("sentinel on %d names no primary", port)
	}
	return a[0] + ":" + a[1], nil
}

// sentinelSettled tells whether the sentinel at port names primary, has no
// failover in progress, knows the two other sentinels, and sees both other
// servers replicating from primary with their link up.
func sentinelSettled(port int, primary string) bool {
	if p, err := sentinelPrimary(port); err != nil || p != primary {
		return false
	}
	m, err := redis.StringMap(sentinelDo(port, "SENTINEL", "MASTER", "cache"))
	if err != nil || m["flags"] != "master" || m["num-other-sentinels"] != "2" {
		return false
	}
	replicas, err := redis.Values(sentinelDo(port, "SENTINEL", "REPLICAS", "cache"))
	if err != nil || len(replicas) != 2 {
		return false
	}
	for _, r := range replicas {
		f, _ := redis.StringMap(r, nil)
		if f["flags"] != "slave" || f["role-reported"] != "slave" || f["master-link-status"] != "ok" || f["master-host"]+":"+f["master-port"] != primary {
			return false
		}
	}
	return true
}

// waitKeys waits until the instance's redis-server holds n keys.
func waitKeys(t *testing.T, in *instance, n int64) redis.Conn {
	t.Helper()
	c := in.redis()
	eventually(t, 10*time.Second, fmt.Sprintf("%s to hold %d keys", in.pod, n), func() bool {
		size, _ := redis.Int64(c.Do("DBSIZE"))
		return size == n
	})
	return c
}

// entriesOf reads the status files of a local-mode cluster.
func entriesOf(cf string) map[string]instanceStatus {
	return newLocalSource(cf, "cache", "default", "-", slog.New(slog.DiscardHandler)).readEntries()
}

// dirDigest is every file under dir with its content, to show it untouched.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Base(p) != "redis.conf" {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "%s %x\n", strings.TrimPrefix(p, dir), sha256.Sum256(data))
		}
		return nil
	})
	return b.String()
}

// The target's data directory is wiped while the others hold the data: it
// refuses to start as an empty primary (which replicas would copy), the
// data stays where it is, and moving the target brings it all back.
func TestEmptyPrimaryGuard(t *testing.T) {
	const fragment = "appendonly yes\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	writeKeys(t, nodes[0].redis(), "k", 500)
	eventually(t, 30*time.Second, "every status entry to report the keys", func() bool {
		es := entriesOf(cf)
		return es["cache-0"].Keys > 0 && es["cache-1"].Keys > 0 && es["cache-2"].Keys > 0 // counts ride the heartbeat
	})
	old := nodes[0]
	if code := old.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if err := os.RemoveAll(old.dataDir); err != nil {
		t.Fatal(err)
	}
	back := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, dataDir: old.dataDir, port: old.port, password: old.password})
	eventually(t, 10*time.Second, "the refusal in lastError", func() bool {
		return strings.Contains(back.status().LastError, "refusing to start as the primary with an empty data directory")
	})
	if code, body := back.get("/readyz"); code != 503 || !strings.Contains(string(body), "empty data directory") {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if _, err := dialRedisAs("", localAddr(back.port), []string{back.password}, nil, 200*time.Millisecond); err == nil {
		t.Fatal("redis-server started as an empty primary")
	}
	checkKeys(t, nodes[1].redis(), "k", 500)

	writeFile(t, cf, clusterYAML("cache", "cache-1", fragment, "s3cret-pw"))
	eventually(t, 20*time.Second, "cache-1 to take writes", func() bool {
		_, err := nodes[1].redis().Do("SET", "after", "move")
		return err == nil
	})
	back.waitReady(30 * time.Second)
	checkKeys(t, back.redis(), "k", 500)
}

// The primary's data directory and every status entry are lost (the object
// recreated, a volume gone): the primary comes up empty, with nothing to say
// the cluster held data, and the replicas, whose disks hold it, refuse to
// follow it; their data stays byte for byte.
func TestEmptyMasterGuard(t *testing.T) {
	const fragment = "appendonly yes\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	writeKeys(t, nodes[0].redis(), "k", 500)
	for _, n := range nodes[1:] {
		waitKeys(t, n, 500)
	}
	digests := map[string]string{}
	for _, n := range nodes {
		if code := n.stop(); code != 0 {
			t.Fatalf("%s exit %d", n.pod, code)
		}
		digests[n.pod] = dirDigest(t, n.dataDir)
	}
	os.RemoveAll(nodes[0].dataDir)
	os.RemoveAll(cf + ".status")

	primary := startInstance(t, instanceOpts{pod: "cache-0", clusterFile: cf, dataDir: nodes[0].dataDir, port: nodes[0].port, password: nodes[0].password})
	primary.waitReady(20 * time.Second)
	var back []*instance
	for _, n := range nodes[1:] {
		back = append(back, startInstance(t, instanceOpts{pod: n.pod, clusterFile: cf, dataDir: n.dataDir, port: n.port, password: n.password}))
	}
	for _, b := range back {
		eventually(t, 10*time.Second, b.pod+"'s refusal in lastError", func() bool {
			return strings.Contains(b.status().LastError, "refusing to follow cache-0, which reports no key")
		})
	}
	time.Sleep(time.Second)
	for i, b := range back {
		if _, err := dialRedisAs("", localAddr(b.port), []string{b.password}, nil, 200*time.Millisecond); err == nil {
			t.Fatalf("%s started to follow an empty primary", b.pod)
		}
		if after := dirDigest(t, b.dataDir); after != digests[nodes[i+1].pod] {
			t.Fatalf("%s's data changed:\nbefore %s\nafter %s", b.pod, digests[nodes[i+1].pod], after)
		}
	}
}

// datasetKeys reads real files: RDB and AOF, empty and not.
func TestDatasetKeys(t *testing.T) {
	redisServer := requireRedis(t)
	for _, aof := range []string{"no", "yes"} {
		dir := t.TempDir()
		port := freePort(t)
		cmd := exec.Command(redisServer, "--port", fmt.Sprint(port), "--dir", dir, "--appendonly", aof, "--save", "")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var c redis.Conn
		eventually(t, 5*time.Second, "redis-server to answer", func() bool {
			var err error
			c, err = dialRedisAs("", localAddr(port), []string{""}, nil, time.Second)
			return err == nil
		})
		frag, _ := parseFragment("appendonly " + aof)
		if _, err := c.Do("SAVE"); err != nil {
			t.Fatal(err)
		}
		if n := datasetKeys(dir, frag); n != 0 {
			t.Errorf("appendonly %s, empty: %d keys", aof, n)
		}
		c.Do("FUNCTION", "LOAD", "#!lua name=lib\nredis.register_function('f', function() return 1 end)")
		for i := range 42 {
			c.Do("SET", fmt.Sprintf("k%d", i), strings.Repeat("x", i*10))
		}
		c.Do("SET", "n", 12345)
		if _, err := c.Do("SAVE"); err != nil {
			t.Fatal(err)
		}
		if aof == "yes" {
			c.Do("BGREWRITEAOF")
			eventually(t, 10*time.Second, "the AOF rewrite to finish", func() bool {
				text, _ := redis.String(c.Do("INFO", "persistence"))
				i := parseInfo(text)
				return i["aof_rewrite_in_progress"] == "0" && i["aof_rewrite_scheduled"] == "0" && i["aof_last_bgrewrite_status"] == "ok"
			})
		}
		// After the rewrite the AOF's base is an RDB with every key and its
		// increment is empty, so both read exactly.
		if n := datasetKeys(dir, frag); n != 43 {
			t.Errorf("appendonly %s, 43 keys: %d", aof, n)
		}
		c.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}
	if n := datasetKeys(t.TempDir(), nil); n != 0 {
		t.Errorf("no files: %d", n)
	}
	garbage := t.TempDir()
	writeFile(t, filepath.Join(garbage, "dump.rdb"), "not an rdb")
	if n := datasetKeys(garbage, nil); n != 1 {
		t.Errorf("an unreadable file counts as data: %d", n)
	}
}

// The primary is cut off (its manager and redis-server frozen) while the
// target moves and the new target fails over. When it comes back it still
// believes it is master: it must demote itself and follow the new primary,
// not keep taking writes.
func TestCutOffPrimaryDemotesItselfOnReturn(t *testing.T) {
	const fragment = "appendonly yes\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	writeKeys(t, nodes[0].redis(), "k", 100)
	waitKeys(t, nodes[1], 100) // before the cut
	old := nodes[0]
	pid := old.redisPID()
	for _, p := range []int{old.cmd.Process.Pid, pid} {
		syscall.Kill(p, syscall.SIGSTOP)
	}
	defer func() {
		for _, p := range []int{old.cmd.Process.Pid, pid} {
			syscall.Kill(p, syscall.SIGCONT)
		}
	}()
	writeFile(t, cf, clusterYAML("cache", "cache-1", fragment, "s3cret-pw"))
	eventually(t, 20*time.Second, "cache-1 to fail over", func() bool {
		_, err := nodes[1].redis().Do("SET", "after", "cut")
		return err == nil
	})
	for _, p := range []int{old.cmd.Process.Pid, pid} {
		syscall.Kill(p, syscall.SIGCONT)
	}
	eventually(t, 20*time.Second, "the old primary to follow cache-1", func() bool { return masterPort(t, old) == fmt.Sprint(nodes[1].port) })
	if _, err := old.redis().Do("SET", "x", "y"); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Fatalf("the old primary took a write after coming back: %v", err)
	}
	c := old.redis()
	eventually(t, 10*time.Second, "the old primary to have the new primary's write", func() bool {
		v, _ := redis.String(c.Do("GET", "after"))
		return v == "cut"
	})
	checkKeys(t, c, "k", 100)
}

// With persistence off, a primary whose redis-server crashes would come
// back empty, and its replicas would copy the loss: it is not restarted
// as the primary. Moving the target brings it back as a replica, whole.
func TestCrashedPrimaryWithoutPersistenceIsNotRestartedEmpty(t *testing.T) {
	const fragment = "appendonly no\nsave \"\"\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	writeKeys(t, nodes[0].redis(), "k", 300)
	c1 := waitKeys(t, nodes[1], 300)
	eventually(t, 30*time.Second, "the primary's entry to report the keys", func() bool { return entriesOf(cf)["cache-0"].Keys > 0 })
	primary := nodes[0]
	syscall.Kill(primary.redisPID(), syscall.SIGKILL)
	// Refused by the restart guard or, once a view comes, the start guard.
	eventually(t, 10*time.Second, "the refusal in lastError", func() bool {
		e := primary.status().LastError
		return strings.Contains(e, "refusing to restart redis-server as the primary with an empty dataset") ||
			strings.Contains(e, "refusing to start as the primary with an empty data directory")
	})
	time.Sleep(time.Second)
	if _, err := dialRedisAs("", localAddr(primary.port), []string{primary.password}, nil, 200*time.Millisecond); err == nil {
		t.Fatal("the primary's redis-server was restarted empty")
	}
	checkKeys(t, c1, "k", 300)

	writeFile(t, cf, clusterYAML("cache", "cache-1", fragment, "s3cret-pw"))
	primary.waitReady(40 * time.Second)
	if got := masterPort(t, primary); got != fmt.Sprint(nodes[1].port) {
		t.Fatalf("the old primary came back following %q", got)
	}
	checkKeys(t, primary.redis(), "k", 300)
}

// A second master whose manager cannot act (frozen here, cut off from the
// API server in life) is demoted by the primary's manager, which finds it
// from its status entry.
func TestPrimaryDemotesASecondMaster(t *testing.T) {
	const fragment = "appendonly no\nrepl-diskless-sync-delay 0"
	cf, nodes := cluster3(t, fragment)
	stray := nodes[2]
	syscall.Kill(stray.cmd.Process.Pid, syscall.SIGSTOP)
	defer syscall.Kill(stray.cmd.Process.Pid, syscall.SIGCONT)
	if _, err := stray.redis().Do("REPLICAOF", "NO", "ONE"); err != nil {
		t.Fatal(err)
	}
	entry := entriesOf(cf)[stray.pod]
	entry.Role = "master"
	b, _ := json.Marshal(entry)
	writeFile(t, filepath.Join(cf+".status", stray.pod+".json"), string(b))
	eventually(t, 10*time.Second, "the stray master to be made a replica of the primary", func() bool {
		return masterPort(t, stray) == fmt.Sprint(nodes[0].port)
	})
}

// A diskless snapshot ends with the mark it was announced with; however the
// reads split the stream, what comes before the mark is copied whole and
// the mark is not, and a stream cut before its mark is an error.
func TestCopyUntilMark(t *testing.T) {
	mark := []byte(strings.Repeat("0123456789", 4))
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 39, 40, 41, 1000, 200_000} {
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(rng.IntN(256))
		}
		if size >= 39 { // ends in all but the last byte of the mark
			copy(payload[size-39:], mark)
		}
		stream := append(slices.Clone(payload), mark...)
		for _, r := range []io.Reader{bytes.NewReader(stream), iotest.OneByteReader(bytes.NewReader(stream)), iotest.HalfReader(bytes.NewReader(stream))} {
			var out bytes.Buffer
			if err := copyUntilMark(&out, r, mark); err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if !bytes.Equal(out.Bytes(), payload) {
				t.Fatalf("size %d: copied %d bytes, want the %d before the mark", size, out.Len(), size)
			}
		}
		if err := copyUntilMark(io.Discard, bytes.NewReader(stream[:len(stream)-1]), mark); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("size %d: a stream without its whole mark: %v, want unexpected EOF", size, err)
		}
	}
}
