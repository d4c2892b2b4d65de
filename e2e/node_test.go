package e2e

// deploy/ as shipped, run by a real kubelet: the manager as PID 1 of the
// Redis container, the kubelet's own probes, a switchover and a fence, a
// pod deleted under load, and an in-place upgrade over the pod network.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

// What deploy/cluster.yaml ships: the test uses the placeholders as they are.
const (
	shippedPassword = "change-me-redis-password"
	shippedToken    = "change-me-operator-token"
)

func TestRealNode(t *testing.T) {
	n := startNode(t)
	n.localVolumes(3)
	n.deploy()
	dyn := dynamic.NewForConfigOrDie(n.cp.admin)
	ctx := context.Background()
	started := time.Now()
	pods := n.awaitReady(t, 3, 3*time.Minute)
	t.Logf("node: three pods Ready through the manager's probes %v after deploy/ was applied", time.Since(started).Round(time.Millisecond))
	eventually(t, 30*time.Second, "cache-0 the current primary, two ready replicas", func() bool {
		es, current := entries(t, dyn)
		return current == "cache-0" && es["cache-0"]["ready"] == true && es["cache-1"]["ready"] == true && es["cache-2"]["ready"] == true
	})

	// The manager is PID 1 of the Redis container and reaps what is
	// orphaned there: a process whose parent exits is the manager's child,
	// and is waited for once it ends.
	for _, p := range pods {
		pid := n.containerPID(t, p, "redis")
		if nspid := procField(t, pid, "NSpid"); !strings.HasSuffix(nspid, "\t1") && !strings.HasSuffix(nspid, " 1") {
			t.Errorf("%s: the container's first process has NSpid %q, not 1 inside", p.Name, nspid)
		}
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})) != "/controller/redis-operator instance " {
			t.Errorf("%s: PID 1 is %q, not the manager", p.Name, cmdline)
		}
		if uid := strings.Fields(procField(t, pid, "Uid")); len(uid) == 0 || uid[0] != "999" {
			t.Errorf("%s: the manager runs as uid %v, not the pod's runAsUser 999", p.Name, uid)
		}
	}
	// fsGroup: the kubelet gave each data volume to group 999, setgid, so
	// that the redis user writes there.
	for i := range 3 {
		var st syscall.Stat_t
		if err := syscall.Stat(n.path("volumes", fmt.Sprint(i)), &st); err != nil || st.Gid != 999 || st.Mode&syscall.S_ISGID == 0 {
			t.Errorf("volume %d: gid %d, mode %o (%v); fsGroup was not applied", i, st.Gid, st.Mode, err)
		}
	}
	n.assertReaps(t, pods[0])

	// Starting, a replica is not ready until its first sync is done: the
	// readiness probe may say so. Liveness must never have failed.
	probes := n.probeFailures(t, probeTally{})
	t.Logf("node: probe failures while starting: %v", probes)
	for pod, fails := range probes {
		for _, f := range fails {
			if strings.HasPrefix(f, "Liveness") {
				t.Errorf("%s: %s while starting", pod, f)
			}
		}
	}

	// Applications find the primary through the cache-sentinel Service,
	// as deploy/statefulset.yaml tells them to: through kube-proxy.
	sentinel := n.serviceAddr(t, "cache-sentinel", 26379)
	// DialerRetries 1 and a DialTimeout of a second: go-redis (v9.23)
	// stays attached to the discovery port it last used, and when that pod
	// is deleted or restarted its address stops answering at all. With the
	// default five dial attempts every look-up runs out of DialTimeout
	// before go-redis lets that address go, and it never asks another;
	// with one attempt of the default 5 s, the look-ups' and the commands'
	// retries still made a minute of it (seen when go-redis had picked
	// cache-2, whose sandbox the test kills). The README's Discovery
	// section says so.
	w := startGoWriterWith("node", &goredis.FailoverOptions{MasterName: "cache", SentinelAddrs: []string{sentinel},
		Password: shippedPassword, SentinelPassword: shippedPassword, DialerRetries: 1, DialTimeout: time.Second})
	eventually(t, 30*time.Second, "go-redis to write through cache-sentinel", func() bool { return w.ackedSince(time.Time{}) })

	// A switchover to cache-1 under the write load: nothing acknowledged
	// is lost, the old primary refuses writes, and no probe fails.
	phase, tally := time.Now(), n.tally(t)
	patchSpec(t, dyn, `{"spec":{"targetPrimary":"cache-1"}}`)
	eventually(t, 30*time.Second, "go-redis to write to cache-1", func() bool {
		return n.role(t, "cache-1") == "master" && w.ackedSince(phase.Add(100*time.Millisecond))
	})
	t.Logf("switchover: go-redis could not write for %v", w.gap(phase).Round(time.Millisecond))
	eventually(t, 30*time.Second, "currentPrimary cache-1, cache-0 a ready replica", func() bool {
		es, current := entries(t, dyn)
		return current == "cache-1" && es["cache-0"]["role"] == "replica" && es["cache-0"]["ready"] == true
	})
	if err := n.do(t, "cache-0", "SET", "x", "y").Err(); err == nil || !strings.Contains(err.Error(), "READONLY") {
		t.Errorf("the old primary still takes writes: %v", err)
	}
	// The old primary, demoted, and the other replica, re-pointed, are no
	// ready replicas until their link to the new primary is up: a
	// readiness probe may catch that moment, but not two in a row
	// (failureThreshold 2), so the kubelet keeps them Ready.
	for pod, fails := range n.probeFailures(t, tally) {
		if pod == "cache-1" || len(fails) != 1 || !strings.HasPrefix(fails[0], "Readiness") || !strings.HasSuffix(fails[0], "(×1)") {
			t.Errorf("probes failed during the switchover: %s: %v", pod, fails)
		}
	}
	for _, pod := range []string{"cache-0", "cache-2"} {
		if since := n.readySince(t, pod); since.After(phase) {
			t.Errorf("the kubelet took %s out of service during the switchover (Ready since %v)", pod, since)
		}
	}

	// A fence of cache-2 stops its redis-server; the kubelet sees it not
	// ready (and only that: liveness holds, nothing restarts), and once
	// unfenced it is ready again.
	phase, tally = time.Now(), n.tally(t)
	fence(t, dyn, `["cache-2"]`)
	eventually(t, time.Second, "cache-2's redis-server to stop within 1s of the fence", func() bool {
		return n.do(t, "cache-2", "PING").Err() != nil
	})
	t.Logf("fence: redis-server stopped %v after the annotation", time.Since(phase).Round(time.Millisecond))
	eventually(t, 20*time.Second, "cache-2 fenced in status, and not Ready to the kubelet", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-2"]["fenced"] == true && !n.podReady(t, "cache-2") && n.get(t, "cache-2", "/healthz") == 200
	})
	fence(t, dyn, `[]`)
	eventually(t, 30*time.Second, "cache-2 Ready again once unfenced", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-2"]["fenced"] == false && n.podReady(t, "cache-2")
	})
	for pod, fails := range n.probeFailures(t, tally) {
		for _, f := range fails {
			if pod != "cache-2" || !strings.HasPrefix(f, "Readiness") {
				t.Errorf("during the fence of cache-2: %s: %s", pod, f)
			}
		}
	}
	if r := n.restarts(t); r != 0 {
		t.Errorf("the fence restarted %d containers", r)
	}

	// An in-place upgrade of cache-2's manager over the pod network:
	// redis-server keeps its PID, the kubelet sees nothing, and the status
	// names the new binary. A pod restarted afterwards keeps it: the init
	// container's install --keep-existing leaves it in the emptyDir.
	tally = n.tally(t)
	pid := n.redisPID(t, "cache-2")
	sum, answer := putUpdate(t, n.podAddr(t, "cache-2", 8000), shippedToken, n.managers["node-v2"], "node-v2")
	t.Logf("upgrade: the new manager served %v ms after the exec", answer["handoverMs"])
	eventually(t, 20*time.Second, "cache-2's entry to name the new binary", func() bool {
		es, _ := entries(t, dyn)
		return es["cache-2"]["executableHash"] == sum && es["cache-2"]["managerVersion"] == "node-v2" && es["cache-2"]["ready"] == true
	})
	time.Sleep(5 * time.Second) // two readiness periods and a half
	if got := n.redisPID(t, "cache-2"); got != pid {
		t.Errorf("the upgrade moved cache-2's redis-server from PID %d to %d", pid, got)
	}
	if r := n.restarts(t); r != 0 {
		t.Errorf("the upgrade restarted %d containers", r)
	}
	n.noProbeFailures(t, tally, "the upgrade")

	n.restartSandbox(t, "cache-2")
	eventually(t, 2*time.Minute, "cache-2 back in a new sandbox, on the upgraded binary", func() bool {
		es, _ := entries(t, dyn)
		p := n.pod(t, "cache-2")
		return isReady(p) && p.Status.ContainerStatuses[0].RestartCount == 1 &&
			es["cache-2"]["executableHash"] == sum && es["cache-2"]["ready"] == true
	})
	// The kubelet stopped the old container as for a pod's delete: the
	// manager's graceful stop, redis-server asked to SHUTDOWN, no kill.
	if first := n.containerLog(t, "cache-2", 0); !strings.Contains(first, `"msg":"redis-server stopped"`) || !strings.Contains(first, `"msg":"stopped"`) || strings.Contains(first, "killing it") {
		t.Errorf("cache-2's first container did not stop gracefully with its sandbox:\n%s", tail([]byte(first), 2048))
	}

	// kubectl delete pod of the primary while go-redis writes: a graceful
	// stop well within the grace period, then the operator's move of
	// targetPrimary, and the pod back with its data; nothing acknowledged
	// is lost.
	phase, tally = time.Now(), n.tally(t)
	old := n.pod(t, "cache-1")
	stopped := n.watchStop(t, old)
	if err := n.admin.CoreV1().Pods(ns).Delete(ctx, "cache-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	end := <-stopped
	grace := time.Duration(*old.Spec.TerminationGracePeriodSeconds) * time.Second
	if end.state == nil || end.state.ExitCode != 0 || end.took > grace {
		t.Errorf("cache-1's stop: %+v after %v (grace period %v)", end.state, end.took, grace)
	}
	t.Logf("delete: cache-1's manager stopped in %v, exit code %v", end.took.Round(time.Millisecond), end.state.ExitCode)
	patchSpec(t, dyn, `{"spec":{"targetPrimary":"cache-0"}}`)
	moved := time.Now()
	if !waitFor(60*time.Second, func() bool { return n.role(t, "cache-0") == "master" && w.ackedSince(moved.Add(100*time.Millisecond)) }) {
		es, current := entries(t, dyn)
		t.Fatalf("after 60s, go-redis does not write to cache-0 (%v): its role %q, currentPrimary %q, entries %v", w.lastError(), n.role(t, "cache-0"), current, es)
	}
	eventually(t, 2*time.Minute, "cache-1 back, a ready replica", func() bool {
		es, _ := entries(t, dyn)
		p := n.pod(t, "cache-1")
		return p.UID != old.UID && n.podReady(t, "cache-1") && es["cache-1"]["role"] == "replica" && es["cache-1"]["ready"] == true
	})
	if loaded := n.logMatch(t, "cache-1", `keys loaded: (\d+)|DB loaded from`); loaded == "" || loaded == "keys loaded: 0" {
		t.Errorf("cache-1 did not come back with its data: redis-server logged %q", loaded)
	}
	acked := w.finish()
	primary := n.client(t, "cache-0")
	defer primary.Close()
	if lost := lostWith(t, primary, "node", acked); lost > 0 || len(acked) < 1000 {
		t.Errorf("%d of %d acknowledged writes lost across the switchover and the deleted primary", lost, len(acked))
	}
	t.Logf("go-redis: %d writes acknowledged, none lost; it could not write for %v across the delete and the move", len(acked), w.gap(phase).Round(time.Millisecond))
	for pod, fails := range n.probeFailures(t, tally) {
		for _, f := range fails {
			if !strings.HasPrefix(f, "Readiness") {
				t.Errorf("after the delete of cache-1: %s: %s", pod, f)
			}
		}
	}
	for _, pod := range []string{"cache-0", "cache-1", "cache-2"} {
		if log := n.logs(t, pod); strings.Contains(log, shippedPassword) || strings.Contains(strings.ToLower(log), "forbidden") {
			t.Errorf("%s's log holds the password or a refusal of the shipped Role", pod)
		}
	}
}

