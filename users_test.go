package main

// spec.users against real redis-servers: users declared, changed, rotated
// and removed live on every instance; refused declarations change nothing;
// and with the default user off, the manager still does all it does.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// testUser is one spec.users entry; password "" is none.
type testUser struct{ name, rules, password string }

// usersClusterYAML is clusterYAML with spec.users and a Secret per
// password.
func usersClusterYAML(target, fragment string, users []testUser) string {
	y := clusterYAML("cache", target, fragment, "s3cret-pw")
	var spec, secrets strings.Builder
	spec.WriteString("  users:\n")
	for _, u := range users {
		fmt.Fprintf(&spec, "    - name: %q\n      rules: %q\n", u.name, u.rules)
		if u.password != "" {
			fmt.Fprintf(&spec, "      passwordSecretRef: {name: cache-user-%s, key: password}\n", u.name)
			fmt.Fprintf(&secrets, "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cache-user-%s\nstringData:\n  password: %q\n", u.name, u.password)
		}
	}
	return strings.Replace(y, "  configMapRef:", spec.String()+"  configMapRef:", 1) + secrets.String()
}

// as is a connection to in's redis-server as user.
func (in *instance) as(user, password string) (redis.Conn, error) {
	return dialRedisAs(user, localAddr(in.port), []string{password}, in.clientTLS, 2*time.Second)
}

// aclUser is ACL GETUSER's flags and commands of name, as the manager's
// user sees them, or "" for no such user.
func aclUser(t testing.TB, in *instance, name string) string {
	t.Helper()
	c, err := dialRedis(localAddr(in.port), []string{"s3cret-pw"}, in.clientTLS, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := redis.Values(c.Do("ACL", "GETUSER", name))
	if err != nil || v == nil {
		return ""
	}
	m := map[string]string{}
	for i := 0; i+1 < len(v); i += 2 {
		k, _ := redis.String(v[i], nil)
		if s, err := redis.String(v[i+1], nil); err == nil {
			m[k] = s
		} else if list, err := redis.Strings(v[i+1], nil); err == nil {
			m[k] = strings.Join(list, ",")
		}
	}
	return fmt.Sprintf("flags=%s commands=%s keys=%s", m["flags"], m["commands"], m["keys"])
}

func TestUserRulesAreChecked(t *testing.T) {
	frag, _ := parseFragment("user alice on ~* +get")
	for _, c := range []struct {
		users []declaredUser
		want  string
	}{
		{[]declaredUser{{name: "app", rules: "on ~app:* +@read"}}, ""},
		{[]declaredUser{{name: "default", rules: "off"}}, ""},
		{[]declaredUser{{name: "bad name", rules: "on"}}, "is not a valid ACL user name"},
		{[]declaredUser{{name: "", rules: "on"}}, "is not a valid ACL user name"},
		{[]declaredUser{{name: "redis-operator", rules: "on"}}, "the manager's own user"},
		{[]declaredUser{{name: "app", rules: "on"}, {name: "app", rules: "off"}}, "declared twice"},
		{[]declaredUser{{name: "alice", rules: "on"}}, "declared by a user line of the redis.conf fragment"},
		{[]declaredUser{{name: "app", rules: "on >hunter2 ~*"}}, "rule 2 sets a password"},
		{[]declaredUser{{name: "app", rules: "on <hunter2"}}, "rule 2 sets a password"},
		{[]declaredUser{{name: "app", rules: "#" + strings.Repeat("a", 64)}}, "rule 1 sets a password"},
		{[]declaredUser{{name: "app", rules: "!" + strings.Repeat("a", 64)}}, "rule 1 sets a password"},
		{[]declaredUser{{name: "app", rules: "on NOPASS"}}, "rule 2 sets a password"},
		{[]declaredUser{{name: "app", rules: "on resetpass"}}, "rule 2 sets a password"},
	} {
		_, err := userRules(c.users, frag)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v refused: %v", c.users, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: %v, want %q", c.users, err, c.want)
		case err != nil && strings.Contains(err.Error(), "hunter2"):
			t.Errorf("the error quotes the password: %v", err)
		}
	}
	_, why := declaredUsers([]userSpec{{Name: "app", PasswordSecretRef: &keyRef{Name: "cache-app", Key: "password"}}},
		func(*keyRef) (string, error) { return "", fmt.Errorf("no Secret cache-app") })
	if !strings.Contains(why, `spec.users "app": no Secret cache-app`) {
		t.Errorf("a missing Secret: %q", why)
	}
}

