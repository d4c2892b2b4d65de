package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"time"
)

// What the reconciler publishes: a probe state for the HTTP handlers,
// replaced whole on every step, and this pod's status entry for the
// status writer, which writes the latest one and retries until it lands.

// statusUpdate is one entry to write; primary also claims currentPrimary.
type statusUpdate struct {
	entry   instanceStatus
	primary bool
}

// Status writes: a change that matters (role, readiness, errors, keys
// appearing or going) goes out at once; figures alone (offsets, memory, a
// count of keys) ride the heartbeat, every heartbeatEvery. On an idle
// cluster a primary's offset moves with every replication PING and its
// memory with every INFO, so writing figures as they move would be a patch
// per pod every few seconds, each sent to every watcher of the object,
// for numbers /v1/status serves live anyway.
const heartbeatEvery = time.Minute

// publish computes the status, hands it to the HTTP handlers, and to the
// status writer when it changed enough or the heartbeat is due.
func (r *reconciler) publish() {
	r.beat.Store(time.Now().UnixNano())
	if r.role.primary {
		r.primaryKeys.Store(r.heldKeys)
	} else {
		r.primaryKeys.Store(0)
	}
	sup := r.sup.snapshot()
	ps := &probeState{lastAnswer: r.lastAnswer}
	crashed := "" // with Redis's own reason: see supervisor.snapshot
	if r.wanted && !sup.running && !sup.retryAt.IsZero() && sup.refused == "" {
		crashed = fmt.Sprintf("redis-server exited (%s); restarting", sup.lastExit)
	}
	st := instanceStatus{
		Role:               "none",
		Address:            joinHostPort(r.settings.announceHost, fmt.Sprint(r.settings.redisPort)),
		Fenced:             r.fenced,
		ManagerVersion:     version,
		ExecutableHash:     r.exeHash,
		Restarts:           sup.restarts,
		ObservedGeneration: r.view.cluster.Metadata.Generation,
		LastError:          cmp.Or(r.viewErr, r.confErr, r.writeErr, r.fenceErr, r.guardErr, r.restoreErr, sup.refused, crashed, r.roleErr, r.authErr, r.liveErr),
		PendingRestart:     []string{},
	}
	if sup.running {
		st.ConfigHash, st.PendingRestart = r.configStatus()
	}
	obs := r.obs
	if obs != nil && (!sup.running || obs.at.Before(sup.startedAt)) {
		obs = nil // what we saw was of a process that is gone
	}
	st.Keys = r.heldKeys // while redis-server does not run: what it held
	if obs != nil && obs.err == nil {
		i := obs.info
		switch obs.role() {
		case "master":
			st.Role = "master"
		case "slave":
			st.Role = "replica"
			st.MasterLinkStatus = i["master_link_status"]
			st.LagBytes = lagBytes(obs)
		}
		st.ReplicationID = i["master_replid"]
		st.ReplicationOffset = i.int("master_repl_offset")
		st.ConnectedReplicas = i.int("connected_slaves")
		st.UsedMemoryBytes = i.int("used_memory")
		st.Keys = i.keys()
		st.RedisVersion = i["redis_version"]
	}
	// r.wanted, not sup.wanted: the supervisor may not have heard yet.
	switch {
	case !r.haveView:
		ps.reason = "waiting for the RedisCluster " + r.settings.cluster
		ps.startupReason = ps.reason
	case r.fenced:
		ps.reason = "fenced by the " + fencedAnnotation + " annotation"
		ps.started = true
	case !r.wanted && r.restoreJob != nil:
		ps.reason = "restoring the dataset from backup: " + r.restoreJob.progress()
		ps.startupReason = ps.reason
	case !r.wanted && r.restoreErr != "":
		ps.reason = r.restoreErr
		ps.started = true
	case !r.wanted && r.guardErr != "":
		ps.reason = r.guardErr
		ps.started = true
	case !r.wanted && !r.fragmentOK:
		ps.reason = "no valid redis.conf fragment yet: " + r.confErr
		ps.started = true
	case !r.wanted:
		ps.reason = fmt.Sprintf("waiting for the target primary %s to publish its address", r.role.target)
		ps.started = true
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
	st.Ready, st.NotReadyReason = ps.ready, ps.reason
	ps.status = st
	ps.status.UpdatedAt = time.Now().UTC()
	if obs != nil && obs.err == nil {
		ps.info, ps.infoAt = obs.info, obs.at // for /metrics: no INFO of its own
	}
	r.published.Store(ps)
	if !r.observedSent && r.haveView && r.obs != nil && r.obs.err == nil {
		r.observedSent = true
		close(r.observed)
	}

	since := time.Since(r.writtenAt)
	switch {
	case !r.haveView: // no object to write to yet
		return
	case r.adopted && !r.observedSent && time.Since(r.began) < 5*time.Second:
		return // an upgrade's first moments: the entry of before holds until Redis is seen

	case r.writtenAt.IsZero(), !sameStatus(st, r.written), since >= heartbeatEvery:
	default:
		return
	}
	// The writer retries until it succeeds, so this entry counts as written.
	offer(r.statuses, statusUpdate{entry: ps.status, primary: r.role.primary && ps.ready && st.Role == "master"})
	r.written, r.writtenAt = st, time.Now()
}

// stopped publishes that this instance serves no more: from the stop
// request on, while redis-server shuts down, and after.
func (r *reconciler) stopped(reason string) statusUpdate {
	ps := *r.published.Load()
	ps.ready, ps.reason = false, reason
	ps.status.Role, ps.status.Ready, ps.status.NotReadyReason = "none", false, reason
	ps.status.MasterLinkStatus, ps.status.ConnectedReplicas = "", 0
	ps.status.UpdatedAt = time.Now().UTC()
	r.published.Store(&ps)
	return statusUpdate{entry: ps.status}
}

// statusWriter writes the latest entry, retrying with backoff while the
// source fails: Redis is not touched by this, and the entry catches up.
func runStatusWriter(ctx context.Context, log *slog.Logger, updates <-chan statusUpdate, write func(context.Context, statusUpdate) error) {
	var (
		pending *statusUpdate
		backoff time.Duration
		retry   <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			pending = &u
			if retry != nil {
				continue // the scheduled retry writes the latest
			}
		case <-retry:
			retry = nil
		}
		if pending == nil {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := write(wctx, *pending)
		cancel()
		if err == nil {
			counts.statusPatches.Add(1)
			pending, backoff, retry = nil, 0, nil
			continue
		}
		counts.statusPatchErrors.Add(1)
		backoff = min(max(2*backoff, backoffMin), backoffMax)
		log.Warn("cannot write status; retrying", "error", err, "retryIn", backoff.String())
		retry = time.After(backoff)
	}
}

// sameStatus says whether two entries differ only in figures that move
// with every write (offsets, memory, how many keys).
func sameStatus(a, b instanceStatus) bool {
	a.ReplicationOffset, a.LagBytes, a.UsedMemoryBytes = b.ReplicationOffset, b.LagBytes, b.UsedMemoryBytes
	if (a.Keys == 0) == (b.Keys == 0) {
		a.Keys = b.Keys // the empty-primary guards read whether an entry holds keys
	}
	if a.Ready == b.Ready {
		a.NotReadyReason = b.NotReadyReason // it quotes loading progress and lag
	}
	a.UpdatedAt = b.UpdatedAt
	return reflect.DeepEqual(a, b)
}
