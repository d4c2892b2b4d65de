package main

// TLS for Redis (spec.tls). The Secret's certificate is checked before
// anything else sees it: its key must match it, it must chain to ca.crt,
// and it must be valid now. A Secret that fails is refused, with the reason
// in lastError, and the last good certificate keeps serving: it is on disk,
// and in redis-server's memory.
//
// redis-server reads its certificate from files the manager keeps in the
// data directory, behind one symlink swapped at once, so that a crash never
// leaves a key beside the wrong certificate. Redis 7.0 re-reads the files
// on a CONFIG SET of tls-cert-file, tls-key-file or tls-ca-cert-file even to
// the same path (they are "volatile" settings), and builds a new TLS
// context from them: new connections get the new certificate, the ones
// open (clients, replication links) keep theirs. A renewal is so applied
// live, with no restart and no link dropped.
//
// Whether redis-server serves TLS at all is what it was started with: a
// switch on or off waits for a restart (pendingRestart). Meanwhile each
// side reaches the other the way that one serves, as its status entry says
// (status.tls): the manager's own connections, and a replica's link to its
// primary (tls-replication, set live). So no replica loses its primary for
// longer than that primary's own restart, in whichever order the instances
// restart.

import (
	"cmp"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// tlsMaterial is the spec.tls Secret as a source read it, not yet checked.
type tlsMaterial struct {
	cert, key, ca []byte
	clientAuth    string
}

// tlsSecretKeys are the Secret's keys, and the files they are written to.
var tlsSecretKeys = []string{"tls.crt", "tls.key", "ca.crt"}

// tlsMaterialOf takes the keys of a kubernetes.io/tls Secret. An error
// names a key, never a value.
func tlsMaterialOf(spec *tlsSpec, data map[string][]byte) (*tlsMaterial, error) {
	for _, key := range tlsSecretKeys {
		if len(data[key]) == 0 {
			return nil, fmt.Errorf("has no key %q (spec.tls needs tls.crt, tls.key and ca.crt)", key)
		}
	}
	return &tlsMaterial{cert: data["tls.crt"], key: data["tls.key"], ca: data["ca.crt"], clientAuth: spec.ClientAuth}, nil
}

func (m *tlsMaterial) file(name string) []byte {
	return map[string][]byte{"tls.crt": m.cert, "tls.key": m.key, "ca.crt": m.ca}[name]
}

// hash identifies the files, to tell a renewal from a resend.
func (m *tlsMaterial) hash() string {
	h := sha256.New()
	for _, name := range tlsSecretKeys {
		fmt.Fprintf(h, "%s %d\n", name, len(m.file(name)))
		h.Write(m.file(name))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// tlsLoaded is checked material: what redis-server serves, what the
// manager dials with, and what the discovery port serves.
type tlsLoaded struct {
	hash       string
	cert       tls.Certificate
	roots      *x509.CertPool // ca.crt
	caPEM      []byte
	notAfter   time.Time
	authValue  string // Redis's tls-auth-clients: no, optional or yes
	clientAuth tls.ClientAuthType
}

// key tells one served state from another: the files and the client rule.
func (l *tlsLoaded) key() string { return l.hash + "/" + l.authValue }

// clientAuthValues are spec.tls.clientAuth's values as Redis's
// tls-auth-clients and as Go's server side take them.
var clientAuthValues = map[string]struct {
	redis string
	goTLS tls.ClientAuthType
}{
	"": {"no", tls.NoClientCert}, "none": {"no", tls.NoClientCert},
	"optional": {"optional", tls.VerifyClientCertIfGiven},
	"required": {"yes", tls.RequireAndVerifyClientCert},
}

// checkTLS refuses material Redis would serve badly: a key that is not the
// certificate's, a certificate that does not chain to ca.crt or is not
// valid at now. Errors name what is wrong, never a key's bytes.
func checkTLS(m *tlsMaterial, now time.Time) (*tlsLoaded, error) {
	auth, ok := clientAuthValues[m.clientAuth]
	if !ok {
		return nil, fmt.Errorf("spec.tls.clientAuth %q is not one of none, optional, required", m.clientAuth)
	}
	cert, err := tls.X509KeyPair(m.cert, m.key)
	if err != nil {
		return nil, fmt.Errorf("spec.tls Secret: tls.key and tls.crt are not a pair: %s", keyPairProblem(err))
	}
	leaf := cert.Leaf
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(m.ca) {
		return nil, errors.New("spec.tls Secret: ca.crt holds no PEM certificate")
	}
	if now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("spec.tls Secret: tls.crt is valid from %s to %s, not now", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	intermediates := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			intermediates.AddCert(c)
		}
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, fmt.Errorf("spec.tls Secret: tls.crt does not chain to ca.crt: %w", err)
	}
	return &tlsLoaded{hash: m.hash(), cert: cert, roots: roots, caPEM: m.ca, notAfter: leaf.NotAfter, authValue: auth.redis, clientAuth: auth.goTLS}, nil
}

// keyPairProblem says what crypto/tls found wrong with a pair in words
// that hold none of its bytes: its errors are fixed strings, but the
// manager does not rely on that for a key.
func keyPairProblem(err error) string {
	msg := err.Error()
	for _, known := range []string{
		"private key does not match public key",
		"failed to find any PEM data in certificate input",
		"failed to find certificate PEM data in certificate input",
		"failed to find any PEM data in key input",
		"failed to find \"PRIVATE KEY\" PEM block in key input",
		"failed to parse private key",
		"unknown public key algorithm",
	} {
		if strings.Contains(msg, known) {
			return known
		}
	}
	return "they do not parse as a certificate and its private key"
}

// The files redis-server reads: the directory named by tlsDirName is a
// symlink to one holding a whole set, replaced at once by a rename. Its
// name starts with the private directory's, so that no Redis data file
// may take it (managerNames), but it outlives a manager: it is the last
// good certificate of the next one too.
const tlsDirName = privateDirName + "-tls"

func tlsPath(dataDir, name string) string { return filepath.Join(dataDir, tlsDirName, name) }

// writeTLSFiles puts material where redis-server reads it, key 0600, and
// removes the sets it replaced.
func writeTLSFiles(dataDir string, m *tlsMaterial) error {
	set := tlsDirName + "-" + m.hash()[:16]
	dir := filepath.Join(dataDir, set)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write the TLS files: %w", err)
	}
	for _, name := range tlsSecretKeys {
		if err := writeFileAtomic(filepath.Join(dir, name), m.file(name), 0o600); err != nil {
			return fmt.Errorf("write the TLS files: %w", err)
		}
	}
	link := filepath.Join(dataDir, tlsDirName)
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(set, tmp); err != nil {
		return fmt.Errorf("write the TLS files: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write the TLS files: %w", err)
	}
	if err := syncDir(dataDir); err != nil {
		return fmt.Errorf("write the TLS files: %w", err)
	}
	old, _ := filepath.Glob(filepath.Join(dataDir, tlsDirName+"-*"))
	for _, o := range old {
		if filepath.Base(o) != set {
			os.RemoveAll(o)
		}
	}
	return nil
}

// readTLSFiles is the last good material a previous manager wrote, with
// the client rule of the redis.conf it wrote: for the connections made
// before the first view (after an upgrade or a restart, to a redis-server
// that serves it), and what keeps serving should the Secret be refused.
func readTLSFiles(dataDir, confPath string) *tlsLoaded {
	conf, _ := os.ReadFile(confPath)
	m := &tlsMaterial{clientAuth: "none"}
	for spec, v := range clientAuthValues {
		if spec != "" && v.redis == confSetting(string(conf), "tls-auth-clients") {
			m.clientAuth = spec
		}
	}
	var err error
	if m.cert, err = os.ReadFile(tlsPath(dataDir, "tls.crt")); err != nil {
		return nil
	}
	m.key, _ = os.ReadFile(tlsPath(dataDir, "tls.key"))
	m.ca, _ = os.ReadFile(tlsPath(dataDir, "ca.crt"))
	l, err := checkTLS(m, time.Now())
	if err != nil {
		return nil
	}
	return l
}

// clientConfig is how the manager dials a redis-server that serves TLS:
// it presents the certificate (which clientAuth required asks for), and
// verifies the server's chain to ca.crt, or to the CA before it while a
// renewal moves from one to the next. Like Redis's own replication, it
// does not check the name: the instances are dialled by IP address, and
// ca.crt is the cluster's.
func (l *tlsLoaded) clientConfig(prev *tlsLoaded) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(l.caPEM)
	if prev != nil {
		roots.AppendCertsFromPEM(prev.caPEM)
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		Certificates:       []tls.Certificate{l.cert},
		InsecureSkipVerify: true, // the chain is verified below; the name is not
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth)
		},
	}
}

