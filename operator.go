package main

// Operator commands (restart, backup, update) change an instance. They need
// a client certificate verified against --tls-client-ca-file, or the bearer
// token in --operator-token-file, read at each request so that a rotated
// token (a re-mounted Secret) counts at once. With neither configured they
// are refused outright, for an open restart endpoint on every Redis pod
// would be an outage waiting for a caller.

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// operator guards the commands that change an instance. They need a client
// certificate verified against --tls-client-ca-file, or the bearer token in
// --operator-token-file, read at each request so that a rotated token (a
// re-mounted Secret) counts at once. With neither configured they are
// refused outright, for an open restart endpoint on every Redis pod would
// be an outage waiting for a caller.
type operator struct {
	tokenFile string
	clientCA  bool
	log       *slog.Logger
	refusals  logLimit // of the lines about requests refused for their credentials
	noToken   logLimit // of those about a token that cannot be read
}

func (o *operator) authorize(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch {
		case o.clientCA && r.TLS != nil && len(r.TLS.VerifiedChains) > 0:
			// Verified against the CA, and meant for a client: a server
			// certificate of the same CA (a pod's own) does not pass.
			leaf := r.TLS.VerifiedChains[0][0]
			if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
				o.refuse(w, r)
				return
			}
			o.log.Info("operator command", "path", r.URL.Path, "clientCertificate", leaf.Subject.String())
			next(w, r)
			return
		case o.tokenFile == "" && !o.clientCA:
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: neither --operator-token-file nor --tls-client-ca-file is configured"})
			return
		case o.tokenFile == "":
			o.refuse(w, r)
			return
		}
		data, err := os.ReadFile(o.tokenFile)
		token := strings.TrimSpace(string(data))
		if err != nil || token == "" {
			if dropped, ok := o.noToken.allow(); ok {
				o.log.Error("cannot read the operator token; refusing operator commands", "file", o.tokenFile, "error", err, "refusalsNotLogged", dropped)
			}
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: the operator token cannot be read"})
			return
		}
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Compared as digests, in constant time: neither the token nor its
		// length shows in the timing.
		a, b := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			o.refuse(w, r)
			return
		}
		next(w, r)
	}
}

func (o *operator) refuse(w http.ResponseWriter, r *http.Request) {
	if dropped, ok := o.refusals.allow(); ok {
		o.log.Warn("refused an operator command without valid credentials", "path", r.URL.Path, "remote", r.RemoteAddr, "refusalsNotLogged", dropped)
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="redis-operator"`)
	writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "a valid bearer token or client certificate is required"})
}

// logLimit lets one line of a kind through every logLimitEvery, and counts
// those it holds back into the next: callers who need no credentials to be
// refused must not be able to flood the log.
type logLimit struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

const logLimitEvery = 10 * time.Second

// allow says whether to log now, and how many lines were held back since
// the last one logged.
func (l *logLimit) allow() (dropped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && time.Since(l.last) < logLimitEvery {
		l.dropped++
		return 0, false
	}
	dropped, l.dropped, l.last = l.dropped, 0, time.Now()
	return dropped, true
}