// waitFor is eventually that says whether the condition came true.
func waitFor(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func patchSpec(t testing.TB, dyn dynamic.Interface, patch string) {
	t.Helper()
	if _, err := dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// awaitReady waits for count pods the kubelet reports Ready.
func (n *node) awaitReady(t testing.TB, count int, timeout time.Duration) []corev1.Pod {
	var ready []corev1.Pod
	eventually(t, timeout, fmt.Sprintf("%d pods Ready", count), func() bool {
		pods, err := n.admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		ready = slices.DeleteFunc(pods.Items, func(p corev1.Pod) bool { return !isReady(&p) })
		return len(ready) == count
	})
	return ready
}

func isReady(p *corev1.Pod) bool {
	return slices.ContainsFunc(p.Status.Conditions, func(c corev1.PodCondition) bool {
		return c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
	})
}

func (n *node) pod(t testing.TB, name string) *corev1.Pod {
	t.Helper()
	p, err := n.admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readySince is when the kubelet last turned the pod's Ready condition.
func (n *node) readySince(t testing.TB, name string) time.Time {
	for _, c := range n.pod(t, name).Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.LastTransitionTime.Time
		}
	}
	return time.Time{}
}

func (n *node) podReady(t testing.TB, name string) bool {
	p, err := n.admin.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	return err == nil && isReady(p)
}

// podAddr is the pod's IP and port: on the node's bridge.
func (n *node) podAddr(t testing.TB, name string, port int) string {
	return fmt.Sprintf("%s:%d", n.pod(t, name).Status.PodIP, port)
}

// client is a go-redis client of one pod's Redis, for one use: the caller
// closes it.
func (n *node) client(t testing.TB, name string) *goredis.Client {
	return goredis.NewClient(&goredis.Options{Addr: n.podAddr(t, name, 6379), Password: shippedPassword, MaxRetries: -1})
}

// do runs one command on a pod's Redis.
func (n *node) do(t testing.TB, name string, args ...any) *goredis.Cmd {
	c := n.client(t, name)
	defer c.Close()
	return c.Do(context.Background(), args...)
}

func (n *node) role(t testing.TB, name string) string {
	r, err := n.do(t, name, "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	return fmt.Sprint(r[0])
}

// redisPID is redis-server's PID in its container, as INFO says.
func (n *node) redisPID(t testing.TB, name string) int {
	info, err := n.do(t, name, "INFO", "server").Text()
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(info, "process_id:")
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(after, "\n", 2)[0]))
	return pid
}

