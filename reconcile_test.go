package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"
)

// observeAs feeds the harness's reconciler a look at Redis in the given
// role, every 50 ms, until the test ends.
func (h *kubeHarness) observeAs(role string) {
	stop := make(chan struct{})
	h.t.Cleanup(func() { close(stop) })
	go func() {
		for {
			o := &observation{at: time.Now(), primaryOffset: -1, info: redisInfo{"role": role, "redis_version": "7.0.15"}}
			select {
			case h.observations <- o:
			case <-stop:
				return
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-stop:
				return
			}
		}
	}()
}

// A server ends a watch after the timeout it was asked for, every five to
// ten minutes: that is no failure. The next watch resumes from the last
// resourceVersion seen (a bookmark's here), with no new list, no new read
// of the ConfigMap and Secret, and nothing counted as a restart.
func TestKubeWatchExpiryResumesWithoutAList(t *testing.T) {
	var mu sync.Mutex
	var asked []string // the resourceVersion each watch asks for
	expire := func(a k8stesting.Action) (bool, watch.Interface, error) {
		mu.Lock()
		asked = append(asked, a.(k8stesting.WatchAction).GetWatchRestrictions().ResourceVersion)
		n := len(asked)
		mu.Unlock()
		if n > 2 {
			return false, nil, nil // the fake's own watch from now on
		}
		w := watch.NewFakeWithChanSize(1, false)
		bookmark := &unstructured.Unstructured{}
		bookmark.SetAPIVersion("redisoperator.io/v1")
		bookmark.SetKind("RedisCluster")
		bookmark.SetResourceVersion([]string{"", "101", "102"}[n])
		w.Action(watch.Bookmark, bookmark)
		w.Stop() // the server's end of the watch, after the bookmark
		return true, w, nil
	}
	restarts := counts.watchRestarts.Load()
	h := startKubeHarnessWith(t, harnessOpts{pod: "cache-1", watches: []k8stesting.WatchReactionFunc{expire}, resync: time.Hour})
	eventually(t, 5*time.Second, "a third watch", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(asked) >= 3
	})
	mu.Lock()
	got := append([]string(nil), asked[1:3]...)
	mu.Unlock()
	if got[0] != "101" || got[1] != "102" {
		t.Errorf("the watches after an expiry asked for resourceVersions %q, want those of the bookmarks, 101 and 102", got)
	}
	if n := h.lists.Load(); n != 1 {
		t.Errorf("%d lists of the RedisCluster; an expiry must not cost one", n)
	}
	gets := 0
	for _, a := range h.client.Actions() {
		if a.GetVerb() == "get" && a.GetResource().Resource == "configmaps" {
			gets++
		}
	}
	if gets != 1 {
		t.Errorf("the ConfigMap was read %d times; an expiry must not cost a read", gets)
	}
	if n := counts.watchRestarts.Load() - restarts; n != 0 {
		t.Errorf("an expiry counted as %d watch restarts", n)
	}
	h.annotate("cache", `["cache-1"]`)
	eventually(t, 5*time.Second, "the resumed watch to deliver the fence", func() bool { return !h.proc.isWanted() })
}

// A handover may take seconds (an old primary that does not answer, a new
// one catching up). A fence that comes meanwhile stops redis-server at
// once: it does not wait behind the handover.
func TestFenceDoesNotWaitForAHandover(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var handovers atomic.Int32
	slow := func(old, new redisNode, passwords []string) (handoverSteps, error) {
		if handovers.Add(1) == 1 {
			close(entered)
		}
		<-release
		return handoverSteps{}, nil
	}
	// cache-1 runs as a master, but cache-0 is the target: after the
	// grace, its manager hands the role over.
	h := startKubeHarnessWith(t, harnessOpts{pod: "cache-1", handover: slow, port: freePort(t)})
	t.Cleanup(func() { close(release) }) // before the harness stops, which waits for it
	eventually(t, 5*time.Second, "redis-server to be wanted", h.proc.isWanted)
	h.observeAs("master")
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no handover began")
	}
	h.annotate("cache", `["cache-1"]`)
	eventually(t, 2*time.Second, "the fence to stop redis-server while the handover runs", func() bool { return !h.proc.isWanted() })
	if n := handovers.Load(); n != 1 {
		t.Errorf("%d handovers ran at once; one at a time", n)
	}
}

