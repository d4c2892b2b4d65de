package main

// Discovery: every manager answers, on --sentinel-port, the part of Redis
// Sentinel's protocol that client libraries use to find the primary, so
// that go-redis's FailoverClient, redis-py's Sentinel, ioredis and the
// others work unmodified, with the pods as their Sentinels and the
// RedisCluster's name as the master name. No Sentinel process runs and
// nothing is elected here: the answers come from the RedisCluster's status,
// as the reconciler last published it (discoveryView). A manager that
// cannot tell (its view of the cluster is stale) answers a null, so that
// the client asks another.

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// discoveryView is what the discovery port says of the cluster, published
// by the reconciler with each view, and again, marked stale, when the
// source complains.
type discoveryView struct {
	name      string // the master name: the RedisCluster's
	primary   string // the address of the ready master the status shows; "" for none
	replicas  []discoveryNode
	sentinels []discoveryNode // the other managers' discovery ports
	password  string          // what a client must AUTH with; "" for none
	at        time.Time       // when the view came from the source
	primaryAt time.Time       // when the primary's manager last wrote its entry
	stale     bool            // the source complains: its view may be out of date
}

// discoveryNode is an instance as the discovery port names it.
type discoveryNode struct {
	pod, addr string
	id        string // a Sentinel's run ID
	offset    int64
	linkUp    bool
}

// discoveryFor reads the discovery view from the cluster as the source
// showed it. The primary is status.currentPrimary's instance, only while
// it is the target, its entry says it is a ready master, and no fence names
// it. While the role moves (the target is another instance, which has not
// claimed it yet) none is named: the old primary holds writes back, and a
// client sent there would only be refused.
func discoveryFor(v clusterView, namespace, self string, at time.Time) *discoveryView {
	rc := &v.cluster
	d := &discoveryView{name: rc.Metadata.Name, password: v.password, at: at}
	pods := make([]string, 0, len(rc.Status.InstancesStatus))
	for pod := range rc.Status.InstancesStatus {
		pods = append(pods, pod)
	}
	slices.Sort(pods)
	current := rc.Status.CurrentPrimary
	if current != rc.targetPrimary() {
		current = ""
	}
	for _, pod := range pods {
		e := rc.Status.InstancesStatus[pod]
		fenced, err := isFenced(rc.Metadata.Annotations, pod)
		usable := e.Address != "" && e.Ready && !e.Fenced && !fenced && err == nil
		switch {
		case pod == current && e.Role == "master" && usable:
			d.primary, d.primaryAt = canonicalAddr(e.Address), e.UpdatedAt
		case e.Role == "replica" && usable:
			d.replicas = append(d.replicas, discoveryNode{pod: pod, addr: canonicalAddr(e.Address), offset: e.ReplicationOffset, linkUp: e.MasterLinkStatus == "up"})
		}
		if pod != self && e.SentinelAddress != "" {
			d.sentinels = append(d.sentinels, discoveryNode{pod: pod, addr: e.SentinelAddress, id: sentinelID(namespace, rc.Metadata.Name, pod)})
		}
	}
	return d
}

const (
	// discoveryStale is how old a view, and the primary's own entry, may
	// be: three of the source's resyncs, three of the entry's heartbeats.
	// A primary whose manager wrote nothing for longer may be gone.
	discoveryStale = 3 * heartbeatEvery
	// discoveryWrite drops a client that reads nothing.
	discoveryWrite = 10 * time.Second
	// discoveryWait is how long clients wait for the first view; after it,
	// they are answered with what little is known.
	discoveryWait = 2 * time.Second
	// toldVersion is the Redis version a client is told.
	toldVersion = "7.0.15"
)

// discovery is the server of the discovery port.
type discovery struct {
	log    *slog.Logger
	myid   string
	view   atomic.Pointer[discoveryView]
	conns  sync.WaitGroup
	mu     sync.Mutex
	subs   map[*discoveryConn]bool
	master string // the primary last announced, for +switch-master

	tlsConfig atomic.Pointer[tls.Config] // with spec.tls, every connection is TLS

	ready     chan struct{} // closed by the first view
	readyOnce sync.Once

	// An upgrade stops the accepting, so that the clients who connect
	// meanwhile wait in the listen queue for the next manager, and hands the
	// open connections over: see discoveryhandoff.go.
	ln      atomic.Pointer[net.TCPListener]
	pausing atomic.Pointer[discoveryPause]
	open    map[*discoveryConn]bool // under mu
	adopted []*discoveryConn        // from the manager this one replaced, served with the first view
}

