package main

// POST /v1/restart: redis-server is stopped gracefully and started again on
// redis.conf as it now is, which is how parameters Redis reads only at
// start are applied. A restart that would lose the dataset, or that would
// not start, is refused and Redis keeps running as it is.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// restart is POST /v1/restart. It answers once the new redis-server
// answers (loading its data counts), so that a caller can go on at once.
func (h *endpoints) restart(w http.ResponseWriter, r *http.Request) {
	if why := h.restartLoses(); why != "" {
		writeJSON(w, http.StatusConflict, map[string]any{"error": why})
		return
	}
	// A graceful stop may take the whole shutdown budget.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.settings.shutdownTimeout + 2*time.Minute))
	if err := h.restartStarts(); err != nil {
		h.log.Error("refusing to restart redis-server: the new configuration cannot start", "error", err)
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": "refusing to restart redis-server, which keeps running as it is: " + err.Error()})
		return
	}
	h.log.Info("restarting redis-server, as the operator asked", "remote", r.RemoteAddr)
	before := h.sup.snapshot().pid
	err := h.sup.restart(r.Context())
	switch {
	case errors.Is(err, errNotRunning):
		writeJSON(w, http.StatusConflict, map[string]any{"error": err.Error()})
		return
	case err != nil:
		writeJSON(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
		return
	}
	pid := h.sup.snapshot().pid
	answered, exited := h.awaitAnswer(r.Context(), pid)
	if exited != "" {
		writeJSON(w, http.StatusInternalServerError, map[string]any{"error": "redis-server did not come back: " + exited, "oldPid": before, "pid": pid})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"restarted": true, "oldPid": before, "pid": pid, "answering": answered})
}

// restartLoses says why a restart of the primary would lose its dataset,
// or "": with no save point and no AOF it would come back empty, and with a
// pending change of its data files' names it would load other files; its
// replicas would copy the loss. Redis is asked, for its persistence may have
// changed live since it started; a primary that cannot be asked is not
// restarted.
func (h *endpoints) restartLoses() string {
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
	err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.creds.list(), h.rec.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
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

// restartStarts has redis-server check, as it would start, the
// configuration a restart would start it on: the fragment in redis.conf
// was checked when it came, but what Redis reads at start (a module's
// file, say) may have changed since. A check that could not be made does
// not refuse the restart.
func (h *endpoints) restartStarts() error {
	frag, ok := previousFragment(h.rec.settings.confPath())
	if !ok || h.rec.checkConfig == nil {
		return nil
	}
	if err := h.rec.checkConfig(frag); errors.As(err, new(refusal)) {
		return err
	}
	return nil
}

// awaitAnswer waits, within a minute, for the redis-server of pid to answer
// PING, with PONG or with LOADING; exited says why it stopped instead.
func (h *endpoints) awaitAnswer(ctx context.Context, pid int) (answered bool, exited string) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if sup := h.sup.snapshot(); !sup.running || sup.pid != pid {
			return false, sup.lastExit
		}
		err := withRedis(localAddr(h.rec.settings.redisPort), h.rec.creds.list(), h.rec.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
			_, err := c.Do("PING")
			if _, isReply := err.(redis.Error); isReply && strings.HasPrefix(err.Error(), "LOADING") {
				return nil
			}
			return err
		})
		if err == nil {
			return true, ""
		}
		select {
		case <-ctx.Done():
			return false, ""
		case <-time.After(20 * time.Millisecond):
		}
	}
}