// serverConfig is the discovery port's: the same certificate as Redis,
// and the same rule for clients' certificates.
func (l *tlsLoaded) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{l.cert},
		ClientAuth:   l.clientAuth,
		ClientCAs:    l.roots,
	}
}

func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("the server sent no certificate")
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// tlsState is the reconciler's part of TLS.
type tlsState struct {
	tlsWanted    bool       // spec.tls is set
	tlsGood      *tlsLoaded // the last good material, on disk; kept when spec.tls goes, for a server that still serves it
	tlsErr       string     // why the latest spec.tls Secret was refused
	tlsLive      string     // key of what the running redis-server was last set to serve
	tlsLiveFor   time.Time  // the start of the redis-server tlsLive and replTLS describe
	replTLS      string     // its tls-replication: yes or no
	tlsLiveErr   string     // why redis-server refused it
	discoveryTLS bool       // the discovery port serves tlsGood
}

// takeTLS checks the view's spec.tls material and, when good, writes it
// down and hands it to the manager's connections and to the discovery
// port; redis-server gets it from syncTLS. Refused material changes
// nothing.
func (r *reconciler) takeTLS(m *tlsMaterial) {
	r.tlsWanted = m != nil
	if m == nil {
		r.tlsErr, r.discoveryTLS = "", false
		r.discovery.setTLS(nil)
		return
	}
	if g := r.tlsGood; g != nil && g.hash == m.hash() && g.authValue == clientAuthValues[m.clientAuth].redis {
		r.tlsErr = ""
		if r.creds.tlsConfig.Load() == nil {
			r.creds.setTLS(g.clientConfig(nil)) // the certificate on disk, taken at start
		}
		if !r.discoveryTLS {
			r.discovery.setTLS(g.serverConfig())
			r.discoveryTLS = true
		}
		return
	}
	l, err := checkTLS(m, time.Now())
	if err == nil {
		err = writeTLSFiles(r.settings.dataDir, m)
	}
	if err != nil {
		if err.Error() != r.tlsErr {
			r.log.Error("refusing the spec.tls Secret; the last good certificate keeps serving", "error", err)
		}
		r.tlsErr = err.Error()
		if r.tlsGood == nil {
			r.discovery.setTLS(&tls.Config{}) // never plaintext where TLS is asked for
		}
		return
	}
	r.tlsErr = ""
	r.creds.setTLS(l.clientConfig(r.tlsGood))
	r.tlsGood = l
	r.discovery.setTLS(l.serverConfig())
	r.discoveryTLS = true
	r.log.Info("took the spec.tls certificate", "notAfter", l.notAfter.UTC().Format(time.RFC3339), "clientAuth", l.authValue)
}

