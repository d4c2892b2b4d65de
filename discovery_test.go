package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// discoveryCluster is a view of three instances: cache-0 the ready primary,
// cache-1 a ready replica, cache-2 a replica that is fenced.
func discoveryCluster(password string) clusterView {
	now := time.Now()
	v := clusterView{password: password}
	v.cluster.Metadata = objectMeta{Name: "cache", Namespace: "prod", Annotations: map[string]string{fencedAnnotation: `["cache-2"]`}}
	v.cluster.Status.CurrentPrimary = "cache-0"
	v.cluster.Status.InstancesStatus = map[string]instanceStatus{
		"cache-0": {Role: "master", Address: "10.0.0.1:6379", Ready: true, SentinelAddress: "10.0.0.1:26379", UpdatedAt: now},
		"cache-1": {Role: "replica", Address: "10.0.0.2:6379", Ready: true, MasterLinkStatus: "up", SentinelAddress: "10.0.0.2:26379", UpdatedAt: now},
		"cache-2": {Role: "replica", Address: "10.0.0.3:6379", Ready: true, MasterLinkStatus: "up", SentinelAddress: "10.0.0.3:26379", UpdatedAt: now},
	}
	return v
}

// startDiscovery serves a discovery port, as cache-1's manager, from view.
func startDiscovery(t *testing.T, view clusterView) (*discovery, string) {
	t.Helper()
	d := newDiscovery(slog.New(slog.NewTextHandler(io.Discard, nil)), &settings{namespace: "prod", cluster: "cache", podName: "cache-1"})
	d.publish(discoveryFor(view, "prod", "cache-1", time.Now()))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.serve(ctx, ln); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the discovery port did not stop within 5 s")
		}
	})
	return d, ln.Addr().String()
}

