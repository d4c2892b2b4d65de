package main

import (
	"context"
	byteorder "encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// clusterDoc is a cluster file of one RedisCluster with its target primary.
func clusterDoc(target string) string {
	return "apiVersion: redisoperator.io/v1\nkind: RedisCluster\nmetadata: {name: cache}\nspec: {instances: 3, targetPrimary: " + target + "}\n"
}

// Local mode takes an edit of the cluster file, or another instance's new
// entry, when it is written, not at the next poll: with the poll an hour
// away, each still reaches the reconciler. The manager's own entry, a
// temporary file and another file of the directory are no news.
func TestLocalSourceSeesChangesAsWritten(t *testing.T) {
	cf := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, cf, clusterDoc("cache-0"))
	s := newLocalSource(cf, "cache", "default", "cache-1", slog.New(slog.DiscardHandler))
	s.pollWatched = time.Hour
	s.sentAt = time.Now()
	s.lastFile, s.lastPeers = []byte(clusterDoc("cache-0")), s.readPeers() // as after the first view
	f := newFeed()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.run(ctx, f)
	time.Sleep(100 * time.Millisecond) // the watch set up

	next := func(what string) clusterView {
		t.Helper()
		select {
		case v := <-f.views:
			return v
		case err := <-f.errs:
			t.Fatalf("%s: %v", what, err.err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no view within 10s, with the poll an hour away", what)
		}
		return clusterView{}
	}
	quiet := func(what string) {
		t.Helper()
		select {
		case v := <-f.views:
			t.Fatalf("%s sent a view: %+v", what, v.cluster.Spec)
		case <-time.After(300 * time.Millisecond):
		}
	}

	// As sed -i edits it: a new file renamed over the old.
	writeFileAtomic(cf, []byte(clusterDoc("cache-2")), 0o644)
	if v := next("the file replaced"); v.cluster.targetPrimary() != "cache-2" {
		t.Fatalf("targetPrimary %q after the edit", v.cluster.targetPrimary())
	}
	// As an editor saves in place: written and closed.
	os.WriteFile(cf, []byte(clusterDoc("cache-1")), 0o644)
	if v := next("the file written in place"); v.cluster.targetPrimary() != "cache-1" {
		t.Fatalf("targetPrimary %q after the edit", v.cluster.targetPrimary())
	}
	// Another instance's entry.
	writeFileAtomic(filepath.Join(filepath.Dir(cf), "cluster.yaml.status", "cache-0.json"), []byte(`{"role": "master", "address": "10.0.0.1:6379"}`), 0o644)
	if v := next("cache-0's entry"); v.cluster.Status.InstancesStatus["cache-0"].Address != "10.0.0.1:6379" {
		t.Fatalf("entries %v", v.cluster.Status.InstancesStatus)
	}

	writeFileAtomic(filepath.Join(filepath.Dir(cf), "cluster.yaml.status", "cache-1.json"), []byte(`{"role": "replica"}`), 0o644)
	quiet("this instance's own entry")
	os.WriteFile(filepath.Join(filepath.Dir(cf), "notes.txt"), []byte("x"), 0o644)
	quiet("another file beside the cluster file")
}

// A change inotify does not tell (here a write whose file is still open:
// no IN_CLOSE_WRITE yet) is still seen by the poll, which reads only when
// the file's stat moved; and an unmoved stat sends nothing.
func TestLocalPollSeesAnUntoldChange(t *testing.T) {
	cf := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, cf, clusterDoc("cache-0"))
	s := newLocalSource(cf, "cache", "default", "cache-1", slog.New(slog.DiscardHandler))
	s.pollWatched = 100 * time.Millisecond
	f := newFeed()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.run(ctx, f)
	select {
	case <-f.views:
	case <-time.After(5 * time.Second):
		t.Fatal("no first view")
	}
	select {
	case v := <-f.views:
		t.Fatalf("a view with nothing changed: %+v", v.cluster.Spec)
	case <-time.After(500 * time.Millisecond):
	}

	w, err := os.OpenFile(cf, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString(clusterDoc("cache-2")); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-f.views:
		if v.cluster.targetPrimary() != "cache-2" {
			t.Fatalf("targetPrimary %q after the untold edit", v.cluster.targetPrimary())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an edit inotify did not tell was not seen by the poll")
	}
}

// A batch that lost events, or a watch whose directory went, is news: the
// reader cannot know what changed.
func TestLostInotifyEventsAreNews(t *testing.T) {
	event := func(wd int32, mask uint32, name string) []byte {
		b := make([]byte, syscall.SizeofInotifyEvent+16)
		byteorder.NativeEndian.PutUint32(b[0:], uint32(wd))
		byteorder.NativeEndian.PutUint32(b[4:], mask)
		byteorder.NativeEndian.PutUint32(b[12:], 16)
		copy(b[syscall.SizeofInotifyEvent:], name)
		return b
	}
	matters := map[int32]func(string) bool{1: func(name string) bool { return name == "cluster.yaml" }}
	for _, c := range []struct {
		batch []byte
		want  bool
	}{
		{event(1, syscall.IN_MOVED_TO, "cluster.yaml"), true},
		{event(1, syscall.IN_CLOSE_WRITE, "other.yaml"), false},
		{append(event(1, syscall.IN_CLOSE_WRITE, "other.yaml"), event(1, syscall.IN_MOVED_TO, "cluster.yaml")...), true},
		{event(-1, syscall.IN_Q_OVERFLOW, ""), true},
		{event(1, syscall.IN_IGNORED, ""), true},
		{event(2, syscall.IN_MOVED_TO, "cluster.yaml"), false},
	} {
		if got := eventsMatter(c.batch, matters); got != c.want {
			t.Errorf("eventsMatter(%x) = %v, want %v", c.batch, got, c.want)
		}
	}
}
