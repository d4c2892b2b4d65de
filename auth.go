package main

// Credentials: the passwords the manager offers, the instances it offers
// them to, and their rotation. Secrets never reach a log line, a status
// field or an error: see secretsIn, redact and secretFree.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// credentials are what the manager's connections to Redis may offer, and
// to whom. The reconciler sets them; every goroutine that dials Redis (the
// observer, the supervisor's SHUTDOWN, the HTTP handlers) reads them.
type credentials struct {
	passwords atomic.Pointer[[]string]
	peers     atomic.Pointer[map[string]bool] // address: whether it serves TLS
	tlsConfig atomic.Pointer[tls.Config]      // to dial a server that serves TLS; nil before any certificate
	localTLS  atomic.Bool                     // the local redis-server serves TLS
}

func newCredentials() *credentials {
	c := &credentials{}
	c.passwords.Store(&[]string{})
	c.peers.Store(&map[string]bool{})
	return c
}

// list is the passwords to offer, in order: what the server accepts, then
// the wanted one it may have been started on.
func (c *credentials) list() []string { return *c.passwords.Load() }

func (c *credentials) set(passwords []string) { c.passwords.Store(&passwords) }

// A password is offered only to the local redis-server and to the other
// instances at the addresses their status entries publish. An address that
// Redis reports is a client's word: a replica announces its own (REPLCONF
// listening-port and ip-address), and whoever holds the password can point
// a server at any master (REPLICAOF). Dialled with the manager's
// credentials, such an address would hand the password, during a rotation
// the new one too, to whoever listens there.

// setPeers takes the addresses of the instances other than self from the
// cluster's status.
func (c *credentials) setPeers(rc *redisCluster, self string) {
	peers := map[string]bool{}
	for pod, e := range rc.Status.InstancesStatus {
		if pod != self && e.Address != "" {
			peers[canonicalAddr(e.Address)] = e.TLS
		}
	}
	c.peers.Store(&peers)
}

// isPeer says whether addr, as Redis reports it (net.JoinHostPort), is
// another instance's published address: the only remote addresses the
// manager's connections, and so its passwords, may go to.
func (c *credentials) isPeer(addr string) bool {
	_, ok := (*c.peers.Load())[addr]
	return ok
}

// A connection to a redis-server that serves TLS presents the spec.tls
// certificate and checks the server's (see redistls.go); to one that does
// not, it is plaintext. The local server serves what it was started with,
// as the supervisor tells; another instance, what its status entry says.

func (c *credentials) setTLS(cfg *tls.Config) { c.tlsConfig.Store(cfg) }

func (c *credentials) setLocalTLS(on bool) { c.localTLS.Store(on) }

// servesTLS says whether the instance at addr, as its status entry
// publishes it, serves TLS.
func (c *credentials) servesTLS(addr string) bool { return (*c.peers.Load())[canonicalAddr(addr)] }

// tlsLocal is the TLS to dial the local redis-server with: nil for none.
func (c *credentials) tlsLocal() *tls.Config { return c.tlsWhen(c.localTLS.Load()) }

// tlsPeer is the TLS to dial another instance with: nil for none.
func (c *credentials) tlsPeer(addr string) *tls.Config { return c.tlsWhen(c.servesTLS(addr)) }

func (c *credentials) tlsWhen(on bool) *tls.Config {
	if !on {
		return nil
	}
	if cfg := c.tlsConfig.Load(); cfg != nil {
		return cfg
	}
	return noCertificate
}

// noCertificate fails every handshake: a server that serves TLS is never
// dialled in plaintext, even before the manager holds a certificate.
var noCertificate = &tls.Config{
	InsecureSkipVerify: true,
	VerifyConnection: func(tls.ConnectionState) error {
		return errors.New("the manager holds no spec.tls certificate yet")
	},
}

// Credentials rotate without a refused client or a dropped replication
// link: the new password is accepted beside the old one (the default user
// may have several), replicas authenticate with the new one as soon as
// their primary takes it, and the old one goes only after the rotation
// window, once every connected replica has switched.
//
// Turning authentication on or off is one step: Redis refuses AUTH while
// the default user has no password, and a client without AUTH once it has
// one, so the two cannot both work for a while.