// A turn of the reconciler may be long, step after step (a fragment
// check, a checksum, dials), each bounded; the liveness probe must judge a
// step, not a turn, or a busy manager is killed, and its redis-server
// with it.
func TestSlowStepsKeepTheReconcilerAlive(t *testing.T) {
	const slow = 200 * time.Millisecond // each look at the supervisor
	h := startKubeHarnessWith(t, harnessOpts{pod: "cache-0", port: freePort(t), slow: slow})
	eventually(t, 5*time.Second, "redis-server to be wanted", h.proc.isWanted)
	h.observeAs("master")
	var oldest time.Duration
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		oldest = max(oldest, time.Since(time.Unix(0, h.rec.beat.Load())))
	}
	// A step looks at the supervisor four times at most (applying the
	// configuration live); a turn, eight times.
	if oldest > 5*slow {
		t.Fatalf("the reconciler's heartbeat grew %s old in turns of %s, of steps of %s at most", oldest.Round(time.Millisecond), 8*slow, 4*slow)
	}
}

// A restore under way when the manager stops is let go and waited for, so
// that what it wrote is removed by the restore itself, not left on the
// volume, possibly a whole backup, until the next start.
func TestStopJoinsTheRestore(t *testing.T) {
	var ended atomic.Bool
	began := make(chan struct{})
	restore := func(ctx context.Context, job *restoreJob) (int64, error) {
		close(began)
		<-ctx.Done()
		time.Sleep(300 * time.Millisecond) // removing what it wrote
		ended.Store(true)
		return 0, ctx.Err()
	}
	dir := t.TempDir()
	s := &settings{podName: "cache-0", cluster: "cache", namespace: "prod", dataDir: dir, redisPort: freePort(t), announceHost: "10.0.0.2"}
	rec := newReconciler(s, slog.New(slog.NewTextHandler(io.Discard, nil)),
		reconcilerDeps{sup: &fakeProcess{}, creds: newCredentials(), primaryKeys: new(atomic.Int64), restore: restore})
	v := clusterView{cluster: redisCluster{Metadata: objectMeta{Name: "cache", Namespace: "prod"}}}
	v.cluster.Spec.TargetPrimary = "cache-0"
	v.cluster.Spec.Bootstrap.Restore = &restoreSpec{URL: "https://backups.example/cache.rdb", SHA256: sha256Of([]byte("x"))}
	f := newFeed()
	f.view(v)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rec.run(ctx, f, make(chan *observation)); close(done) }()
	select {
	case <-began:
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("no restore began")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the reconciler did not stop")
	}
	if !ended.Load() {
		t.Fatal("the reconciler stopped while its restore still ran")
	}
}

// An upgrade hands redis-server's log pipe to the next manager, which
// needs the forwarder to stop reading. A pipe whose reads take no deadline
// (one inherited in blocking mode) cannot be released: the upgrade must be
// refused at once, not wait for ever with the reaper held, which would
// wedge the manager until liveness killed PID 1 and Redis with it.
func TestLogThatCannotBeReleasedRefusesTheUpgrade(t *testing.T) {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil { // blocking, as an fd inherited so would be
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(fds[0]), "redis-log"), os.NewFile(uintptr(fds[1]), "redis-log-w")
	defer r.Close()
	defer w.Close()
	sup := &supervisor{logR: r, logW: w, logDone: make(chan struct{}), redisLog: slog.New(slog.NewTextHandler(io.Discard, nil))}
	go sup.forwardLog()
	released := make(chan error, 1)
	go func() { _, _, _, err := sup.releaseLog(); released <- err }()
	select {
	case err := <-released:
		if err == nil {
			t.Fatal("releaseLog released a pipe it could not stop reading")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("releaseLog still waits after 5 s: an upgrade would wedge the manager")
	}
}