func (n *node) get(t testing.TB, name, path string) int {
	resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + n.podAddr(t, name, 8000) + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// serviceAddr is a Service's cluster IP and port: reached through the
// rules kube-proxy wrote.
func (n *node) serviceAddr(t testing.TB, name string, port int) string {
	s, err := n.admin.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s:%d", s.Spec.ClusterIP, port)
}

// restarts is the sum of the Redis containers' restart counts.
func (n *node) restarts(t testing.TB) int {
	pods, err := n.admin.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, p := range pods.Items {
		for _, c := range p.Status.ContainerStatuses {
			total += int(c.RestartCount)
		}
	}
	return total
}

// probeTally is how many probe failures each of the kubelet's Unhealthy
// events (one per pod and message, counted) had come to.
type probeTally map[types.UID]int32

func (n *node) unhealthy(t testing.TB) []corev1.Event {
	events, err := n.admin.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=Unhealthy"})
	if err != nil {
		t.Fatal(err)
	}
	return events.Items
}

// tally is the probe failures so far, for probeFailures to count from.
func (n *node) tally(t testing.TB) probeTally {
	counts := probeTally{}
	for _, e := range n.unhealthy(t) {
		counts[e.UID] = max(e.Count, 1)
	}
	return counts
}

// probeFailures are the probe failures since the tally, by pod:
// "Readiness probe failed: … (×1)" and the like.
func (n *node) probeFailures(t testing.TB, since probeTally) map[string][]string {
	failures := map[string][]string{}
	for _, e := range n.unhealthy(t) {
		if more := max(e.Count, 1) - since[e.UID]; more > 0 {
			failures[e.InvolvedObject.Name] = append(failures[e.InvolvedObject.Name], fmt.Sprintf("%s (×%d)", e.Message, more))
		}
	}
	return failures
}

func (n *node) noProbeFailures(t testing.TB, since probeTally, during string) {
	t.Helper()
	if f := n.probeFailures(t, since); len(f) > 0 {
		t.Errorf("probes failed during %s: %v", during, f)
	}
}

// containerPID is the host PID of a container's first process, from
// containerd's task list.
func (n *node) containerPID(t testing.TB, p corev1.Pod, container string) int {
	t.Helper()
	var id string
	for _, c := range p.Status.ContainerStatuses {
		if c.Name == container {
			id = strings.TrimPrefix(c.ContainerID, "containerd://")
		}
	}
	out, err := n.ctr("tasks", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			return pid
		}
	}
	t.Fatalf("%s/%s (%s) is not among containerd's tasks:\n%s", p.Name, container, id, out)
	return 0
}