func dialDiscovery(t *testing.T, addr string) redis.Conn {
	t.Helper()
	c, err := redis.Dial("tcp", addr, redis.DialReadTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The discovery port names the ready master the status shows, and only
// that one; it lists the ready replicas, not a fenced one, and the other
// managers as the Sentinels. An unknown name gets a null.
func TestDiscoveryAnswersFromTheStatus(t *testing.T) {
	_, addr := startDiscovery(t, discoveryCluster("s3cret"))
	c := dialDiscovery(t, addr)
	if _, err := c.Do("SENTINEL", "get-master-addr-by-name", "cache"); err == nil || !strings.HasPrefix(err.Error(), "NOAUTH") {
		t.Fatalf("without AUTH: %v, want NOAUTH", err)
	}
	if _, err := c.Do("AUTH", "wrong"); err == nil || !strings.HasPrefix(err.Error(), "WRONGPASS") {
		t.Fatalf("a wrong password: %v, want WRONGPASS", err)
	}
	if _, err := c.Do("AUTH", "default", "s3cret"); err != nil {
		t.Fatal(err)
	}
	got, err := redis.Strings(c.Do("SENTINEL", "get-master-addr-by-name", "cache"))
	if err != nil || strings.Join(got, ":") != "10.0.0.1:6379" {
		t.Fatalf("get-master-addr-by-name: %q, %v", got, err)
	}
	if v, err := c.Do("SENTINEL", "get-master-addr-by-name", "other"); v != nil || err != nil {
		t.Fatalf("an unknown master: %v, %v, want a null", v, err)
	}
	replicas, err := redis.Values(c.Do("SENTINEL", "replicas", "cache"))
	if err != nil || len(replicas) != 1 {
		t.Fatalf("replicas: %d, %v; want cache-1 alone (cache-2 is fenced)", len(replicas), err)
	}
	if m, _ := redis.StringMap(replicas[0], nil); m["ip"] != "10.0.0.2" || m["port"] != "6379" || m["flags"] != "slave" || m["master-link-status"] != "ok" {
		t.Fatalf("replica fields %v", m)
	}
	sentinels, err := redis.Values(c.Do("SENTINEL", "sentinels", "cache"))
	if err != nil || len(sentinels) != 2 {
		t.Fatalf("sentinels: %d, %v; want the other two managers", len(sentinels), err)
	}
	masters, err := redis.Values(c.Do("SENTINEL", "masters"))
	if err != nil || len(masters) != 1 {
		t.Fatalf("masters: %v, %v", masters, err)
	}
	if m, _ := redis.StringMap(masters[0], nil); m["name"] != "cache" || m["flags"] != "master" || m["num-other-sentinels"] != "2" {
		t.Fatalf("master fields %v", m)
	}
	if role, err := redis.Values(c.Do("ROLE")); err != nil || len(role) != 2 || string(role[0].([]byte)) != "sentinel" {
		t.Fatalf("ROLE: %v, %v", role, err)
	}
	info, _ := redis.String(c.Do("INFO"))
	if strings.Contains(info, "s3cret") || !strings.Contains(info, "master0:name=cache,status=ok,address=10.0.0.1:6379") {
		t.Fatalf("INFO:\n%s", info)
	}
	if id, err := redis.String(c.Do("SENTINEL", "myid")); err != nil || id != sentinelID("prod", "cache", "cache-1") || len(id) != 40 {
		t.Fatalf("SENTINEL myid: %q, %v", id, err)
	}
	if _, err := c.Do("CLIENT", "SETNAME", "app"); err != nil {
		t.Fatal(err)
	}
	if name, err := redis.String(c.Do("CLIENT", "GETNAME")); err != nil || name != "app" {
		t.Fatalf("CLIENT GETNAME: %q, %v", name, err)
	}
	// RESP3 after HELLO 3 (which redigo does not read): maps, pushes.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	r := bufio.NewReader(raw)
	var firsts []string // the first line of each answer
	for _, cmd := range []string{"HELLO 3 AUTH default s3cret", "SENTINEL replicas cache", "SUBSCRIBE +switch-master"} {
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(raw, cmd+"\r\n")
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		firsts = append(firsts, strings.TrimSpace(line))
		raw.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for r.Buffered() > 0 || err == nil { // the rest of the answer
			_, err = r.ReadString('\n')
		}
	}
	if firsts[0] != "%7" || firsts[1] != "*1" || firsts[2] != ">3" {
		t.Fatalf("in RESP3, HELLO, SENTINEL replicas and SUBSCRIBE begin %q; want a map, an array of maps, a push", firsts)
	}
}

// No primary is named when it cannot be told: the source complains, the
// view is old, the primary's own entry is old, the primary is fenced, or it
// is not ready.
func TestDiscoveryNamesNoPrimaryItCannotVouchFor(t *testing.T) {
	for name, change := range map[string]func(v *clusterView, d *discoveryView){
		"source complains": func(_ *clusterView, d *discoveryView) { d.stale = true },
		"view is old":      func(_ *clusterView, d *discoveryView) { d.at = time.Now().Add(-discoveryStale) },
		"primary's entry is old": func(v *clusterView, _ *discoveryView) {
			e := v.cluster.Status.InstancesStatus["cache-0"]
			e.UpdatedAt = time.Now().Add(-discoveryStale)
			v.cluster.Status.InstancesStatus["cache-0"] = e
		},
		"primary is fenced": func(v *clusterView, _ *discoveryView) {
			v.cluster.Metadata.Annotations[fencedAnnotation] = `["cache-0"]`
		},
		"primary is not ready": func(v *clusterView, _ *discoveryView) {
			e := v.cluster.Status.InstancesStatus["cache-0"]
			e.Ready = false
			v.cluster.Status.InstancesStatus["cache-0"] = e
		},
		"another holds the role": func(v *clusterView, _ *discoveryView) { v.cluster.Status.CurrentPrimary = "cache-1" },
	} {
		t.Run(name, func(t *testing.T) {
			d, addr := startDiscovery(t, discoveryCluster(""))
			v := discoveryCluster("")
			dv := &discoveryView{}
			change(&v, dv)
			view := discoveryFor(v, "prod", "cache-1", time.Now())
			if !dv.at.IsZero() {
				view.at = dv.at
			}
			view.stale = dv.stale
			d.publish(view)
			c := dialDiscovery(t, addr)
			if got, err := c.Do("SENTINEL", "get-master-addr-by-name", "cache"); got != nil || err != nil {
				t.Fatalf("get-master-addr-by-name: %s, %v; want a null", got, err)
			}
		})
	}
}

// A request that is not RESP, or is too large, gets an error and the
// connection closed; the port goes on serving others.
func TestDiscoveryRefusesBadInput(t *testing.T) {
	_, addr := startDiscovery(t, discoveryCluster(""))
	for name, input := range map[string]string{
		"too many arguments":   "*100000\r\n",
		"a huge argument":      "*1\r\n$999999999\r\n",
		"a negative length":    "*1\r\n$-5\r\n",
		"not a bulk string":    "*1\r\n:12\r\n",
		"no CRLF after a bulk": "*1\r\n$4\r\nPINGxx",
		"an endless line":      strings.Repeat("x", 100<<10),
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(conn, input); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(conn)
			line, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "-ERR Protocol error") {
				t.Fatalf("answer %q, %v; want a protocol error", line, err)
			}
			if _, err := r.ReadByte(); err != io.EOF && !isConnReset(err) {
				t.Fatalf("the connection stays open after a protocol error: %v", err)
			}
		})
	}
	c := dialDiscovery(t, addr)
	if pong, err := redis.String(c.Do("PING")); err != nil || pong != "PONG" {
		t.Fatalf("after the bad clients: %q, %v", pong, err)
	}
	if _, err := c.Do("FLUSHALL"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("FLUSHALL: %v, want an unknown command", err)
	}
}

