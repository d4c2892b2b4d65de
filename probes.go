package main

// Probes for the kubelet. They never talk to Redis: readiness and
// startup serve what the reconciler last published, so a hung Redis cannot
// pile up probe connections, and liveness reads the loops' heartbeats, so
// a hung manager fails it.

import (
	"cmp"
	"fmt"
	"net/http"
	"time"
)

// probeState is what the HTTP handlers serve, published by the reconciler.
type probeState struct {
	status        instanceStatus
	ready         bool
	reason        string
	started       bool
	startupReason string
	loadedPercent float64
	etaSeconds    int64
	lastAnswer    time.Time // redis-server last answered INFO
	info          redisInfo // its last INFO, of the process running now
	infoAt        time.Time
	tlsNotAfter   time.Time // the expiry of the spec.tls certificate held; zero for none
}

// Liveness: a loop that has not beaten for loopStale is stuck; a running
// redis-server that has not answered for redisHung is hung. Both are far
// above the loops' own periods and timeouts: the reconciler beats before
// each step of a turn, and no step takes more than a few seconds.
const (
	loopStale   = 15 * time.Second
	sourceStale = 2 * time.Minute
	redisHung   = 30 * time.Second
)

// healthz is the liveness probe: it fails only when the manager itself is
// stuck, or redis-server is hung, for the kubelet then restarts the pod.
func (h *endpoints) healthz(w http.ResponseWriter, r *http.Request) {
	if p := h.problem(); p != "" {
		writeJSON(w, http.StatusInternalServerError, map[string]any{"healthy": false, "reason": p})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"healthy": true})
}

// readyz is the readiness probe: the contract's rule (readiness), as the
// reconciler last published it.
func (h *endpoints) readyz(w http.ResponseWriter, r *http.Request) {
	ps := h.rec.published.Load()
	if !ps.ready {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": ps.reason})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true, "role": ps.status.Role})
}

// startupz is the startup probe: it holds the liveness probe off while
// redis-server loads its dataset, however long that takes, and says how far
// it got.
func (h *endpoints) startupz(w http.ResponseWriter, r *http.Request) {
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
}

// problem says why the manager is not alive, or "" when it is.
func (h *endpoints) problem() string {
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

// probes is what the probes say, from what the reconciler holds: r.wanted
// rather than sup.wanted, for the supervisor may not have heard yet.
func (r *reconciler) probes(sup supervisorState, obs *observation, crashed string) *probeState {
	ps := &probeState{lastAnswer: r.lastAnswer}
	switch {
	case !r.haveView:
		ps.reason = "waiting for the RedisCluster " + r.settings.cluster
		ps.startupReason = ps.reason
	case r.fenced:
		ps.reason = "fenced by the " + fencedAnnotation + " annotation"
		ps.started = true
	case !r.wanted:
		ps.reason, ps.started = r.stoppedReason(), true
		if r.restoreJob != nil {
			ps.started, ps.startupReason = false, ps.reason
		}
	case !sup.running && !sup.retryAt.IsZero():
		ps.reason = cmp.Or(crashed, sup.lastExit)
		ps.startupReason = ps.reason
	case !sup.running:
		ps.reason, ps.startupReason = "redis-server is starting", "redis-server is starting"
	default:
		ps.ready, ps.reason = readiness(obs, r.role, r.view.cluster.Spec.Replication.MaxLagBytes)
		switch {
		case obs == nil || obs.err != nil:
			ps.startupReason = "redis-server does not answer yet"
		case obs.loading():
			ps.startupReason = "redis-server is loading its dataset"
			ps.loadedPercent = obs.info.float("loading_loaded_perc")
			ps.etaSeconds = obs.info.int("loading_eta_seconds")
		default:
			ps.started = true
		}
	}
	return ps
}

// stoppedReason says why redis-server is not wanted, but for a fence.
func (r *reconciler) stoppedReason() string {
	switch {
	case r.restoreJob != nil:
		return "restoring the dataset from backup: " + r.restoreJob.progress()
	case r.restoreErr != "":
		return r.restoreErr
	case r.guardErr != "":
		return r.guardErr
	case !r.fragmentOK:
		return "no valid redis.conf fragment yet: " + r.confErr
	}
	return fmt.Sprintf("waiting for the target primary %s to publish its address", r.role.target)
}

// readiness applies the contract's /readyz rule to the latest observation.
func readiness(obs *observation, want desiredRole, maxLagBytes int64) (bool, string) {
	switch {
	case obs == nil:
		return false, "redis-server has not been observed yet"
	case obs.err != nil:
		return false, "redis-server does not answer: " + obs.err.Error()
	case obs.loading():
		return false, fmt.Sprintf("redis-server is loading its dataset (%.1f%%)", obs.info.float("loading_loaded_perc"))
	case obs.pingErr != nil:
		return false, "redis-server refuses PING: " + obs.pingErr.Error()
	case time.Since(obs.at) > 3*pollServing:
		return false, "no recent answer from redis-server"
	case want.primary && obs.role() != "master":
		return false, fmt.Sprintf("this instance is the target primary but runs as %s", obs.role())
	case want.primary:
		return true, ""
	case want.targetFenced && obs.role() == "master":
		return false, fmt.Sprintf("the primary role moves to %s, which is fenced: writes are held back here until it is unfenced or targetPrimary moves", want.target)
	case want.targetFenced:
		return false, fmt.Sprintf("the target primary %s is fenced", want.target)
	case obs.role() != "slave":
		return false, fmt.Sprintf("this instance must replicate from %s but runs as %s", want.target, obs.role())
	case want.replicaOf != "" && obs.info.masterAddr() != canonicalAddr(want.replicaOf):
		return false, fmt.Sprintf("replicating from %s:%s, not from %s at %s", obs.info["master_host"], obs.info["master_port"], want.target, want.replicaOf)
	case obs.info["master_link_status"] != "up":
		return false, "replication link to the primary is down"
	case maxLagBytes > 0 && lagBytes(obs) < 0:
		return false, "the primary's replication offset is unknown, so the lag is"
	case maxLagBytes > 0 && lagBytes(obs) > maxLagBytes:
		return false, fmt.Sprintf("replication lag %d bytes is over maxLagBytes %d", lagBytes(obs), maxLagBytes)
	}
	return true, ""
}

// lagBytes is how far a replica is behind its master, or -1 when unknown.
func lagBytes(obs *observation) int64 {
	if obs == nil || obs.role() != "slave" || obs.primaryOffset < 0 {
		return -1
	}
	return max(0, obs.primaryOffset-obs.info.int("slave_repl_offset"))
}
