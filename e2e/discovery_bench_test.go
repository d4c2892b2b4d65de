package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// BenchmarkClientSwitchover measures a planned switchover as an application
// sees it: the longest time between two writes that a go-redis
// FailoverClient, writing as fast as it is answered, has acknowledged, and
// the acknowledged writes the final primary does not hold. The same client
// is measured against the managers' discovery ports (local mode, a
// targetPrimary change) and against three real Redis Sentinels (SENTINEL
// FAILOVER).
func BenchmarkClientSwitchover(b *testing.B) {
	b.Run("manager", benchmarkManagerSwitchover)
	b.Run("manager-apiserver", benchmarkAPIServerSwitchover)
	b.Run("sentinel", benchmarkSentinelSwitchover)
}

// benchmarkAPIServerSwitchover is the managers' on the real API server:
// the switchover a targetPrimary patch starts.
func benchmarkAPIServerSwitchover(b *testing.B) {
	dyn, nodes, sentinels := startAPIServerCluster(b)
	w := startGoWriter(sentinels, password)
	eventually(b, 20*time.Second, "the client to write", func() bool { return w.ackedSince(time.Time{}) })
	target := 0
	gaps := timeClientSwitchovers(b, w, func(i int) {
		target = 1 - target
		patch := fmt.Sprintf(`{"spec":{"targetPrimary":"cache-%d"}}`, target)
		if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
	}, func(moved time.Time) bool {
		return role(nodes[target].port) == "master" && role(nodes[1-target].port) == "slave" && w.ackedSince(moved)
	})
	reportClientSwitchovers(b, gaps, w, nodes[target].port)
}

func benchmarkManagerSwitchover(b *testing.B) {
	lc := startLocalCluster(b, "appendonly no\nrepl-diskless-sync-delay 0")
	w := startGoWriter(lc.sentinels(), password)
	eventually(b, 20*time.Second, "the client to write", func() bool { return w.ackedSince(time.Time{}) })
	target := 0
	gaps := timeClientSwitchovers(b, w, func(i int) {
		target = 1 - target
		lc.write(lc.nodes[target].pod, "")
	}, func(moved time.Time) bool {
		return role(lc.nodes[target].port) == "master" && role(lc.nodes[1-target].port) == "slave" && w.ackedSince(moved)
	})
	reportClientSwitchovers(b, gaps, w, lc.nodes[target].port)
}

func benchmarkSentinelSwitchover(b *testing.B) {
	ports := bareServers(b)
	sentinels := startSentinels(b, ports[0])
	sc := func(port int) *goredis.SentinelClient {
		return goredis.NewSentinelClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	}
	settled := func() (string, bool) {
		var primary string
		for _, s := range sentinels {
			c := sc(s)
			addr, err := c.GetMasterAddrByName(context.Background(), "cache").Result()
			m, merr := c.Master(context.Background(), "cache").Result()
			replicas, rerr := c.Replicas(context.Background(), "cache").Result()
			c.Close()
			if err != nil || merr != nil || rerr != nil || m["flags"] != "master" || m["num-other-sentinels"] != "2" || len(replicas) != 2 {
				return "", false
			}
			p := addr[0] + ":" + addr[1]
			for _, r := range replicas {
				if r["flags"] != "slave" || r["master-link-status"] != "ok" || r["master-host"]+":"+r["master-port"] != p {
					return "", false
				}
			}
			if primary != "" && p != primary {
				return "", false
			}
			primary = p
		}
		return primary, true
	}
	primary := ""
	eventually(b, 90*time.Second, "the sentinels to know each other and both replicas", func() bool {
		p, ok := settled()
		primary = p
		return ok
	})
	var addrs []string
	for _, s := range sentinels {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", s))
	}
	w := startGoWriter(addrs, "")
	eventually(b, 20*time.Second, "the client to write", func() bool { return w.ackedSince(time.Time{}) })
	gaps := timeClientSwitchovers(b, w, func(i int) {
		c := sc(sentinels[0])
		defer c.Close()
		if err := c.Failover(context.Background(), "cache").Err(); err != nil {
			b.Fatalf("SENTINEL FAILOVER %d: %v", i, err)
		}
	}, func(moved time.Time) bool {
		// SENTINEL FAILOVER refuses while a failover is in progress: the
		// next one waits until every sentinel sees the replicas follow the
		// new primary, the old one included.
		p, ok := settled()
		if ok && p != primary && w.ackedSince(moved) {
			primary = p
			return true
		}
		return false
	})
	var port int
	fmt.Sscanf(primary[len("127.0.0.1:"):], "%d", &port)
	reportClientSwitchovers(b, gaps, w, port)
}