// procField is a line of /proc/<pid>/status.
func procField(t testing.TB, pid int, field string) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// assertReaps orphans a process in the pod's Redis container, and checks
// that the manager took it as its child and waited for it.
func (n *node) assertReaps(t testing.TB, p corev1.Pod) {
	manager := n.containerPID(t, p, "redis")
	arg := fmt.Sprintf("2.%06d", time.Now().UnixNano()%1000000)
	// sh exits at once, leaving sleep (its output not ours to wait for) to
	// the namespace's PID 1.
	if out, err := exec.Command("nsenter", "--target", fmt.Sprint(manager), "--pid", "--", "/bin/sh", "-c", "sleep "+arg+" </dev/null >/dev/null 2>&1 & exit 0").CombinedOutput(); err != nil {
		t.Fatalf("nsenter: %v\n%s", err, out)
	}
	orphan, parent := 0, ""
	for deadline := time.Now().Add(time.Second); orphan == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(cmd) == "sleep\x00"+arg+"\x00" {
				orphan, parent = pid, procField(t, pid, "PPid")
			}
		}
	}
	if orphan == 0 {
		t.Fatalf("the orphan (sleep %s) was not found", arg)
	}
	if parent != fmt.Sprint(manager) {
		t.Fatalf("the orphan's parent is %s, not the manager (%d): %s", parent, manager, procField(t, orphan, "NSpid"))
	}
	eventually(t, 10*time.Second, "the orphan reaped once it ended, not a zombie", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", orphan))
		return os.IsNotExist(err)
	})
}

