package main

// What this pod's role must be, and the reconciler's steps that make Redis
// take it. Roles come from the RedisCluster object alone: the target primary
// runs as master, every other instance replicates from the address the
// target published in its status entry.

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// desiredRole says what this pod must be: the primary, or a replica of the
// target primary's published address. An empty replicaOf with primary false
// means the target has not published where to reach it yet. The primary
// has a replicaOf while the role is still held elsewhere: see roleFor.
type desiredRole struct {
	primary      bool
	target       string
	replicaOf    string
	targetFenced bool // the target is fenced, so no one takes the role over
}

// leads says whether this instance starts as the primary: the target,
// unless the role is still held elsewhere and it starts as that one's
// replica, to take the role over by the handover.
func (d desiredRole) leads() bool { return d.primary && d.replicaOf == "" }

// roleFor reads the role from the object. A target that does not hold the
// primary role yet, while the instance that does (status.currentPrimary)
// still runs as master, starts as that one's replica: the role moved here
// while this instance was fenced or down, and the old primary kept taking
// writes until it saw the move. Started as a master on what its own disk
// held, it would be taken for the new primary by the handover, which then
// waits for no catch-up, and those writes would be lost.
func roleFor(rc *redisCluster, pod string) desiredRole {
	target := rc.targetPrimary()
	fenced, _ := isFenced(rc.Metadata.Annotations, target) // a malformed annotation says nothing
	if target == pod {
		role := desiredRole{primary: true, target: target, targetFenced: fenced}
		if holder := rc.Status.CurrentPrimary; holder != "" && holder != pod {
			if e := rc.Status.InstancesStatus[holder]; e.Role == "master" && e.Address != "" {
				role.replicaOf = e.Address
			}
		}
		return role
	}
	return desiredRole{target: target, targetFenced: fenced, replicaOf: rc.Status.InstancesStatus[target].Address}
}

// roleState is the reconciler's part of the role: what it must be, and
// how making it so goes.
type roleState struct {
	role        desiredRole
	roleErr     string    // why the role could not be made right
	lostSince   time.Time // when the old primary was first found gone
	demoteSince time.Time // when this master first found it is not the target
	stuckAt     int64     // the replica's offset, while it stands still
	stuckSince  time.Time // since when it has
	handing     bool      // a handover runs, on a goroutine of its own
	handovers   chan handoverResult
}

// handoverFunc moves the primary role from old to new: handover.
type handoverFunc func(old, new redisNode, passwords []string) (handoverSteps, error)

// A handover is the only step of the role that may take long: it waits for
// the old primary (a dead one, up to oldPrimaryTimeout a step) and for the
// new one to catch up. It runs on a goroutine of its own, so that the
// reconciler goes on meanwhile: a fence, a new view or a stop is never held
// up behind it. One runs at a time; its end comes back to the loop.
type handoverResult struct {
	kind  handoverKind
	peer  string // the old primary taken over from, the master demoted, or the target handed to
	err   error
	steps handoverSteps
	began time.Time
	after time.Duration // from the view that asked for it to its start
}

type handoverKind int

const (
	takingOver    handoverKind = iota // the target takes the role from its master
	demotingOther                     // the primary demotes a second master
	handingOff                        // a master that is not the target hands the role over
)

// enforceRole brings the local redis-server to the role the object gives
// it: the target takes the primary role over (or fails over to itself once
// the old primary has been gone for the failover window), a master that is
// not the target hands the role over and refuses writes until it has, and
// a replica follows the target's address.
func (r *reconciler) enforceRole() {
	sup := r.sup.snapshot()
	obs := r.obs
	if r.handing || !r.wanted || !sup.running || obs == nil || obs.err != nil || obs.loading() || obs.at.Before(sup.startedAt) {
		return
	}
	if r.role.primary || obs.role() != "master" {
		r.demoteSince = time.Time{} // the grace is for one stay as a master that is not the target
	}
	switch {
	case r.role.primary && obs.role() == "slave":
		r.takeOver(obs.info.masterAddr())
	case r.role.primary && obs.role() == "master":
		r.stayTheOnlyMaster()
	case !r.role.primary && obs.role() == "master":
		r.handOff()
	default:
		r.followTarget(obs)
	}
}

// me is this instance as a handover reaches it.
func (r *reconciler) me() redisNode {
	return redisNode{dial: localAddr(r.settings.redisPort), announce: r.settings.announceAddr(), tls: r.creds.tlsLocal()}
}

// peer is another instance, at the address its status entry publishes.
func (r *reconciler) peer(addr string) redisNode {
	return redisNode{dial: addr, announce: addr, tls: r.creds.tlsPeer(addr)}
}

// startHandover runs work on a goroutine of its own.
func (r *reconciler) startHandover(work func() handoverResult) {
	r.handing = true
	began, after := time.Now(), time.Since(r.viewAt)
	r.jobs.Go(func() {
		res := work()
		res.began, res.after = began, after
		r.handovers <- res
	})
}

// handoverAttrs are a handover's timings for its log line: from the view
// that asked for it, and its steps.
func (res handoverResult) attrs() []any {
	return append([]any{"afterView", res.after.Round(10 * time.Microsecond).String()}, res.steps.attrs(res.began)...)
}