// timeClientSwitchovers runs b.N switchovers, each triggered by trigger and
// over once done says so, and returns the longest gap between two
// acknowledged writes in each.
func timeClientSwitchovers(b *testing.B, w *goWriter, trigger func(i int), done func(moved time.Time) bool) []time.Duration {
	var gaps []time.Duration
	b.ResetTimer()
	for i := range b.N {
		time.Sleep(300 * time.Millisecond) // writes before, for the gap to start from one
		moved := time.Now()
		trigger(i)
		eventually(b, 120*time.Second, fmt.Sprintf("switchover %d to end", i), func() bool { return done(moved) })
		time.Sleep(300 * time.Millisecond) // and after
		gaps = append(gaps, w.gap(moved.Add(-50*time.Millisecond)))
	}
	b.StopTimer()
	return gaps
}

func reportClientSwitchovers(b *testing.B, gaps []time.Duration, w *goWriter, finalPort int) {
	acked := w.finish()
	slices.Sort(gaps)
	at := func(p float64) float64 {
		return float64(gaps[min(len(gaps)-1, int(p*float64(len(gaps))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.5), "gap-p50-ms")
	b.ReportMetric(at(0.99), "gap-p99-ms")
	b.ReportMetric(float64(lostOn(b, finalPort, "w", acked)), "lost-writes")
	b.ReportMetric(float64(len(acked)), "acked-writes")
}

// bareServers runs three redis-servers with no manager: a master and two
// replicas, for the Sentinels to watch.
func bareServers(b *testing.B) [3]int {
	var ports [3]int
	for i := range ports {
		ports[i] = freePort(b)
		args := []string{"--port", fmt.Sprint(ports[i]), "--dir", b.TempDir(), "--save", "", "--appendonly", "no",
			"--repl-diskless-sync-delay", "0", "--requirepass", password, "--masterauth", password}
		if i > 0 {
			args = append(args, "--replicaof", "127.0.0.1", fmt.Sprint(ports[0]))
		}
		cmd := exec.Command("redis-server", args...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	for _, p := range ports[1:] {
		eventually(b, 30*time.Second, "the replicas to sync", func() bool { return role(p) == "slave" })
	}
	return ports
}

// startSentinels runs three Redis Sentinels watching the master at port.
func startSentinels(b *testing.B, port int) []int {
	// Debian ships redis-sentinel in a package of its own (make bench
	// installs it); without it, redis-server runs as one with --sentinel.
	bin, mode := "redis-sentinel", []string{}
	if _, err := exec.LookPath(bin); err != nil {
		bin, mode = "redis-server", []string{"--sentinel"}
	}
	var ports []int
	for range 3 {
		p, dir := freePort(b), b.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir %s\n"+
			"sentinel monitor cache 127.0.0.1 %d 2\nsentinel auth-pass cache %s\n"+
			"sentinel down-after-milliseconds cache 5000\nsentinel failover-timeout cache 60000\nsentinel parallel-syncs cache 1\n",
			p, dir, port, password)), 0o600)
		cmd := exec.Command(bin, append([]string{conf}, mode...)...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ports = append(ports, p)
	}
	return ports
}

// BenchmarkDiscoverySubscribers measures what many idle clients of the
// discovery port cost a manager: 1,000 connections subscribed to
// +switch-master, as go-redis keeps one per client process, and the
// manager's resident memory before and after.
func BenchmarkDiscoverySubscribers(b *testing.B) {
	lc := startLocalCluster(b, "appendonly no")
	in := lc.nodes[1]
	pid := in.cmd.Process.Pid
	const n = 1000
	b.ResetTimer()
	for range b.N {
		before := procMiB(pid, "VmRSS")
		var conns []net.Conn
		for range n {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", in.sentinelPort))
			if err != nil {
				b.Fatal(err)
			}
			fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n", len(password), password)
			conns = append(conns, c)
		}
		for _, c := range conns { // each answered: +OK, then the subscription
			r := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for range 5 {
				if _, err := r.ReadString('\n'); err != nil {
					b.Fatal(err)
				}
			}
		}
		time.Sleep(time.Second)
		after := procMiB(pid, "VmRSS")
		b.ReportMetric(after-before, "rss-MiB/1000-subscribers")
		b.ReportMetric(after, "rss-MiB")
		for _, c := range conns {
			c.Close()
		}
	}
}

// BenchmarkSwitchoverAPIServer is the main package's
// BenchmarkSwitchoverManager on the real API server: three managers with
// the shipped Role's token, a writer INCRing a counter on the primary as
// fast as it can and moving to the other server when refused (in a process
// of its own: inside the test process it shared two cores and the
// collections of the API server and etcd, and took some 12 ms p50 to move
// once the handover was done, against 6 ms alone), and a
// switchover back and forth between cache-0 and cache-1 per iteration,
// with a second of writes before each (closer together, the managers'
// status patches meet client-go's default limit of 5 requests a second,
// which is another measure). Time-to-writable runs from the patch
// of targetPrimary to the first write the new primary acknowledges; lost
// writes are those the writer saw acknowledged minus the counter on the
// last primary.
func BenchmarkSwitchoverAPIServer(b *testing.B) {
	dyn, nodes, _ := startAPIServerCluster(b)
	var took, patchCall, toView, afterView, handover []time.Duration
	var acked int64
	primary := 0
	b.ResetTimer()
	for range b.N {
		target := 1 - primary
		w := startWriterProcess(b, nodes[primary].port, nodes[target].port)
		time.Sleep(time.Second)
		logged := len(nodes[target].out.String())
		patched := time.Now()
		patchSpec(b, dyn, fmt.Sprintf(`{"spec":{"targetPrimary":"cache-%d"}}`, target))
		patchCall = append(patchCall, time.Since(patched)) // the API server's own part: the write to etcd
		eventually(b, 20*time.Second, "the new primary to acknowledge writes", func() bool { return w.onNew() >= 100 })
		took = append(took, w.firstOnNew().Sub(patched))
		acked += w.finish()
		// Where it went, by the new primary's manager's own log line.
		if at, r := tookOver(nodes[target].out.String()[logged:]); r != nil {
			d := func(k string) time.Duration { v, _ := time.ParseDuration(fmt.Sprint(r[k])); return v }
			toView = append(toView, at.Add(-d("took")).Add(-d("afterView")).Sub(patched))
			afterView = append(afterView, d("afterView"))
			handover = append(handover, d("took"))
		}
		eventually(b, 20*time.Second, "the old primary a ready replica", func() bool {
			es, current := entries(b, dyn)
			return current == fmt.Sprintf("cache-%d", target) && es[fmt.Sprintf("cache-%d", primary)]["ready"] == true
		})
		primary = target
	}
	b.StopTimer()
	counter, err := nodes[primary].redis("GET", "counter")
	if err != nil {
		b.Fatal(err)
	}
	n, _ := strconv.ParseInt(counter, 10, 64)
	b.ReportMetric(float64(acked), "acked-writes")
	b.ReportMetric(float64(max(0, acked-n)), "lost-writes")
	b.ReportMetric(percentileMS(took, 0.5), "p50-ms")
	b.ReportMetric(percentileMS(took, 0.99), "p99-ms")
	b.ReportMetric(percentileMS(patchCall, 0.5), "patch-call-p50-ms")
	if len(toView) > 0 {
		b.ReportMetric(percentileMS(toView, 0.5), "patch-to-view-p50-ms")
		b.ReportMetric(percentileMS(toView, 0.99), "patch-to-view-p99-ms")
		b.ReportMetric(percentileMS(afterView, 0.5), "view-to-handover-p50-ms")
		b.ReportMetric(percentileMS(handover, 0.5), "handover-p50-ms")
		b.ReportMetric(percentileMS(handover, 0.99), "handover-p99-ms")
	}
	b.ReportMetric(0, "ns/op")
}

// tookOver finds the manager's "took over the primary role" line in log,
// and when it was written.
func tookOver(log string) (time.Time, map[string]any) {
	for _, line := range strings.Split(log, "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == "took over the primary role" {
			at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r["time"]))
			return at, r
		}
	}
	return time.Time{}, nil
}
