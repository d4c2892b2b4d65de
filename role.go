package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// What this pod's role must be, and the reconciler's steps that make Redis
// take it. Roles come from the RedisCluster object alone: the target primary
// runs as master, every other instance replicates from the address the
// target published in its status entry.

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

// enforceRole brings the local redis-server to the role the object gives
// it: the target takes the primary role over (or fails over to itself once
// the old primary has been gone for the failover window), a master that is
// not the target hands the role over and refuses writes until it has, and
// a replica follows the target's address.
func (r *reconciler) enforceRole() {
	sup := r.sup.snapshot()
	obs := r.obs
	if !r.wanted || !sup.running || obs == nil || obs.err != nil || obs.loading() || obs.at.Before(sup.startedAt) {
		return
	}
	me := redisNode{dial: localAddr(r.settings.redisPort), announce: joinHostPort(r.settings.announceHost, fmt.Sprint(r.settings.redisPort))}
	if r.role.primary || obs.role() != "master" {
		r.demoteSince = time.Time{} // the grace is for one stay as a master that is not the target
	}
	switch {
	case r.role.primary && obs.role() == "slave":
		master := joinHostPort(obs.info["master_host"], obs.info["master_port"])
		err := errOldNotMaster // it follows no instance of the cluster: see isPeer
		if r.isPeer(master) {
			err = handover(redisNode{dial: master, announce: master}, me, r.credentials())
		}
		if errors.Is(err, errOldNotMaster) {
			// The primary role moved on while this one followed the old
			// holder (a quick double move), or it follows an address no
			// instance publishes: take it from whoever holds it. When no
			// one does, the role is lost, as if its holder were gone: the
			// failover window decides.
			if holder := r.masterElsewhere(); holder != "" {
				master = holder
				err = handover(redisNode{dial: holder, announce: holder}, me, r.credentials())
			} else {
				err = fmt.Errorf("%w: no instance runs as master", errUnreachable)
			}
		}
		switch {
		case err == nil:
			r.log.Info("took over the primary role", "from", master)
			r.lostSince, r.roleErr = time.Time{}, ""
			r.pokeObserver()
		case errors.Is(err, errUnreachable):
			// Fail over once it has been gone, without a single answer in
			// between, for the failover window.
			if r.lostSince.IsZero() {
				r.lostSince = time.Now()
				r.log.Warn("the old primary does not answer; failing over if it stays away", "from", master, "window", r.settings.failoverTimeout.String(), "error", err)
			}
			if time.Since(r.lostSince) < r.settings.failoverTimeout {
				return
			}
			if holder, n := r.dataElsewhere(); obs.info.keys() == 0 && n > 0 {
				r.roleFailed("refusing to fail over to this instance", fmt.Errorf("%w: it holds no key while %s reported %d", errEmptyPrimary, holder, n))
				return
			}
			if err := promote(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot promote this instance", err)
				return
			}
			r.log.Warn("failed over: promoted this instance", "oldPrimary", master, "goneFor", time.Since(r.lostSince).Round(time.Millisecond).String())
			r.lostSince, r.roleErr = time.Time{}, ""
			r.pokeObserver()
		default:
			r.lostSince = time.Time{} // it answered, or may yet: no failover
			r.roleFailed("cannot take over the primary role from "+master, err)
		}
	case r.role.primary && obs.role() == "master":
		// The primary also makes sure it is the only master: an old one
		// whose manager cannot see the new target would take writes again
		// once its pause ran out.
		other := r.masterElsewhere()
		if other == "" || !isMaster(other, r.credentials()) {
			r.lostSince, r.roleErr = time.Time{}, ""
			return
		}
		if err := handover(redisNode{dial: other, announce: other}, me, r.credentials()); err != nil {
			r.roleFailed("cannot demote the other master at "+other, err)
			return
		}
		r.log.Warn("demoted another master", "address", other)
		r.roleErr = ""
	case !r.role.primary && obs.role() == "master":
		// Not the target, yet a master: no write may be taken here.
		if r.role.replicaOf == "" {
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot stop writes on this master, which is not the target", err)
			}
			return
		}
		// The target's manager normally takes the role over at once; this
		// side steps in only when it has not, so the two do not race.
		if r.demoteSince.IsZero() {
			r.demoteSince = time.Now()
		}
		if time.Since(r.demoteSince) < handoverGrace {
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.roleFailed("cannot stop writes on this master, which is not the target", err)
			}
			return
		}
		target := redisNode{dial: r.role.replicaOf, announce: r.role.replicaOf}
		if err := handover(me, target, r.credentials()); err != nil {
			r.roleFailed("cannot hand the primary role to "+r.role.target, err)
			if err := pauseWrites(me.dial, r.credentials()); err != nil {
				r.log.Error("cannot stop writes on this master, which is not the target", "error", err)
			}
			return
		}
		r.log.Info("handed the primary role over", "to", r.role.target, "address", r.role.replicaOf)
		r.roleErr = ""
		r.pokeObserver()
	default:
		r.lostSince = time.Time{}
		moving := obs.role() == "slave" && r.role.replicaOf != "" &&
			joinHostPort(obs.info["master_host"], obs.info["master_port"]) != canonicalAddr(r.role.replicaOf)
		if t := r.view.cluster.Status.InstancesStatus[r.role.target]; moving && t.Role == "master" && t.Keys == 0 && obs.info.keys() > 0 {
			r.roleFailed("refusing to follow "+r.role.target, fmt.Errorf("%w: it reports no key, and following it would drop the %d keys here", errEmptyPrimary, obs.info.keys()))
			return
		}
		moved, err := followPrimary(me.dial, r.credentials(), obs, r.role)
		switch {
		case err != nil:
			r.roleFailed("cannot re-point the replica at the target primary", err)
			return
		case moved:
			r.log.Info("re-pointed the replica at the target primary", "targetPrimary", r.role.target, "address", r.role.replicaOf)
			r.pokeObserver()
		}
		r.roleErr = ""
		r.unstick(me, r.credentials(), obs)
	}
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
	err := withRedis(me.dial, passwords, redisTimeout, func(c redis.Conn) error {
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