func newDiscovery(log *slog.Logger, s *settings) *discovery {
	d := &discovery{log: log, myid: sentinelID(s.namespace, s.cluster, s.podName), subs: map[*discoveryConn]bool{}, open: map[*discoveryConn]bool{}, ready: make(chan struct{})}
	d.view.Store(&discoveryView{})
	return d
}

// sentinelID is a manager's Sentinel run ID: 40 hex digits, the same at
// every start of the pod, and told apart from every other pod's.
func sentinelID(namespace, cluster, pod string) string {
	id := sha1.Sum([]byte(namespace + "/" + cluster + "/" + pod))
	return hex.EncodeToString(id[:])
}

// setTLS makes the connections accepted from now on TLS with cfg, or
// plaintext with nil. The ones open stay as they are: a Sentinel client
// keeps its connection, and reconnects the way it was told to.
func (d *discovery) setTLS(cfg *tls.Config) {
	if d != nil {
		d.tlsConfig.Store(cfg)
	}
}

// publish takes a new view, and tells the subscribers of +switch-master
// when the primary moved to another instance that takes writes. It never
// waits for a client: each is written to on a goroutine of its own.
func (d *discovery) publish(v *discoveryView) {
	d.view.Store(v)
	d.readyOnce.Do(func() { close(d.ready) })
	if v.named(v.name) == "" {
		return
	}
	d.mu.Lock()
	old := d.master
	if v.primary == old {
		d.mu.Unlock()
		return
	}
	d.master = v.primary
	subs := make([]*discoveryConn, 0, len(d.subs))
	for c := range d.subs {
		subs = append(subs, c)
	}
	d.mu.Unlock()
	if old == "" {
		return // the first primary known: nothing switched
	}
	oh, op, _ := net.SplitHostPort(old)
	nh, np, _ := net.SplitHostPort(v.primary)
	msg := strings.Join([]string{v.name, oh, op, nh, np}, " ")
	d.log.Info("told discovery subscribers of the new primary", "message", "+switch-master "+msg, "subscribers", len(subs))
	for _, c := range subs {
		go c.notify("+switch-master", msg)
	}
}

// named is the address of the primary to name for the master name, or ""
// when there is none to name or this manager cannot tell: the source
// complains, or the view or the primary's own entry is old.
func (v *discoveryView) named(name string) string {
	if name == "" || name != v.name || v.stale || time.Since(v.at) >= discoveryStale || time.Since(v.primaryAt) >= discoveryStale {
		return ""
	}
	return v.primary
}

// serve accepts clients until ctx ends. Until the first view, or for a
// few seconds, clients wait in the listen queue: before it, the manager
// knows neither the primary nor the password to ask for.
func (d *discovery) serve(ctx context.Context, ln net.Listener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	select {
	case <-d.ready:
	case <-ctx.Done():
	case <-time.After(discoveryWait):
	}
	if tl, ok := ln.(*net.TCPListener); ok {
		d.ln.Store(tl)
	}
	for _, dc := range d.adopted {
		d.conns.Go(func() { dc.run(ctx) })
	}
	d.adopted = nil
	for d.holdAccepting(ctx) {
		c, err := ln.Accept()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // woken for an upgrade: see quiesce
		}
		if err != nil {
			if ctx.Err() == nil {
				d.log.Error("the discovery port stopped accepting", "error", err)
			}
			break
		}
		if cfg := d.tlsConfig.Load(); cfg != nil {
			c = tls.Server(c, cfg) // the handshake is the first read's
		}
		dc := d.newConn(c)
		d.conns.Go(func() { dc.run(ctx) })
	}
	d.conns.Wait()
}

// newConn registers a connection, so that an upgrade finds it.
func (d *discovery) newConn(c net.Conn) *discoveryConn {
	dc := &discoveryConn{d: d, c: c, w: bufio.NewWriterSize(c, 512)}
	d.mu.Lock()
	d.open[dc] = true
	d.mu.Unlock()
	return dc
}

// discoveryConn is one client.
type discoveryConn struct {
	d       *discovery
	c       net.Conn
	mu      sync.Mutex // over w: a notification may come from the reconciler's goroutine
	w       *bufio.Writer
	resp3   bool
	authed  bool
	name    string
	chans   map[string]bool
	pattern map[string]bool

	// An upgrade stops the connection between two commands (discoveryhandoff.go).
	pmu   sync.Mutex
	idle  bool            // waiting for a command, nothing of it read
	pause *discoveryPause // the upgrade's, until the connection stopped or ended
}