// A subscriber of +switch-master is told when the primary moves, once the
// new one is a ready master, in Sentinel's words.
func TestDiscoveryAnnouncesTheSwitch(t *testing.T) {
	d, addr := startDiscovery(t, discoveryCluster(""))
	c := dialDiscovery(t, addr)
	psc := redis.PubSubConn{Conn: c}
	if err := psc.Subscribe("+switch-master"); err != nil {
		t.Fatal(err)
	}
	if _, ok := psc.Receive().(redis.Subscription); !ok {
		t.Fatal("no subscription confirmed")
	}
	// The switchover: targetPrimary moves, and no primary is named until
	// cache-1 claims the role, a ready master.
	v := discoveryCluster("")
	v.cluster.Spec.TargetPrimary = "cache-1"
	d.publish(discoveryFor(v, "prod", "cache-1", time.Now()))
	if got := d.view.Load().named("cache"); got != "" {
		t.Fatalf("while the role moves, %s is named", got)
	}
	e := v.cluster.Status.InstancesStatus["cache-0"]
	e.Role = "replica"
	v.cluster.Status.InstancesStatus["cache-0"] = e
	d.publish(discoveryFor(v, "prod", "cache-1", time.Now()))
	e = v.cluster.Status.InstancesStatus["cache-1"]
	e.Role = "master"
	v.cluster.Status.InstancesStatus["cache-1"] = e
	v.cluster.Status.CurrentPrimary = "cache-1"
	d.publish(discoveryFor(v, "prod", "cache-1", time.Now()))
	switch m := psc.Receive().(type) {
	case redis.Message:
		if m.Channel != "+switch-master" || string(m.Data) != "cache 10.0.0.1 6379 10.0.0.2 6379" {
			t.Fatalf("message %s %q", m.Channel, m.Data)
		}
	default:
		t.Fatalf("got %v, want the +switch-master message", m)
	}
}

// Whatever a client sends, reading it ends: a command of at most maxArgs
// arguments of at most maxArgLen bytes, a protocol error, or the end of
// the input. Never a panic.
func FuzzReadCommand(f *testing.F) {
	for _, seed := range []string{"*1\r\n$4\r\nPING\r\n", "PING\r\n", strings.Repeat("a ", 100) + "\r\n", "*-1\r\n", "*2\r\n$3\r\nGET\r\n$-1\r\n", "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$5\r\ncache\r\n", "$5\r\nhello\r\n"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		r := bufio.NewReader(strings.NewReader(string(input)))
		for range 100 {
			args, err := readCommand(r)
			if err != nil {
				return
			}
			if len(args) > maxArgs {
				t.Fatalf("%d arguments read", len(args))
			}
			for _, a := range args {
				if len(a) > maxArgLen {
					t.Fatalf("an argument of %d bytes read", len(a))
				}
			}
		}
	})
}
