package main

// Probes for the kubelet, the instance's status for the operator and for
// curl, and the operator's commands. Probes never talk to Redis: they serve
// what the reconciler last published, so a hung Redis cannot pile up probe
// connections, and read the loops' heartbeats, so a hung manager fails its
// liveness probe.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Liveness: a loop that has not beaten for loopStale is stuck; a running
// redis-server that has not answered for redisHung is hung. Both are far
// above the loops' own periods and timeouts.
const (
	loopStale   = 15 * time.Second
	sourceStale = 2 * time.Minute
	redisHung   = 30 * time.Second
)

type health struct {
	rec    *reconciler
	sup    *supervisor
	obs    *observer
	source func() time.Time
}

// problem says why the manager is not alive, or "" when it is.
func (h *health) problem() string {
	now := time.Now()
	sup := h.sup.snapshot()
	for _, l := range []struct {
		name  string
		beat  time.Time
		stale time.Duration
	}{
		{"reconciler", time.Unix(0, h.rec.beat.Load()), loopStale},
		{"observer", time.Unix(0, h.obs.beat.Load()), loopStale},
		{"supervisor", sup.beat, loopStale},
		// Waits on the API server, and backs off up to 30 s when it is away.
		{"source", h.source(), sourceStale},
	} {
		if now.Sub(l.beat) > l.stale {
			return fmt.Sprintf("the %s loop has not run for %s", l.name, now.Sub(l.beat).Round(time.Second))
		}
	}
	ps := h.rec.published.Load()
	switch {
	case !sup.wanted, !sup.running: // stopped on purpose, or restarting
		return ""
	case now.Sub(sup.startedAt) > redisHung && now.Sub(ps.lastAnswer) > redisHung:
		return fmt.Sprintf("redis-server (pid %d) has not answered for %s", sup.pid, now.Sub(ps.lastAnswer).Round(time.Second))
	}
	return ""
}

type httpServer struct {
	*http.Server
	tls bool
}

func newHTTPServer(s *settings, log *slog.Logger, h *health) *httpServer {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if p := h.problem(); p != "" {
			writeJSON(w, http.StatusInternalServerError, map[string]any{"healthy": false, "reason": p})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"healthy": true})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ps := h.rec.published.Load()
		if !ps.ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": ps.reason})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true, "role": ps.status.Role})
	})
	mux.HandleFunc("GET /startupz", func(w http.ResponseWriter, r *http.Request) {
		ps := h.rec.published.Load()
		if !ps.started {
			body := map[string]any{"started": false, "reason": ps.startupReason}
			if ps.startupReason == "redis-server is loading its dataset" {
				body["loading"], body["loadedPercent"], body["etaSeconds"] = true, ps.loadedPercent, ps.etaSeconds
			}
			writeJSON(w, http.StatusServiceUnavailable, body)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"started": true})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.rec.published.Load().status)
	})
	op := &operator{tokenFile: s.operatorTokenFile, log: log}
	var restarting sync.Mutex
	mux.HandleFunc("POST /v1/restart", op.authorize(func(w http.ResponseWriter, r *http.Request) {
		if !restarting.TryLock() {
			writeJSON(w, http.StatusConflict, map[string]any{"error": "a restart is in progress"})
			return
		}
		defer restarting.Unlock()
		if why := h.restartLoses(); why != "" {
			writeJSON(w, http.StatusConflict, map[string]any{"error": why})
			return
		}
		// A graceful stop may take the whole shutdown budget.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.shutdownTimeout + 2*time.Minute))
		log.Info("restarting redis-server, as the operator asked", "remote", r.RemoteAddr)
		before := h.sup.snapshot().pid
		err := h.sup.restart(r.Context())
		switch {
		case errors.Is(err, errNotRunning):
			writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
		default:
			// Done is when it answers again (loading its data counts): a
			// caller must be able to go on at once.
			pid := h.sup.snapshot().pid
			answered := h.awaitAnswer(r.Context())
			writeJSON(w, http.StatusOK, map[string]any{"restarted": true, "oldPid": before, "pid": pid, "answering": answered})
		}
	}))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if s.tlsCert != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &httpServer{Server: srv, tls: s.tlsCert != ""}
}

// awaitAnswer waits, within a minute, for redis-server to answer PING,
// with PONG or with LOADING.
func (h *health) awaitAnswer(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.credentials(), redisTimeout, func(c redis.Conn) error {
			_, err := c.Do("PING")
			if _, isReply := err.(redis.Error); isReply && strings.HasPrefix(err.Error(), "LOADING") {
				return nil
			}
			return err
		})
		if err == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// restartLoses says why a restart of the primary would lose its dataset,
// or "": with no save point and no AOF it would come back empty, and with a
// pending change of its data files' names it would load other files; its
// replicas would copy the loss. Redis is asked, for its persistence may have
// changed live since it started; a primary that cannot be asked is not
// restarted.
func (h *health) restartLoses() string {
	keys := h.rec.primaryKeys.Load()
	if keys == 0 {
		return ""
	}
	for _, name := range h.rec.published.Load().status.PendingRestart {
		if name == "dbfilename" || name == "appendfilename" || name == "appenddirname" {
			return fmt.Sprintf("refusing to restart the primary: it holds %d keys and the pending %s would have it load other files; switch over first", keys, name)
		}
	}
	var save, aof []string
	err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.credentials(), redisTimeout, func(c redis.Conn) error {
		var err error
		if save, err = redis.Strings(c.Do("CONFIG", "GET", "save")); err != nil {
			return err
		}
		aof, err = redis.Strings(c.Do("CONFIG", "GET", "appendonly"))
		return err
	})
	switch {
	case err != nil || len(save) != 2 || len(aof) != 2:
		return fmt.Sprintf("refusing to restart the primary: cannot ask redis-server whether it persists its %d keys: %v", keys, err)
	case !persistent(confValues{"save": {{save[1]}}, "appendonly": {{aof[1]}}}):
		return fmt.Sprintf("refusing to restart the primary: it holds %d keys and persists none (no save point, no AOF), so it would come back empty; switch over first", keys)
	}
	return ""
}

// operator guards the commands that change an instance. They need the
// bearer token in --operator-token-file, read at each request so that a
// rotated token (a re-mounted Secret) counts at once; with no token
// configured they are refused outright, for an open restart endpoint on
// every Redis pod would be an outage waiting for a caller.
type operator struct {
	tokenFile string
	log       *slog.Logger
}

func (o *operator) authorize(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if o.tokenFile == "" {
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: no --operator-token-file is configured"})
			return
		}
		data, err := os.ReadFile(o.tokenFile)
		token := strings.TrimSpace(string(data))
		if err != nil || token == "" {
			o.log.Error("cannot read the operator token; refusing operator commands", "file", o.tokenFile, "error", err)
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "operator commands are disabled: the operator token cannot be read"})
			return
		}
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		// Compared as digests, in constant time: neither the token nor its
		// length shows in the timing.
		a, b := sha256.Sum256([]byte(given)), sha256.Sum256([]byte(token))
		if !ok || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			o.log.Warn("refused an operator command without a valid token", "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="redis-operator"`)
			writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "a valid bearer token is required"})
			return
		}
		next(w, r)
	}
}

func (s *httpServer) serve(ln net.Listener, certFile, keyFile string) error {
	if s.tls {
		return s.ServeTLS(ln, certFile, keyFile)
	}
	return s.Serve(ln)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