// errQuit ends a connection after its answer.
var errQuit = errors.New("quit")

func (dc *discoveryConn) run(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { dc.c.Close() })
	defer stop()
	defer dc.end()
	r := bufio.NewReaderSize(dc.c, 512)
	for {
		if dc.next(ctx, r) != nil {
			return
		}
		args, err := readCommand(r)
		if err != nil {
			var pe protocolError
			if errors.As(err, &pe) {
				dc.reply(func(w *respWriter) { w.err("ERR Protocol error: " + string(pe)) })
			}
			return
		}
		if len(args) == 0 {
			continue
		}
		err = nil
		dc.reply(func(w *respWriter) { err = dc.do(w, args) })
		if err != nil {
			return
		}
	}
}

// reply writes an answer whole, then flushes it.
func (dc *discoveryConn) reply(answer func(w *respWriter)) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	w := &respWriter{w: dc.w, resp3: dc.resp3}
	answer(w)
	dc.c.SetWriteDeadline(time.Now().Add(discoveryWrite))
	if dc.w.Flush() != nil {
		dc.c.Close()
	}
}

// notify sends a message to a subscriber of channel, or of a pattern it
// matches.
func (dc *discoveryConn) notify(channel, msg string) {
	dc.mu.Lock()
	chans, patterns := dc.chans[channel], []string{}
	for p := range dc.pattern {
		if ok, _ := path.Match(p, channel); ok {
			patterns = append(patterns, p)
		}
	}
	dc.mu.Unlock()
	dc.reply(func(w *respWriter) {
		if chans {
			w.push(3)
			w.bulk("message")
			w.bulk(channel)
			w.bulk(msg)
		}
		for _, p := range patterns {
			w.push(4)
			w.bulk("pmessage")
			w.bulk(p)
			w.bulk(channel)
			w.bulk(msg)
		}
	})
}

// do answers one command. It returns an error to end the connection.
func (dc *discoveryConn) do(w *respWriter, args []string) error {
	cmd := strings.ToLower(args[0])
	v := dc.d.view.Load()
	if v.name == "" && cmd != "quit" {
		w.err("LOADING the manager has not read its RedisCluster yet")
		return nil
	}
	switch cmd {
	case "quit":
		w.ok()
		return errQuit
	case "auth":
		dc.auth(w, v, args[1:])
		return nil
	case "hello":
		dc.hello(w, v, args[1:])
		return nil
	}
	if v.password != "" && !dc.authed {
		w.err("NOAUTH Authentication required.")
		return nil
	}
	if dc.subscribed() && !slices.Contains([]string{"ping", "subscribe", "psubscribe", "unsubscribe", "punsubscribe"}, cmd) && !dc.resp3 {
		w.err(fmt.Sprintf("ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", cmd))
		return nil
	}
	switch cmd {
	case "ping":
		dc.ping(w, args[1:])
	case "sentinel":
		dc.sentinel(w, v, args[1:])
	case "subscribe", "psubscribe", "unsubscribe", "punsubscribe":
		dc.subscribe(w, cmd, args[1:])
	case "client":
		dc.client(w, args[1:])
	case "role":
		w.array(2)
		w.bulk("sentinel")
		w.array(1)
		w.bulk(v.name)
	case "info":
		dc.info(w, v)
	case "command":
		w.array(0)
	case "select":
		w.ok()
	default:
		w.err(fmt.Sprintf("ERR unknown command '%s', with args beginning with: %s", quoteForError(args[0]), quoteArgsForError(args[1:])))
	}
	return nil
}

func (dc *discoveryConn) subscribed() bool { return len(dc.chans)+len(dc.pattern) > 0 }

// auth checks AUTH [user] password: the user, when given, is default.
func (dc *discoveryConn) auth(w *respWriter, v *discoveryView, args []string) {
	if len(args) < 1 || len(args) > 2 {
		w.err("ERR wrong number of arguments for 'auth' command")
		return
	}
	if v.password == "" {
		w.err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
		return
	}
	if !dc.checkPassword(v, args) {
		w.err("WRONGPASS invalid username-password pair or user is disabled.")
		return
	}
	dc.authed = true
	w.ok()
}

// checkPassword checks [user] password as Redis checks the default
// user's: without a password configured (nopass), any one is taken.
func (dc *discoveryConn) checkPassword(v *discoveryView, args []string) bool {
	user, pw := "default", args[len(args)-1]
	if len(args) == 2 {
		user = args[0]
	}
	return user == "default" && (v.password == "" || subtle.ConstantTimeCompare([]byte(pw), []byte(v.password)) == 1)
}