// restartSandbox kills a pod's sandbox (its pause process), as a node
// whose runtime lost it would: the kubelet stops the pod's containers,
// makes a new sandbox, and runs the init containers again.
func (n *node) restartSandbox(t testing.TB, name string) {
	out, err := n.ctr("containers", "list", "labels.\"io.kubernetes.pod.name\"=="+name+",labels.\"io.cri-containerd.kind\"==sandbox")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("no sandbox for %s:\n%s", name, out)
	}
	for _, line := range lines[1:] {
		n.ctr("tasks", "kill", "-s", "SIGKILL", strings.Fields(line)[0])
	}
}

// stop is how a container ended, and how long after its pod's delete.
type stop struct {
	state *corev1.ContainerStateTerminated
	took  time.Duration
}

// watchStop follows a pod until it is gone, and says how its Redis
// container ended: the last status the kubelet wrote.
func (n *node) watchStop(t testing.TB, p *corev1.Pod) <-chan stop {
	w, err := n.admin.CoreV1().Pods(ns).Watch(context.Background(), metav1.ListOptions{
		FieldSelector: "metadata.name=" + p.Name, ResourceVersion: p.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan stop, 1)
	start := time.Now()
	go func() {
		defer w.Stop()
		var s stop
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || pod.UID != p.UID {
				continue
			}
			for _, c := range pod.Status.ContainerStatuses {
				if c.Name == "redis" && c.State.Terminated != nil && s.state == nil {
					s = stop{state: c.State.Terminated, took: time.Since(start)}
				}
			}
			if ev.Type == watch.Deleted {
				break
			}
		}
		out <- s
	}()
	return out
}

// logs is what the kubelet kept of a pod's Redis container: the manager's
// log and redis-server's, of every container this pod name ran.
func (n *node) logs(t testing.TB, name string) string {
	files, _ := filepath.Glob(n.path("pod-logs", ns+"_"+name+"_*", "redis", "*.log"))
	var all strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		all.Write(data)
	}
	return all.String()
}

// containerLog is what the kubelet kept of the current pod's Redis
// container's run number i (0 the first).
func (n *node) containerLog(t testing.TB, name string, i int) string {
	data, _ := os.ReadFile(n.path("pod-logs", ns+"_"+name+"_"+string(n.pod(t, name).UID), "redis", fmt.Sprintf("%d.log", i)))
	return string(data)
}

// logMatch is the last match of a pattern in the current pod's logs.
func (n *node) logMatch(t testing.TB, name, pattern string) string {
	uid := string(n.pod(t, name).UID)
	files, _ := filepath.Glob(n.path("pod-logs", ns+"_"+name+"_"+uid, "redis", "*.log"))
	var last string
	for _, f := range files {
		data, _ := os.ReadFile(f)
		if m := regexp.MustCompile(pattern).FindAllString(string(data), -1); len(m) > 0 {
			last = m[len(m)-1]
		}
	}
	return last
}