// Users are declared, changed, rotated and removed live on both
// instances, with no restart and no client of another user dropped; users
// made by hand are left alone; refused declarations change nothing; a
// restart comes up with exactly the declared users.
func TestUsersAppliedLive(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, filepath.Join(dir, "token"), "op-token")
	const fragment = "appendonly no\nrepl-diskless-sync-delay 0"
	app := testUser{"app", "on ~app:* +@read +@write +@connection", "app-pw-1"}
	reader := testUser{"reader", "on ~* +get +@connection", "reader-pw"}
	writeFile(t, cf, usersClusterYAML("cache-0", fragment, []testUser{app, reader}))
	var nodes []*instance
	for i := range 2 {
		nodes = append(nodes, startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: "s3cret-pw",
			extraArgs: []string{"--operator-token-file", filepath.Join(dir, "token"), "--password-rotation-window", "2s"}}))
	}
	for _, in := range nodes {
		in.waitReady(30 * time.Second)
	}
	primary, replica := nodes[0], nodes[1]
	pids := []int{primary.redisPID(), replica.redisPID()}

	c, err := primary.as("app", "app-pw-1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Do("SET", "app:1", "v"); err != nil {
		t.Fatalf("app cannot write its keys: %v", err)
	}
	if _, err := c.Do("SET", "other:1", "v"); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Errorf("app wrote outside its keys: %v", err)
	}
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to have the users", func() bool {
			return strings.Contains(aclUser(t, in, "app"), "keys=~app:*") && aclUser(t, in, "reader") != ""
		})
	}
	if _, err := primary.redis().Do("ACL", "SETUSER", "manual", "on", ">manual-pw", "+ping"); err != nil {
		t.Fatal(err)
	}
	appID, _ := redis.Int64(c.Do("CLIENT", "ID"))

	// Changed: reader loses GET, gains nothing else; app's client stays.
	reader.rules = "on ~* +set +@connection"
	changed := time.Now()
	writeFile(t, cf, usersClusterYAML("cache-0", fragment, []testUser{app, reader}))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to change reader", func() bool {
			got := aclUser(t, in, "reader")
			return strings.Contains(got, "+set") && !strings.Contains(got, "+get")
		})
	}
	t.Logf("a user changed on both instances %s after the file", time.Since(changed).Round(time.Millisecond))
	if id, err := redis.Int64(c.Do("CLIENT", "ID")); err != nil || id != appID {
		t.Errorf("app's client was dropped by a change of reader: %v %v", id, err)
	}

	// Rotated: both passwords work for the window, then the new one only.
	app.password = "app-pw-2"
	writeFile(t, cf, usersClusterYAML("cache-0", fragment, []testUser{app, reader}))
	eventually(t, 5*time.Second, "the new password to work", func() bool {
		c2, err := primary.as("app", "app-pw-2")
		if err == nil {
			c2.Close()
		}
		return err == nil
	})
	if c1, err := primary.as("app", "app-pw-1"); err != nil {
		t.Errorf("the old password stopped working at once: %v", err)
	} else {
		c1.Close()
	}
	eventually(t, 10*time.Second, "the old password to stop working after the window", func() bool {
		c1, err := primary.as("app", "app-pw-1")
		if err == nil {
			c1.Close()
		}
		return err != nil
	})
	if _, err := c.Do("PING"); err != nil {
		t.Errorf("app's open client was dropped by its rotation: %v", err)
	}

	// Refused, each whole: the users stay as they were.
	before := aclUser(t, primary, "app")
	for _, bad := range []struct {
		users []testUser
		why   string
	}{
		{[]testUser{app, reader, {"evil", "on >sneaky ~* +@all", ""}}, "sets a password"},
		{[]testUser{{app.name, "on ~* +@all", app.password}, {"new", "on +nosuchcommand", "x"}}, "spec.users: redis-server"},
		{[]testUser{app, {"bad name", "on", ""}}, "not a valid ACL user name"},
	} {
		writeFile(t, cf, usersClusterYAML("cache-0", fragment, bad.users))
		for _, in := range nodes {
			eventually(t, 10*time.Second, in.pod+" to refuse users that "+bad.why, func() bool { return strings.Contains(in.status().LastError, bad.why) })
		}
		if got := aclUser(t, primary, "app"); got != before || aclUser(t, primary, "evil") != "" || aclUser(t, primary, "new") != "" {
			t.Errorf("a refused declaration (%s) changed the users: app %s", bad.why, got)
		}
	}
	// A missing Secret: the reference without its Secret.
	missing := usersClusterYAML("cache-0", fragment, []testUser{app, reader, {"ghost", "on", "x"}})
	missing = missing[:strings.Index(missing, "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: cache-user-ghost")]
	writeFile(t, cf, missing)
	eventually(t, 5*time.Second, "a missing Secret to be refused", func() bool {
		return strings.Contains(primary.status().LastError, `spec.users "ghost"`)
	})
	if aclUser(t, primary, "ghost") != "" {
		t.Error("a user whose Secret is missing was created")
	}

	// Removed: reader goes from both; manual, never declared, stays.
	writeFile(t, cf, usersClusterYAML("cache-0", fragment, []testUser{app}))
	for _, in := range nodes {
		eventually(t, 5*time.Second, in.pod+" to delete reader", func() bool { return aclUser(t, in, "reader") == "" && in.status().LastError == "" })
	}
	if aclUser(t, primary, "manual") == "" {
		t.Error("a user made by hand was deleted")
	}
	for i, in := range nodes {
		if in.redisPID() != pids[i] {
			t.Errorf("%s restarted for a users change", in.pod)
		}
	}

	// A restart comes up with exactly the declared users.
	if code, body := replica.restart("op-token"); code != http.StatusOK {
		t.Fatalf("restart: %d %s", code, body)
	}
	replica.waitReady(20 * time.Second)
	if got := aclUser(t, replica, "app"); got != before || aclUser(t, replica, "reader") != "" {
		t.Errorf("after a restart: app %q, reader %q", got, aclUser(t, replica, "reader"))
	}
	if c2, err := replica.as("app", "app-pw-2"); err != nil {
		t.Errorf("app's password after a restart: %v", err)
	} else {
		c2.Close()
	}
	conf, _ := os.ReadFile(filepath.Join(replica.dataDir, "redis.conf"))
	fi, _ := os.Stat(filepath.Join(replica.dataDir, "redis.conf"))
	if strings.Contains(string(conf), "app-pw") || !strings.Contains(string(conf), passwordHash("app-pw-2")) || fi.Mode().Perm() != 0o600 {
		t.Errorf("redis.conf (%v) holds the password in clear, or not its hash", fi.Mode().Perm())
	}
	for _, in := range nodes {
		if logged := in.out.String(); strings.Contains(logged, "app-pw") || strings.Contains(logged, "reader-pw") || strings.Contains(logged, "sneaky") {
			t.Errorf("%s logged a user's password", in.pod)
		}
	}
}

