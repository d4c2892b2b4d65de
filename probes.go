package main

import (
	"fmt"
	"time"
)

// Probes for the kubelet. They never talk to Redis: readiness and
// startup serve what the reconciler last published, so a hung Redis cannot
// pile up probe connections, and liveness reads the loops' heartbeats, so
// a hung manager fails it.

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
}

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
	case want.replicaOf != "" && joinHostPort(obs.info["master_host"], obs.info["master_port"]) != canonicalAddr(want.replicaOf):
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