// authState is what the running redis-server's default user accepts, as
// this manager set it, and what it authenticates to its primary with.
type authState struct {
	accepted   []string // newest first; [""] is no password (nopass)
	masterauth string
	since      time.Time // when the newest was added
	nextProbe  time.Time // when other instances may be asked again
}

// authStatus is the reconciler's part of the rotation.
type authStatus struct {
	auth    authState
	authErr string // why the password could not be rotated
}

// publishCredentials offers what the server accepts and the wanted
// password.
func (r *reconciler) publishCredentials() {
	list := slices.Clone(r.auth.accepted)
	if !slices.Contains(list, r.view.password) {
		list = append(list, r.view.password)
	}
	r.creds.set(list)
}

// probeEvery spaces out the rotation's questions to other instances, which
// the reconciler waits for.
const probeEvery = 5 * time.Second

// rotateAuth takes the running redis-server one step towards the wanted
// password; each step is retried on the next look at Redis until it holds.
func (r *reconciler) rotateAuth() {
	if !r.haveView || !r.reachable() {
		return
	}
	r.resetApplied()
	want, a := r.view.password, &r.auth
	if slices.Equal(a.accepted, []string{want}) && a.masterauth == want {
		r.authErr = ""
		return
	}
	r.publishCredentials()
	if r.acceptPassword(want) && r.switchMasterauth(want) {
		r.dropOldPassword(want)
	}
}

// acceptPassword has the default user take want beside the passwords it
// has, or, when authentication is turned on or off, instead of them.
func (r *reconciler) acceptPassword(want string) bool {
	a := &r.auth
	if slices.Contains(a.accepted, want) {
		return true
	}
	rules := []any{">" + want}
	if want == "" || slices.Equal(a.accepted, []string{""}) {
		rules = []any{"resetpass", passRule(want)}
	}
	if err := r.setDefaultPasswords(rules...); err != nil {
		r.authFailed("cannot give redis-server the new password", err)
		return false
	}
	if len(rules) == 2 {
		a.accepted = []string{want}
		r.log.Info("redis-server authentication switched", "passwordRequired", want != "")
	} else {
		a.accepted, a.since = append([]string{want}, a.accepted...), time.Now()
		r.log.Info("redis-server accepts the new password beside the old one", "rotationWindow", r.settings.rotationWindow.String())
	}
	r.publishCredentials()
	return true
}

// switchMasterauth has replication authenticate with want, once the
// primary of a replica takes it: the next reconnection of the link would
// be refused otherwise. Until then it asks again every probeEvery.
func (r *reconciler) switchMasterauth(want string) bool {
	a := &r.auth
	if a.masterauth == want || !time.Now().After(a.nextProbe) {
		return true
	}
	master := r.obs.info.masterAddr()
	if r.obs.role() == "slave" && !(r.creds.isPeer(master) && passwordWorks(master, want, r.creds.tlsPeer(master))) {
		a.nextProbe = time.Now().Add(probeEvery)
		return true
	}
	err := withRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("CONFIG", "SET", "masterauth", want)
		return err
	})
	if err != nil {
		r.authFailed("cannot switch masterauth to the new password", err)
		return false
	}
	a.masterauth = want
	r.log.Info("replication authenticates with the new password")
	return true
}

// dropOldPassword ends the rotation once its window is over: a primary
// first waits for the cluster's replicas to authenticate with want.
func (r *reconciler) dropOldPassword(want string) {
	a := &r.auth
	if len(a.accepted) == 1 || time.Since(a.since) < r.settings.rotationWindow {
		r.authErr = ""
		return
	}
	if r.obs.role() == "master" {
		if !time.Now().After(a.nextProbe) {
			return
		}
		if waiting := replicasBehind(r.obs.info, want, r.creds); waiting != "" {
			a.nextProbe = time.Now().Add(probeEvery)
			r.authErr = "the old password stays until the replica at " + waiting + " authenticates with the new one"
			return
		}
	}
	if err := r.setDefaultPasswords("resetpass", passRule(want)); err != nil {
		r.authFailed("cannot remove the old password", err)
		return
	}
	a.accepted, r.authErr = []string{want}, ""
	r.publishCredentials()
	r.log.Info("the old password no longer works: the rotation is complete")
}