// abandonHandshake ends a replica's attempt to reach its primary over TLS
// when that primary now serves plaintext: the primary reads the TLS
// handshake as the start of a command and never answers, and the replica
// would wait repl-timeout (60 s by default) before it tried again, the
// plaintext way. No command abandons the attempt (REPLICAOF to the same
// master is a no-op), so repl-timeout is lowered to 1 s until Redis gives
// up (two seconds at most) and put back, unless it was changed meanwhile.
// Only while the link is down and no sync is under way: a link that is up,
// or a transfer, would time out too.
func abandonHandshake(log *slog.Logger, me redisNode, passwords []string) {
	settled := func(c redis.Conn) bool {
		info, err := infoReplication(c)
		return err != nil || info["master_link_status"] == "up" || info["master_sync_in_progress"] == "1"
	}
	lowered := false
	err := withRedis(me.dial, passwords, me.tls, redisTimeout, func(c redis.Conn) error {
		v, err := redis.Strings(c.Do("CONFIG", "GET", "repl-timeout"))
		if err != nil || len(v) != 2 || v[1] == "1" || settled(c) {
			return err
		}
		if _, err := c.Do("CONFIG", "SET", "repl-timeout", "1"); err != nil {
			return err
		}
		lowered = true
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) && !settled(c); {
			time.Sleep(50 * time.Millisecond)
		}
		now, err := redis.Strings(c.Do("CONFIG", "GET", "repl-timeout"))
		if err == nil && len(now) == 2 && now[1] == "1" {
			_, err = c.Do("CONFIG", "SET", "repl-timeout", v[1])
		}
		return err
	})
	switch {
	case err != nil:
		log.Warn("cannot hurry the replica's link attempt; it ends at repl-timeout", "error", err)
	case lowered:
		log.Info("the replica's TLS attempt with a plaintext primary was abandoned; it reconnects in plaintext")
	}
}