// With the default user off, everything still works: the probes,
// replication, a switchover under writes with none lost, a fence, a live
// configuration change, a rotation of the cluster's password, a backup and
// the discovery port.
func TestDefaultUserOffEverythingWorks(t *testing.T) {
	dir := t.TempDir()
	cf := filepath.Join(dir, "cluster.yaml")
	writeFile(t, filepath.Join(dir, "token"), "op-token")
	fragment := "appendonly no\nsave \"\"\nrepl-diskless-sync-delay 0"
	users := []testUser{{"default", "off", ""}, {"app", "on ~* &* +@all -@admin -@dangerous +info", "app-pw"}}
	write := func(target, fragment, password string) {
		y := usersClusterYAML(target, fragment, users)
		writeFile(t, cf, strings.ReplaceAll(y, `password: "s3cret-pw"`, fmt.Sprintf("password: %q", password)))
	}
	write("cache-0", fragment, "s3cret-pw")
	// cache-2 runs a copy of the manager, which an upgrade replaces.
	exe := filepath.Join(dir, "bin", "redis-operator")
	os.MkdirAll(filepath.Dir(exe), 0o755)
	if b, err := os.ReadFile(binary); err != nil || os.WriteFile(exe, b, 0o755) != nil {
		t.Fatal("copying the manager", err)
	}
	var nodes []*instance
	for i := range 3 {
		in := startInstance(t, instanceOpts{pod: fmt.Sprintf("cache-%d", i), clusterFile: cf, password: "app-pw", binary: map[bool]string{true: exe}[i == 2],
			extraArgs: []string{"--operator-token-file", filepath.Join(dir, "token"), "--password-rotation-window", "1s"}})
		in.user = "app"
		nodes = append(nodes, in)
	}
	for _, in := range nodes {
		in.waitReady(30 * time.Second)
	}
	if c, err := nodes[0].as("", "s3cret-pw"); err == nil {
		_, err = c.Do("PING")
		c.Close()
		if err == nil {
			t.Fatal("the default user still works")
		}
	}
	for _, in := range nodes[1:] {
		if st := in.status(); st.MasterLinkStatus != "up" {
			t.Errorf("%s: link %q", in.pod, st.MasterLinkStatus)
		}
	}

	// A switchover under writes.
	w := startWriter(t, nodes[0], nodes[1])
	time.Sleep(300 * time.Millisecond)
	write("cache-1", fragment, "s3cret-pw")
	eventually(t, 10*time.Second, "cache-1 to take writes", func() bool { n, _ := w.onTo(); return n >= 200 })
	acked := w.finish()
	if got, err := redis.Int64(nodes[1].redis().Do("GET", "counter")); err != nil || got != acked {
		t.Fatalf("counter %d (%v), %d writes acknowledged", got, err, acked)
	}
	for _, n := range []*instance{nodes[0], nodes[2]} {
		eventually(t, 10*time.Second, n.pod+" to follow cache-1", func() bool {
			return masterPort(t, n) == fmt.Sprint(nodes[1].port) && n.status().MasterLinkStatus == "up"
		})
	}

	// A fence, and its lifting.
	y := usersClusterYAML("cache-1", fragment, users)
	writeFile(t, cf, strings.Replace(y, "metadata:\n  name: cache\n", "metadata:\n  name: cache\n  annotations: {redisoperator.io/fencedInstances: '[\"cache-2\"]'}\n", 1))
	eventually(t, 10*time.Second, "cache-2 to stop", func() bool { return nodes[2].status().Fenced && nodes[2].status().Role == "none" })
	write("cache-1", fragment, "s3cret-pw")
	nodes[2].waitReady(20 * time.Second)

	// A live configuration change.
	write("cache-1", fragment+"\nmaxmemory 123mb", "s3cret-pw")
	for _, in := range nodes {
		eventually(t, 10*time.Second, in.pod+" to take maxmemory live", func() bool {
			c, err := dialRedis(localAddr(in.port), []string{"s3cret-pw"}, nil, time.Second) // as the manager: app has no CONFIG
			if err != nil {
				return false
			}
			defer c.Close()
			v, _ := redis.Strings(c.Do("CONFIG", "GET", "maxmemory"))
			return len(v) == 2 && v[1] == "128974848"
		})
	}

	// The cluster's password rotates: the manager's user takes it, the
	// links stay up, the old one goes.
	write("cache-1", fragment+"\nmaxmemory 123mb", "n3w-pw")
	eventually(t, 15*time.Second, "the manager's user to take the new password alone", func() bool {
		c, err := dialRedis(localAddr(nodes[0].port), []string{"s3cret-pw"}, nil, time.Second)
		if err == nil {
			c.Close()
		}
		c2, err2 := dialRedis(localAddr(nodes[0].port), []string{"n3w-pw"}, nil, time.Second)
		if err2 == nil {
			c2.Close()
		}
		return err != nil && err2 == nil
	})
	for _, in := range nodes {
		in.waitReady(10 * time.Second)
		eventually(t, 15*time.Second, in.pod+" to end the rotation with no error", func() bool { return in.status().LastError == "" })
	}

	// An in-place upgrade of cache-2's manager: redis-server keeps its PID.
	pid := nodes[2].redisPID()
	v2 := binaryV2(t)
	sum := sha256.Sum256(v2)
	if code, out := nodes[2].put(bytes.NewReader(v2), hex.EncodeToString(sum[:]), "op-token"); code != http.StatusOK {
		t.Fatalf("PUT /v1/update: %d %v", code, out)
	}
	eventually(t, 20*time.Second, "the new manager to run, ready", func() bool {
		st := nodes[2].status()
		return st.ManagerVersion == "test-v2" && st.Ready
	})
	if nodes[2].redisPID() != pid {
		t.Error("redis-server restarted for the upgrade")
	}

	// A backup, and the discovery port.
	dest := filepath.Join(t.TempDir(), "b.rdb")
	if resp, err := nodes[1].getBackup("op-token", dest); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("backup: %v %v", resp, err)
	}
	if b, _ := os.ReadFile(dest); len(b) < 5 || string(b[:5]) != "REDIS" {
		t.Error("the backup is no RDB")
	}
	eventually(t, 5*time.Second, "the discovery port to name cache-1", func() bool {
		c, err := dialRedisAs("", localAddr(nodes[0].sentinelPort), []string{"n3w-pw"}, nil, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		addr, _ := redis.Strings(c.Do("SENTINEL", "get-master-addr-by-name", "cache"))
		return len(addr) == 2 && addr[1] == fmt.Sprint(nodes[1].port)
	})
}