// authFailed reports a step of the rotation that failed, once, without
// what Redis said: see secretFree.
func (r *reconciler) authFailed(what string, err error) {
	msg := what + ": " + secretFree(err)
	if msg != r.authErr {
		r.log.Error(what, "error", secretFree(err))
	}
	r.authErr = msg
}

func passRule(pw string) string {
	if pw == "" {
		return "nopass"
	}
	return ">" + pw
}

// setDefaultPasswords gives the default user password rules, unless
// spec.users declares it: then its password is its own, and only the
// manager's user (syncUsers, right after) takes the new one.
func (r *reconciler) setDefaultPasswords(rules ...any) error {
	if r.declares("default") {
		return nil
	}
	return withRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("ACL", append([]any{"SETUSER", "default"}, rules...)...)
		return err
	})
}

// passwordWorks says whether the Redis at addr takes pw: AUTH succeeds, or,
// for no password, a PING without one.
func passwordWorks(addr, pw string, tlsc *tls.Config) bool {
	return withRedis(addr, nil, tlsc, redisTimeout, func(c redis.Conn) error {
		return authenticate(c, operatorUser, pw)
	}) == nil
}

// replicasBehind names a connected replica that does not yet authenticate
// with want, or "": each that is another instance of the cluster is asked,
// with want, for its masterauth. Any other connection that calls itself a
// replica is neither asked nor waited for: the old password goes when the
// window ends, whoever still uses it.
func replicasBehind(info redisInfo, want string, peers *credentials) string {
	for i := 0; ; i++ {
		line, ok := info[fmt.Sprintf("slave%d", i)]
		if !ok {
			return ""
		}
		fields := map[string]string{}
		for _, kv := range strings.Split(line, ",") {
			k, v, _ := strings.Cut(kv, "=")
			fields[k] = v
		}
		if fields["port"] == "0" {
			continue // a backup's sync, not a replica: it announces no port
		}
		addr := net.JoinHostPort(fields["ip"], fields["port"])
		if !peers.isPeer(addr) {
			continue
		}
		var got []string
		err := withRedis(addr, []string{want}, peers.tlsPeer(addr), redisTimeout, func(c redis.Conn) error {
			var err error
			got, err = redis.Strings(c.Do("CONFIG", "GET", "masterauth"))
			return err
		})
		if err != nil || len(got) != 2 || got[1] != want {
			return addr
		}
	}
}

// secretFree is an error of a command that carried a password, told
// without Redis's text: Redis quotes the arguments it refuses, cut short
// and with line breaks replaced, so no search and replace could be sure to
// take the password out. Its first word (ERR, NOPERM, ...) says enough.
func secretFree(err error) string {
	var re redis.Error
	if errors.As(err, &re) {
		word, _, _ := strings.Cut(string(re), " ")
		return "redis-server answered " + word
	}
	return err.Error() // a connection error, which quotes nothing sent
}

// sensitiveDirectives carry a password in their arguments: an error names
// them, never quotes them.
var sensitiveDirectives = map[string]bool{"user": true, "tls-key-file-pass": true, "tls-client-key-file-pass": true,
	"requirepass": true, "masterauth": true}

// secretsIn lists what a configuration holds that no message may show: the
// arguments of the directives that carry a password, and of a user's rules
// those that set, remove or hash one (>, <, #, !), with and without their
// mark. Redis quotes a rule it refuses as it was written, so it is found
// whole.
func secretsIn(ds []directive) []string {
	var out []string
	for _, d := range ds {
		switch {
		case d.name == "user":
			for _, a := range d.args[min(1, len(d.args)):] {
				if a != "" && strings.ContainsRune("><#!", rune(a[0])) {
					out = append(out, a, a[1:])
				}
			}
		case sensitiveDirectives[d.name]:
			out = append(out, d.args...)
		}
	}
	return out
}

// redact takes every secret out of text, the longest first, so that one
// that holds another is taken out whole.
func redact(text string, secrets []string) string {
	secrets = slices.Clone(secrets)
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "(secret)")
		}
	}
	return text
}
