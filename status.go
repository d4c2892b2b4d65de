package main

// What the reconciler publishes: a probe state for the HTTP handlers,
// replaced whole on every step, and this pod's status entry for the
// status writer, which writes the latest one and retries until it lands.

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"sync/atomic"
	"time"
)

// statusState is what the reconciler published, and wrote, last.
type statusState struct {
	published    atomic.Pointer[probeState] // for the HTTP handlers
	statuses     chan statusUpdate          // to the status writer; the latest wins
	written      instanceStatus
	writtenAt    time.Time
	observed     chan struct{} // closed once a state with a view and a look at Redis is published
	observedSent bool
}

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
	r.touch()
	if r.role.primary {
		r.primaryKeys.Store(r.heldKeys)
	} else {
		r.primaryKeys.Store(0)
	}
	sup := r.sup.snapshot()
	obs := r.obs
	if obs != nil && (!sup.running || obs.at.Before(sup.startedAt)) {
		obs = nil // what we saw was of a process that is gone
	}
	crashed := "" // with Redis's own reason: see supervisor.snapshot
	if r.wanted && !sup.running && !sup.retryAt.IsZero() && sup.refused == "" {
		crashed = fmt.Sprintf("redis-server exited (%s); restarting", sup.lastExit)
	}
	ps := r.probes(sup, obs, crashed)
	ps.status = r.statusEntry(sup, obs, crashed)
	ps.status.Ready, ps.status.NotReadyReason = ps.ready, ps.reason
	if obs != nil && obs.err == nil {
		ps.info, ps.infoAt = obs.info, obs.at // for /metrics: no INFO of its own
	}
	if r.tlsGood != nil {
		ps.tlsNotAfter = r.tlsGood.notAfter
	}
	r.published.Store(ps)
	if !r.observedSent && r.haveView && r.obs != nil && r.obs.err == nil {
		r.observedSent = true
		close(r.observed)
	}
	r.sendStatus(ps)
}

// statusEntry is this pod's status entry but for its readiness, from what
// the reconciler holds and from the latest look at Redis (nil: none of the
// process running now).
func (r *reconciler) statusEntry(sup supervisorState, obs *observation, crashed string) instanceStatus {
	st := instanceStatus{
		Role:               "none",
		Address:            r.settings.announceAddr(),
		Fenced:             r.fenced,
		ManagerVersion:     version,
		ExecutableHash:     r.exeHash,
		Restarts:           sup.restarts,
		SentinelAddress:    r.settings.sentinelAddr(),
		ObservedGeneration: r.view.cluster.Metadata.Generation,
		LastError:          cmp.Or(r.viewErr, r.tlsErr, r.confErr, r.writeErr, r.fenceErr, r.guardErr, r.restoreErr, sup.refused, crashed, r.roleErr, r.authErr, r.liveErr, r.tlsLiveErr, r.usersErr, r.usersLiveErr),
		PendingRestart:     []string{},
		Keys:               r.heldKeys, // while redis-server does not run: what it held
		UpdatedAt:          time.Now().UTC(),
	}
	if sup.running {
		st.ConfigHash, st.PendingRestart = r.configStatus()
		st.TLS = sup.startedTLS
	}
	if obs == nil || obs.err != nil {
		return st
	}
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
	return st
}

// sendStatus hands the entry to the status writer when it changed in what
// matters, or when the heartbeat is due. The writer retries until it
// succeeds, so the entry counts as written.
func (r *reconciler) sendStatus(ps *probeState) {
	switch {
	case !r.haveView: // no object to write to yet
		return
	case r.adopted && !r.observedSent && time.Since(r.began) < 5*time.Second:
		return // an upgrade's first moments: the entry of before holds until Redis is seen
	case r.writtenAt.IsZero(), !sameStatus(ps.status, r.written), time.Since(r.writtenAt) >= heartbeatEvery:
	default:
		return
	}
	offer(r.statuses, statusUpdate{entry: ps.status, primary: r.role.primary && ps.ready && ps.status.Role == "master"})
	r.written, r.writtenAt = ps.status, time.Now()
	r.publishDiscovery()
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

// runStatusWriter writes the latest entry, retrying with backoff while the
// source fails: Redis is not touched by this, and the entry catches up.
func runStatusWriter(ctx context.Context, log *slog.Logger, updates <-chan statusUpdate, write func(context.Context, statusUpdate) error) {
	var (
		pending *statusUpdate
		wait    = newBackoff()
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
			pending, retry = nil, nil
			wait.reset()
			continue
		}
		counts.statusPatchErrors.Add(1)
		d := wait.next()
		log.Warn("cannot write status; retrying", "error", err, "retryIn", d.String())
		retry = time.After(d)
	}
}

// sameStatus says whether two entries differ only in figures that move
// with every write: offsets, memory, how many keys, and the figures a
// reason quotes (loading progress, lag, a download's progress). A reason
// that changes in its words is news, and goes out at once.
func sameStatus(a, b instanceStatus) bool {
	a.ReplicationOffset, a.LagBytes, a.UsedMemoryBytes = b.ReplicationOffset, b.LagBytes, b.UsedMemoryBytes
	if (a.Keys == 0) == (b.Keys == 0) {
		a.Keys = b.Keys // the empty-primary guards read whether an entry holds keys
	}
	if figures.ReplaceAllString(a.NotReadyReason, "#") == figures.ReplaceAllString(b.NotReadyReason, "#") {
		a.NotReadyReason = b.NotReadyReason
	}
	a.UpdatedAt = b.UpdatedAt
	return reflect.DeepEqual(a, b)
}

// figures are the numbers in a reason.
var figures = regexp.MustCompile(`[0-9]+(\.[0-9]+)?`)