// hello is HELLO [protover [AUTH user pass] [SETNAME name]].
func (dc *discoveryConn) hello(w *respWriter, v *discoveryView, args []string) {
	proto := 0
	if len(args) > 0 {
		n, err := strconv.Atoi(args[0])
		if err != nil {
			w.err("ERR Protocol version is not an integer or out of range")
			return
		}
		if n != 2 && n != 3 {
			w.err("NOPROTO unsupported protocol version")
			return
		}
		proto, args = n, args[1:]
	}
	for len(args) > 0 {
		switch {
		case strings.EqualFold(args[0], "auth") && len(args) >= 3:
			if !dc.checkPassword(v, args[1:3]) {
				w.err("WRONGPASS invalid username-password pair or user is disabled.")
				return
			}
			dc.authed, args = true, args[3:]
		case strings.EqualFold(args[0], "setname") && len(args) >= 2:
			dc.name, args = args[1], args[2:]
		default:
			w.err("ERR Syntax error in HELLO option '" + quoteForError(args[0]) + "'")
			return
		}
	}
	if v.password != "" && !dc.authed {
		w.err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	if proto != 0 {
		dc.resp3 = proto == 3
		w.resp3 = dc.resp3
	}
	w.fields(7)
	w.bulk("server")
	w.bulk("redis")
	w.bulk("version")
	w.bulk(toldVersion)
	w.bulk("proto")
	w.int(int64(map[bool]int{false: 2, true: 3}[dc.resp3]))
	w.bulk("id")
	w.int(1)
	w.bulk("mode")
	w.bulk("sentinel")
	w.bulk("role")
	w.bulk("sentinel")
	w.bulk("modules")
	w.array(0)
}

func (dc *discoveryConn) ping(w *respWriter, args []string) {
	switch {
	case len(args) > 1:
		w.err("ERR wrong number of arguments for 'ping' command")
	case dc.subscribed() && !dc.resp3:
		w.array(2)
		w.bulk("pong")
		w.bulk(strings.Join(args, ""))
	case len(args) == 1:
		w.bulk(args[0])
	default:
		w.status("PONG")
	}
}

// client answers the CLIENT subcommands a client library sends on connect.
func (dc *discoveryConn) client(w *respWriter, args []string) {
	if len(args) == 0 {
		w.err("ERR wrong number of arguments for 'client' command")
		return
	}
	switch strings.ToLower(args[0]) {
	case "setname":
		if len(args) != 2 {
			w.err("ERR wrong number of arguments for 'client|setname' command")
			return
		}
		dc.name = args[1]
		w.ok()
	case "getname":
		if dc.name == "" {
			w.null()
			return
		}
		w.bulk(dc.name)
	case "setinfo":
		w.ok()
	case "id":
		w.int(1)
	default:
		w.err("ERR unknown subcommand '" + quoteForError(args[0]) + "'. Try CLIENT HELP.")
	}
}

// subscribe is SUBSCRIBE, PSUBSCRIBE and their UN forms. Only
// +switch-master is ever published; any channel may be subscribed to.
func (dc *discoveryConn) subscribe(w *respWriter, cmd string, names []string) {
	un := strings.HasPrefix(cmd, "un") || strings.HasPrefix(cmd, "pun")
	if !un && len(names) == 0 {
		w.err("ERR wrong number of arguments for '" + cmd + "' command")
		return
	}
	// dc.mu is held: the answer is being written.
	set := &dc.chans
	if strings.Contains(cmd, "psub") {
		set = &dc.pattern
	}
	if *set == nil {
		*set = map[string]bool{}
	}
	if un && len(names) == 0 {
		for n := range *set {
			names = append(names, n)
		}
		slices.Sort(names)
	}
	counts := make([]int, len(names))
	for i, n := range names {
		if un {
			delete(*set, n)
		} else {
			(*set)[n] = true
		}
		counts[i] = len(dc.chans) + len(dc.pattern)
	}
	dc.d.mu.Lock()
	if dc.subscribed() {
		dc.d.subs[dc] = true
	} else {
		delete(dc.d.subs, dc)
	}
	dc.d.mu.Unlock()
	if un && len(names) == 0 { // nothing was subscribed: one answer all the same
		w.push(3)
		w.bulk(cmd)
		w.null()
		w.int(0)
		return
	}
	for i, n := range names {
		w.push(3)
		w.bulk(cmd)
		w.bulk(n)
		w.int(int64(counts[i]))
	}
}

// end closes the connection and forgets it.
func (dc *discoveryConn) end() {
	dc.c.Close()
	dc.d.mu.Lock()
	delete(dc.d.subs, dc)
	delete(dc.d.open, dc)
	dc.d.mu.Unlock()
	dc.pmu.Lock()
	if p := dc.pause; p != nil {
		p.stopped <- nil // an upgrade waiting for it waits no more
		dc.pause = nil
	}
	dc.pmu.Unlock()
}

// sentinel answers SENTINEL's subcommands, in Sentinel's own shapes.
func (dc *discoveryConn) sentinel(w *respWriter, v *discoveryView, args []string) {
	if len(args) == 0 {
		w.err("ERR wrong number of arguments for 'sentinel' command")
		return
	}
	sub := strings.ToLower(args[0])
	if sub == "myid" {
		w.bulk(dc.d.myid)
		return
	}
	if sub == "masters" {
		if v.named(v.name) == "" {
			w.array(0)
			return
		}
		w.array(1)
		dc.masterFields(w, v)
		return
	}
	if len(args) != 2 {
		w.err("ERR wrong number of arguments for 'sentinel|" + sub + "' command")
		return
	}
	name := args[1]
	known := v.named(name) != ""
	switch sub {
	case "get-master-addr-by-name":
		if !known {
			w.nullArray()
			return
		}
		host, port, _ := net.SplitHostPort(v.primary)
		w.array(2)
		w.bulk(host)
		w.bulk(port)
	case "master":
		if !known {
			w.err("ERR No such master with that name")
			return
		}
		dc.masterFields(w, v)
	case "replicas", "slaves":
		// Asked of the cluster by its name, these are answered even while
		// no primary can be named: a client (ioredis) takes an error for
		// a failed discovery.
		if name != v.name {
			w.err("ERR No such master with that name")
			return
		}
		w.array(len(v.replicas))
		for _, r := range v.replicas {
			dc.replicaFields(w, v, r)
		}
	case "sentinels":
		if name != v.name {
			w.err("ERR No such master with that name")
			return
		}
		w.array(len(v.sentinels))
		for _, s := range v.sentinels {
			host, port, _ := net.SplitHostPort(s.addr)
			w.fields(5)
			w.bulks("name", s.id, "ip", host, "port", port, "runid", s.id, "flags", "sentinel")
		}
	default:
		w.err("ERR Unknown sentinel subcommand '" + quoteForError(args[0]) + "'")
	}
}

// masterFields is SENTINEL MASTER's answer: what a client library reads of
// it (redis-py wants the flags and num-other-sentinels).
func (dc *discoveryConn) masterFields(w *respWriter, v *discoveryView) {
	host, port, _ := net.SplitHostPort(v.primary)
	w.fields(12)
	w.bulks("name", v.name, "ip", host, "port", port, "runid", "", "flags", "master",
		"link-pending-commands", "0", "link-refcount", "1", "role-reported", "master",
		"num-slaves", strconv.Itoa(len(v.replicas)), "num-other-sentinels", strconv.Itoa(len(v.sentinels)),
		"quorum", strconv.Itoa(len(v.sentinels)/2+1), "config-epoch", "0")
}

// replicaFields is one entry of SENTINEL REPLICAS: ready replicas only,
// so that a client reading from replicas reads from one that follows.
func (dc *discoveryConn) replicaFields(w *respWriter, v *discoveryView, r discoveryNode) {
	host, port, _ := net.SplitHostPort(r.addr)
	mh, mp, _ := net.SplitHostPort(v.primary)
	link := "err"
	if r.linkUp {
		link = "ok"
	}
	w.fields(11)
	w.bulks("name", r.addr, "ip", host, "port", port, "runid", "", "flags", "slave",
		"role-reported", "slave", "master-link-status", link, "master-host", mh, "master-port", mp,
		"slave-priority", "100", "slave-repl-offset", strconv.FormatInt(r.offset, 10))
}

// info is INFO, as a Sentinel answers it: enough for a client that checks
// it talks to a Sentinel.
func (dc *discoveryConn) info(w *respWriter, v *discoveryView) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Server\r\nredis_version:%s\r\nredis_mode:sentinel\r\n\r\n# Sentinel\r\nsentinel_masters:1\r\n", toldVersion)
	status, addr := "ok", v.primary
	if v.named(v.name) == "" {
		status, addr = "odown", ""
	}
	fmt.Fprintf(&b, "master0:name=%s,status=%s,address=%s,slaves=%d,sentinels=%d\r\n", v.name, status, addr, len(v.replicas), len(v.sentinels)+1)
	w.verbatim(b.String())
}