// takeOver has the target take the primary role from the master it
// follows; when that one is no master (the role moved on meanwhile, a
// quick double move) or is no instance of the cluster (see isPeer), from
// whoever holds it. When no one does, the role is lost, as if its holder
// were gone: the failover window decides.
func (r *reconciler) takeOver(master string) {
	me, creds, holder, known := r.me(), r.creds.list(), r.masterElsewhere(), r.creds.isPeer(master)
	masterNode, holderNode := r.peer(master), r.peer(holder)
	r.startHandover(func() handoverResult {
		from, err, steps := master, errOldNotMaster, handoverSteps{}
		if known {
			steps, err = r.handover(masterNode, me, creds)
		}
		if errors.Is(err, errOldNotMaster) {
			from, err = holder, fmt.Errorf("%w: no instance runs as master", errUnreachable)
			if holder != "" {
				steps, err = r.handover(holderNode, me, creds)
			}
		}
		return handoverResult{kind: takingOver, peer: cmp.Or(from, master), err: err, steps: steps}
	})
}

// stayTheOnlyMaster has the primary make sure it is the only master: an
// old one whose manager cannot see the new target would take writes again
// once its pause ran out.
func (r *reconciler) stayTheOnlyMaster() {
	other := r.masterElsewhere()
	if other == "" || !isMaster(r.peer(other), r.creds.list()) {
		r.lostSince, r.roleErr = time.Time{}, ""
		return
	}
	me, creds, otherNode := r.me(), r.creds.list(), r.peer(other)
	r.startHandover(func() handoverResult {
		steps, err := r.handover(otherNode, me, creds)
		return handoverResult{kind: demotingOther, peer: other, err: err, steps: steps}
	})
}

// handOff is a master that is not the target: no write may be taken here.
// The target's manager normally takes the role over at once; this side
// steps in only after handoverGrace, so the two do not race.
func (r *reconciler) handOff() {
	if r.role.replicaOf != "" && r.demoteSince.IsZero() {
		r.demoteSince = time.Now()
		r.log.Info("this master is not the target: holding writes for its take-over", "target", r.role.target, "afterView", time.Since(r.viewAt).Round(10*time.Microsecond).String())
	}
	if r.role.replicaOf == "" || time.Since(r.demoteSince) < handoverGrace {
		r.holdWrites()
		if r.role.replicaOf != "" {
			// The take-over is the target's manager's doing, which this
			// one learns of only by looking: soon, not in pollServing, so
			// that this instance's entry, its discovery port and a
			// switchover back to it right after go by what it is now.
			// (Not while the target is unreachable, fenced say: the hold
			// can last, and needs no quick looks.)
			time.AfterFunc(pollStarting, r.pokeObserver)
		}
		return
	}
	me, creds, target := r.me(), r.creds.list(), r.peer(r.role.replicaOf)
	r.startHandover(func() handoverResult {
		steps, err := r.handover(me, target, creds)
		return handoverResult{kind: handingOff, peer: target.dial, err: err, steps: steps}
	})
}

// holdWrites keeps a master that is not the target from taking writes.
func (r *reconciler) holdWrites() {
	if err := pauseWrites(r.me(), r.creds.list()); err != nil {
		r.roleFailed("cannot stop writes on this master, which is not the target", err)
	}
}

// handoverEnded takes the end of a handover, and asks for a look at Redis
// at once: the next step of the role, or a retry, goes by what it shows.
func (r *reconciler) handoverEnded(res handoverResult) {
	r.handing = false
	defer r.pokeObserver()
	switch {
	case res.kind == takingOver:
		r.tookOver(res)
	case res.kind == demotingOther && res.err != nil:
		r.roleFailed("cannot demote the other master at "+res.peer, res.err)
	case res.kind == demotingOther && !res.steps.promoted.IsZero():
		// This instance was a replica after all: its last look was of
		// before the role moved here. A take-over, as takeOver would have.
		r.log.Info("took over the primary role", append([]any{"from", res.peer}, res.attrs()...)...)
		r.roleErr = ""
	case res.kind == demotingOther:
		r.log.Warn("demoted another master", append([]any{"address", res.peer}, res.attrs()...)...)
		r.roleErr = ""
	case res.err != nil: // handingOff
		r.roleFailed("cannot hand the primary role to "+r.role.target, res.err)
		if err := pauseWrites(r.me(), r.creds.list()); err != nil {
			r.log.Error("cannot stop writes on this master, which is not the target", "error", err)
		}
	default:
		r.log.Info("handed the primary role over", append([]any{"to", r.role.target, "address", res.peer}, res.attrs()...)...)
		r.roleErr = ""
		r.pokeObserver()
	}
}

