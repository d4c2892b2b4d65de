package e2e

// spec.users on a real API server: the default user off, an application
// user that finds the primary through the discovery ports and writes
// through a switchover, and a change of the users applied on every
// instance.

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// usersFixture is three managers of a RedisCluster whose default user is
// off, with an application user app, on a real API server with the Role of
// deploy/rbac.yaml.
type usersFixture struct {
	dyn   dynamic.Interface
	nodes []*instance
}

func startUsersCluster(t testing.TB) *usersFixture {
	t.Helper()
	cp, kubeconfig := startDeployedAPIServer(t)
	admin := kubernetes.NewForConfigOrDie(cp.admin)
	f := &usersFixture{dyn: dynamic.NewForConfigOrDie(cp.admin)}
	if _, err := admin.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cache-app"},
		StringData: map[string]string{"password": "app-pw"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createCluster(t, cp, "cache", 3)
	f.setUsers(t, "on ~* &* +@all -@admin -@dangerous")
	for i := range 3 {
		f.nodes = append(f.nodes, startInstanceOf(t, "cache", fmt.Sprintf("cache-%d", i), kubeconfig, filepath.Join(t.TempDir(), fmt.Sprint(i)), freePort(t)))
	}
	for _, n := range f.nodes {
		eventually(t, 60*time.Second, n.pod+" to be ready", func() bool { return n.get("/readyz") == 200 })
	}
	return f
}

// setUsers patches spec.users: default off, and app with these rules.
func (f *usersFixture) setUsers(t testing.TB, appRules string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"users": []any{
		map[string]any{"name": "default", "rules": "off"},
		map[string]any{"name": "app", "rules": appRules, "passwordSecretRef": map[string]any{"name": "cache-app", "key": "password"}},
	}}})
	if _, err := f.dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// appCommands is ACL GETUSER app's commands on the server at port, asked
// as the manager's user.
func appCommands(port int) string {
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Username: "redis-operator", Password: password, Protocol: 2})
	defer c.Close()
	v, err := c.Do(context.Background(), "ACL", "GETUSER", "app").Slice()
	if err != nil {
		return ""
	}
	for i := 0; i+1 < len(v); i += 2 {
		if v[i] == "commands" {
			return fmt.Sprint(v[i+1])
		}
	}
	return ""
}

// operatorRole is ROLE's first word, asked as the manager's user.
func operatorRole(port int) string {
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), Username: "redis-operator", Password: password})
	defer c.Close()
	r, err := c.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return ""
	}
	return fmt.Sprint(r[0])
}

func TestUsersOnARealAPIServer(t *testing.T) {
	f := startUsersCluster(t)
	// The default user is off; app works; the manager's user has no data.
	def := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.nodes[0].port), Password: password})
	if err := def.Ping(context.Background()).Err(); err == nil {
		t.Error("the default user still works")
	}
	def.Close()
	op := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.nodes[0].port), Username: "redis-operator", Password: password})
	if err := op.Set(context.Background(), "k", "v", 0).Err(); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("the manager's user wrote a key: %v", err)
	}
	op.Close()

	// go-redis as app, through the discovery ports, across a switchover.
	var sentinels []string
	for _, n := range f.nodes {
		sentinels = append(sentinels, fmt.Sprintf("127.0.0.1:%d", n.sentinelPort))
	}
	w := startGoWriterWith("app", &goredis.FailoverOptions{MasterName: "cache", SentinelAddrs: sentinels,
		Username: "app", Password: "app-pw", SentinelPassword: password})
	// A hundred writes before the switchover, so that the count checked
	// after it says something however quick the switchover is.
	eventually(t, 30*time.Second, "app to write", func() bool { return w.count() >= 100 })
	moved := time.Now()
	if _, err := f.dyn.Resource(redisCluster).Namespace(ns).Patch(context.Background(), "cache", types.MergePatchType,
		[]byte(`{"spec":{"targetPrimary":"cache-1"}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "app to write to cache-1", func() bool {
		return operatorRole(f.nodes[1].port) == "master" && w.ackedSince(moved.Add(200*time.Millisecond))
	})
	acked := w.finish()
	c := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", f.nodes[1].port), Username: "app", Password: "app-pw"})
	if lost := lostWith(t, c, "app", acked); lost > 0 || len(acked) < 100 {
		t.Errorf("%d of %d acknowledged writes lost across the switchover", lost, len(acked))
	}
	c.Close()

	// A change of app's rules reaches every instance.
	began := time.Now()
	f.setUsers(t, "on ~* &* +@read +@connection")
	for _, n := range f.nodes {
		eventually(t, 10*time.Second, n.pod+" to take app's new rules", func() bool {
			return strings.Contains(appCommands(n.port), "+@read") && !strings.Contains(appCommands(n.port), "+@all")
		})
	}
	t.Logf("a users change through the API live on every instance %s after the patch", time.Since(began).Round(time.Millisecond))
}

// BenchmarkUsersChange times a change of spec.users on a real API server:
// from the patch to the new rules live on each of the three instances.
func BenchmarkUsersChange(b *testing.B) {
	f := startUsersCluster(b)
	rules := []string{"on ~* &* +@read +@connection", "on ~* &* +@read +@write +@connection"}
	var times []time.Duration
	b.ResetTimer()
	for i := range b.N {
		want := rules[i%2]
		began := time.Now()
		f.setUsers(b, want)
		for _, n := range f.nodes {
			eventually(b, 10*time.Second, n.pod+" to take the change", func() bool {
				got := appCommands(n.port)
				return strings.Contains(got, "+@read") && strings.Contains(got, "+@write") == strings.Contains(want, "+@write")
			})
		}
		times = append(times, time.Since(began))
		time.Sleep(time.Second) // client-go allows 5 requests a second; a change costs 3
	}
	b.StopTimer()
	b.Logf("changes: %v", times)
	b.ReportMetric(percentileMS(times, 0.5), "p50-ms")
	b.ReportMetric(percentileMS(times, 0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}