// podTLS is what redis.conf says of TLS: nil for none.
func (r *reconciler) podTLS() *podTLS {
	if !r.tlsWanted || r.tlsGood == nil {
		return nil
	}
	return &podTLS{
		cert: tlsPath(r.settings.dataDir, "tls.crt"), key: tlsPath(r.settings.dataDir, "tls.key"), ca: tlsPath(r.settings.dataDir, "ca.crt"),
		authClients: r.tlsGood.authValue,
		replication: r.role.replicaOf == "" || r.creds.servesTLS(r.role.replicaOf),
	}
}

// tlsRestart names what only a restart applies: turning TLS on or off.
func (r *reconciler) tlsRestart(startedTLS bool) []string {
	if startedTLS != (r.podTLS() != nil) {
		return []string{"port", "tls-port"}
	}
	return nil
}

// syncTLS brings the running redis-server to the certificate the manager
// holds (a renewal, or a first load after a start, which costs nothing
// when nothing changed), and its link to its primary to the way that
// primary serves. A server that does not answer gets it on a later look.
func (r *reconciler) syncTLS() {
	if r.tlsGood == nil || !r.reachable() {
		return
	}
	sup := r.sup.snapshot()
	if !sup.startedAt.Equal(r.tlsLiveFor) {
		r.tlsLiveFor, r.tlsLive, r.tlsLiveErr = sup.startedAt, "", ""
		r.replTLS = cmp.Or(confSetting(sup.startedConf, "tls-replication"), "no")
	}
	var set []any
	if r.tlsLive != r.tlsGood.key() {
		d := r.settings.dataDir
		set = append(set, "tls-cert-file", tlsPath(d, "tls.crt"), "tls-key-file", tlsPath(d, "tls.key"),
			"tls-ca-cert-file", tlsPath(d, "ca.crt"), "tls-auth-clients", r.tlsGood.authValue)
	}
	repl := "no"
	if r.role.replicaOf != "" && r.creds.servesTLS(r.role.replicaOf) {
		repl = "yes"
	}
	if !r.role.primary && repl != r.replTLS {
		set = append(set, "tls-replication", repl)
	}
	if len(set) == 0 {
		return
	}
	began := time.Now()
	err := withRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("CONFIG", append([]any{"SET"}, set...)...)
		return err
	})
	if err != nil {
		if _, refused := err.(redis.Error); refused {
			msg := fmt.Sprintf("redis-server refuses the spec.tls certificate: %v", err)
			if msg != r.tlsLiveErr {
				r.log.Error("redis-server refuses the spec.tls certificate; it serves the one before", "error", err)
			}
			r.tlsLiveErr = msg
			r.tlsLive = r.tlsGood.key() // not again until it changes
			return
		}
		r.log.Warn("cannot set TLS on redis-server yet", "error", err)
		return
	}
	r.tlsLiveErr, r.tlsLive = "", r.tlsGood.key()
	took := time.Since(began).Round(time.Microsecond).String()
	if r.replTLS != repl && slices.Contains(set, any("tls-replication")) {
		r.log.Info("the link to the primary goes the way the primary serves", "tls-replication", repl, "primary", r.role.replicaOf)
		if repl == "no" {
			me, passwords := r.me(), r.creds.list()
			r.jobs.Go(func() { abandonHandshake(r.log, me, passwords) })
		}
		r.replTLS = repl
	}
	switch {
	case set[0] == "tls-replication":
	case sup.startedTLS:
		r.log.Info("redis-server serves the spec.tls certificate to new connections", "notAfter", r.tlsGood.notAfter.UTC().Format(time.RFC3339), "took", took)
	default:
		r.log.Info("redis-server holds the spec.tls certificate, for a link to a primary that serves TLS; it serves TLS itself after a restart", "took", took)
	}
}