// tookOver ends a take-over: done, or, when the old primary does not
// answer, a failover once it has been gone, without a single answer in
// between, for the failover window.
func (r *reconciler) tookOver(res handoverResult) {
	switch {
	case res.err == nil:
		r.log.Info("took over the primary role", append([]any{"from", res.peer}, res.attrs()...)...)
		r.lostSince, r.roleErr = time.Time{}, ""
		r.pokeObserver()
	case errors.Is(res.err, errUnreachable):
		if r.lostSince.IsZero() {
			r.lostSince = time.Now()
			r.log.Warn("the old primary does not answer; failing over if it stays away", "from", res.peer, "window", r.settings.failoverTimeout.String(), "error", res.err)
		}
		if time.Since(r.lostSince) >= r.settings.failoverTimeout {
			r.failOver(res.peer)
		}
	default:
		r.lostSince = time.Time{} // it answered, or may yet: no failover
		r.roleFailed("cannot take over the primary role from "+res.peer, res.err)
	}
}

// failOver promotes this instance, unless it holds no key while another
// instance reported some: replicas would copy the emptiness.
func (r *reconciler) failOver(oldPrimary string) {
	if holder, n := r.dataElsewhere(); r.obs != nil && r.obs.info.keys() == 0 && n > 0 {
		r.roleFailed("refusing to fail over to this instance", fmt.Errorf("%w: it holds no key while %s reported %d", errEmptyPrimary, holder, n))
		return
	}
	if err := promote(r.me(), r.creds.list()); err != nil {
		r.roleFailed("cannot promote this instance", err)
		return
	}
	r.log.Warn("failed over: promoted this instance", "oldPrimary", oldPrimary, "goneFor", time.Since(r.lostSince).Round(time.Millisecond).String())
	r.lostSince, r.roleErr = time.Time{}, ""
	r.pokeObserver()
}

// followTarget keeps a replica following the target's address, unless the
// target reports no key while this one holds some.
func (r *reconciler) followTarget(obs *observation) {
	r.lostSince = time.Time{}
	moving := obs.role() == "slave" && r.role.replicaOf != "" && obs.info.masterAddr() != canonicalAddr(r.role.replicaOf)
	if t := r.view.cluster.Status.InstancesStatus[r.role.target]; moving && t.Role == "master" && t.Keys == 0 && obs.info.keys() > 0 {
		r.roleFailed("refusing to follow "+r.role.target, fmt.Errorf("%w: it reports no key, and following it would drop the %d keys here", errEmptyPrimary, obs.info.keys()))
		return
	}
	moved, err := followPrimary(r.me(), r.creds.list(), obs, r.role)
	switch {
	case err != nil:
		r.roleFailed("cannot re-point the replica at the target primary", err)
		return
	case moved:
		r.log.Info("re-pointed the replica at the target primary", "targetPrimary", r.role.target, "address", r.role.replicaOf)
		r.pokeObserver()
	}
	r.roleErr = ""
	r.unstick(r.me(), r.creds.list(), obs)
}

// masterElsewhere is the address of another instance whose entry says it
// runs as master, or "".
func (r *reconciler) masterElsewhere() string {
	for pod, e := range r.view.cluster.Status.InstancesStatus {
		if pod != r.settings.podName && e.Role == "master" && e.Address != "" {
			return canonicalAddr(e.Address)
		}
	}
	return ""
}

// dataElsewhere names the other instance whose status entry reports the
// most keys, and how many.
func (r *reconciler) dataElsewhere() (string, int64) {
	var holder string
	var most int64
	for pod, e := range r.view.cluster.Status.InstancesStatus {
		if pod != r.settings.podName && e.Keys > most {
			holder, most = pod, e.Keys
		}
	}
	return holder, most
}

// unstick renews a replication link that is up but has carried nothing
// while the primary moved on: Redis 7.0 can leave one so, and the replica
// would otherwise stay behind for good.
func (r *reconciler) unstick(me redisNode, passwords []string, obs *observation) {
	at := obs.info.int("slave_repl_offset")
	behind := obs.role() == "slave" && obs.info["master_link_status"] == "up" && obs.primaryOffset > at
	if !behind || at != r.stuckAt {
		r.stuckAt, r.stuckSince = at, time.Now()
		return
	}
	if time.Since(r.stuckSince) < stalledFor {
		return
	}
	err := withRedis(me.dial, passwords, me.tls, redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("CLIENT", "KILL", "TYPE", "master")
		return err
	})
	if err != nil {
		r.log.Warn("cannot renew a replication link that carries nothing", "error", err)
		return
	}
	r.log.Warn("renewed a replication link that carried nothing", "stuckAt", at, "primaryOffset", obs.primaryOffset, "for", time.Since(r.stuckSince).Round(time.Second).String())
	r.stuckSince = time.Now()
}

// stalledFor is how long a replica may stand still behind its primary
// before its link is renewed; well above a pause of the primary's writes.
const stalledFor = 5 * time.Second

// handoverGrace is how long a master that is no longer the target waits,
// refusing writes, for the target's manager to take the role over before it
// hands the role over itself.
const handoverGrace = 500 * time.Millisecond

// roleFailed reports a role change that did not happen; it is retried on
// the next look at Redis.
func (r *reconciler) roleFailed(what string, err error) {
	msg := what + ": " + err.Error()
	if msg != r.roleErr {
		r.log.Warn(what, "error", err)
	}
	r.roleErr = msg
}
