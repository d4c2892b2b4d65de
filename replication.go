package main

// Moving the primary role between two redis-servers, and keeping a replica
// on the right primary. The target primary's manager drives a handover,
// and so does the old primary's, with the same steps, so that either one
// alone suffices; every step can be repeated without harm. What decides
// when to take these steps is role.go.
//
// A planned switchover loses no acknowledged write: the old master stops
// taking writes (CLIENT PAUSE WRITE), its offset is read, the new one is
// promoted only once it has applied everything up to that offset, and the
// old one becomes its replica before the pause ends, so the writes it held
// back are refused (READONLY) rather than acknowledged on the wrong side.

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/gomodule/redigo/redis"
)

// redisNode is one instance as the manager reaches it: the address it
// dials, and the address the other instances use.
type redisNode struct {
	dial, announce string
	tls            *tls.Config // nil: it serves plaintext
}

// oldPrimaryTimeout bounds each step with the old primary: short, since a
// dead one holds the handover up, but not so short that a busy one (a fork,
// a slow command) looks dead.
const oldPrimaryTimeout = 700 * time.Millisecond

// handoverPause bounds how long the old master refuses writes should the
// manager driving the handover die half way.
const handoverPause = 5 * time.Second

// catchUpTimeout is how long the new primary may take to apply the last
// writes of the old one before the handover is abandoned and retried.
const catchUpTimeout = time.Second

// errUnreachable marks an old master that does not answer: a failover, not
// a switchover, is then the way, once it has been gone long enough.
var errUnreachable = errors.New("the old primary does not answer")

// errOldNotMaster: the server taken for the old primary is a replica itself,
// and the new one is not master either; the role is held elsewhere.
var errOldNotMaster = errors.New("the old primary runs as a replica, and so does the new one")

// handoverSteps is where a handover's time went, for its log line: what
// limits a switchover is read from there.
type handoverSteps struct {
	paused      time.Time     // writes paused on the old primary; zero when they were not
	catchUp     time.Duration // the new primary applying the old one's last writes, in the pause
	offsetLooks int           // the looks at its offset that took
	promoted    time.Time     // the new primary took writes
	demoted     time.Time     // the old one refused them (READONLY)
}

// attrs are the steps as log attributes, from began on.
func (s handoverSteps) attrs(began time.Time) []any {
	ms := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	a := []any{"took", ms(time.Since(began))}
	if !s.paused.IsZero() && !s.demoted.IsZero() {
		a = append(a, "beforePause", ms(s.paused.Sub(began)), "writesPaused", ms(s.demoted.Sub(s.paused)))
	}
	if !s.paused.IsZero() && !s.promoted.IsZero() {
		a = append(a, "catchUp", ms(s.catchUp), "offsetLooks", s.offsetLooks, "promotedAfterPause", ms(s.promoted.Sub(s.paused)))
	}
	return a
}

// handover moves the primary role from old to new: writes stop on the old
// primary, the new one takes over once it holds every acknowledged write,
// and the old one follows it.
func handover(old, new redisNode, passwords []string) (steps handoverSteps, err error) {
	oc, nc, err := dialBoth(old, new, passwords)
	if err != nil {
		return steps, err
	}
	defer oc.Close()
	defer nc.Close()
	// A first look at each, both under way at once: every round trip
	// before the pause adds to the switchover.
	lookedOld, lookedNew := send(oc, cmd("INFO", "replication")), send(nc, cmd("INFO", "replication"))
	oldReply, oldErr := lookedOld()
	newReply, newErr := lookedNew()
	if oldErr != nil {
		return steps, fmt.Errorf("%w: %v", errUnreachable, oldErr)
	}
	if newErr != nil {
		return steps, fmt.Errorf("read the new primary's role: %w", newErr)
	}
	oldInfo, newInfo := infoOf(oldReply), infoOf(newReply)
	if oldInfo.role() == "master" {
		if err := promoteInPause(oc, nc, newInfo, &steps); err != nil {
			return steps, err
		}
	} else if newInfo.role() != "master" {
		// Neither is master: the role is held elsewhere, not lost.
		return steps, errOldNotMaster
	}
	err = demoteOld(oc, nc, new.announce, !steps.promoted.IsZero())
	steps.demoted = time.Now()
	return steps, err
}

// dialBoth connects to the old primary and the new one at once. An old
// primary that cannot be reached is errUnreachable: a failover's matter.
func dialBoth(old, new redisNode, passwords []string) (oc, nc redis.Conn, err error) {
	var newErr error
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		nc, newErr = dialRedis(new.dial, passwords, new.tls, redisTimeout)
	}()
	oc, err = dialRedis(old.dial, passwords, old.tls, oldPrimaryTimeout)
	<-dialed
	switch {
	case err != nil:
		if nc != nil {
			nc.Close()
		}
		return nil, nil, fmt.Errorf("%w: %v", errUnreachable, err)
	case newErr != nil:
		oc.Close()
		return nil, nil, fmt.Errorf("connect to the new primary: %w", newErr)
	}
	return oc, nc, nil
}

// infoOf parses an INFO reply as send returns it.
func infoOf(replies []any) redisInfo {
	text, _ := redis.String(replies[0], nil)
	return parseInfo(text)
}

// promoteInPause pauses writes on the old primary (oc) and promotes the
// new one (nc, of which ni is a look from just before) once it has applied
// every write acknowledged before the pause, well inside the pause: once it
// lapsed, the old primary would take writes again, and they would be lost.
func promoteInPause(oc, nc redis.Conn, ni redisInfo, steps *handoverSteps) error {
	// A new primary still copying the old one's dataset cannot catch up
	// within a pause: pausing now would only hold writes back for nothing,
	// once a second, for as long as its full sync takes.
	if ni.role() == "slave" && (ni["master_sync_in_progress"] == "1" || ni["master_link_status"] != "up") {
		return fmt.Errorf("the new primary is still syncing from the old one; handing over once it has")
	}
	// The pause and the old primary's offset after it, and a look at the
	// new one, in one round trip each, both under way at once: the pause
	// holds writes back until the old primary follows the new one, and
	// every round trip in it is a client's wait.
	pausedAt := time.Now()
	steps.paused = pausedAt
	asked := send(oc, cmd("CLIENT", "PAUSE", handoverPause.Milliseconds(), "WRITE"), cmd("INFO", "replication"))
	looked := send(nc, cmd("INFO", "replication"))
	replies, err := asked()
	if err != nil {
		if _, refused := err.(redis.Error); refused {
			return fmt.Errorf("pause writes on the old primary: %w", err)
		}
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	// The offset after the pause: every acknowledged write is below it.
	offset := infoOf(replies[1:]).int("master_repl_offset")
	first, err := looked()
	if err != nil {
		return fmt.Errorf("read the new primary's role: %w", err)
	}
	newInfo := infoOf(first)
	// Already a master (a failover while this one was cut off, or a
	// handover that stopped half way): the old one only has to follow,
	// unless that would trade its data for an empty dataset.
	if newInfo.role() == "master" {
		return refuseEmpty(oc, nc)
	}
	caughtUp := time.Now()
	looks, err := awaitCatchUp(nc, offset, newInfo)
	steps.catchUp, steps.offsetLooks = time.Since(caughtUp), looks
	if err != nil {
		return err
	}
	if took := time.Since(pausedAt); took > handoverPause/2 {
		return fmt.Errorf("the handover took %s, too long for the %s pause; abandoned", took.Round(time.Millisecond), handoverPause)
	}
	// Promoted, and unpaused: a pause left on it by an earlier guard must
	// not hold back its first writes.
	if _, err := send(nc, cmd("REPLICAOF", "NO", "ONE"), cmd("CLIENT", "UNPAUSE"))(); err != nil {
		return fmt.Errorf("promote the new primary: %w", err)
	}
	steps.promoted = time.Now()
	return nil
}

// demoteOld has the old primary (oc) follow the new one (nc, announced at
// announce) before its pause ends, so the writes it held back are refused
// (READONLY) rather than acknowledged on the wrong side.
func demoteOld(oc, nc redis.Conn, announce string, promoted bool) error {
	if !promoted {
		// A pause left on the new primary by an earlier guard must not
		// hold back its first writes.
		if _, err := nc.Do("CLIENT", "UNPAUSE"); err != nil {
			return fmt.Errorf("unpause the new primary: %w", err)
		}
	}
	host, port, err := splitHostPort(announce)
	if err != nil {
		return err
	}
	if _, err := oc.Do("REPLICAOF", host, port); err != nil {
		return fmt.Errorf("demote the old primary: %w", err)
	}
	if _, err := oc.Do("CLIENT", "UNPAUSE"); err != nil {
		return fmt.Errorf("unpause the old primary: %w", err)
	}
	// Redis 7.0 can leave the link to the new master, made while writes
	// were paused, stuck: the replica acknowledges but applies nothing more.
	// A new link, made unpaused, resumes with a partial resync. The three
	// steps stay apart: the link begins between the first two, and this
	// kills it once the pause is over. (Sent in one round trip, the kill
	// could come before there was a link to kill; a demoted primary's link
	// was then seen stuck in CI for as long as the test waited.)
	if _, err := oc.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		return fmt.Errorf("renew the old primary's replication link: %w", err)
	}
	return nil
}

// awaitCatchUp waits until the new primary, a replica of old, has applied
// the replication stream up to offset; info is the first look at it. A new
// primary that is already a master has nothing to wait for only if it has
// all of it, which a master cannot show: it must be a replica of old.
// The first look settles it as a rule: the replication stream is quicker
// than the round trips of a pause.
func awaitCatchUp(nc redis.Conn, offset int64, info redisInfo) (looks int, err error) {
	deadline := time.Now().Add(catchUpTimeout)
	last, moved := int64(-1), time.Now()
	for looks = 1; ; looks++ {
		if looks > 1 {
			time.Sleep(time.Millisecond)
			if info, err = infoReplication(nc); err != nil {
				return looks, fmt.Errorf("read the new primary's offset: %w", err)
			}
		}
		at := info.int("slave_repl_offset")
		switch {
		case info.role() != "slave":
			return looks, fmt.Errorf("the new primary runs as %s, not as a replica of the old one: refusing to hand over", info.role())
		case info["master_link_status"] == "up" && at >= offset:
			return looks, nil
		case time.Now().After(deadline):
			return looks, fmt.Errorf("the new primary reached offset %d of %d within %s; not promoting it", at, offset, catchUpTimeout)
		case at != last:
			last, moved = at, time.Now()
		case info["master_link_status"] == "up" && time.Since(moved) > stalledLink:
			// Redis 7.0 can leave a link up that carries nothing (seen
			// after a sub-replica's full sync from this replica): a new
			// link resumes from the backlog with a partial resync.
			if _, err := nc.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
				return looks, fmt.Errorf("renew the new primary's replication link: %w", err)
			}
			moved = time.Now()
		}
	}
}

// send pipelines commands on c and returns a function that reads their
// replies, in order: the first error, a refusal included, ends it.
func send(c redis.Conn, cmds ...[]any) func() ([]any, error) {
	for _, a := range cmds {
		c.Send(a[0].(string), a[1:]...)
	}
	err := c.Flush()
	return func() ([]any, error) {
		if err != nil {
			return nil, err
		}
		replies := make([]any, len(cmds))
		for i := range cmds {
			r, err := c.Receive()
			if err == nil {
				if e, ok := r.(redis.Error); ok {
					err = e
				}
			}
			if err != nil {
				return nil, err
			}
			replies[i] = r
		}
		return replies, nil
	}
}

func cmd(name string, args ...any) []any { return append([]any{name}, args...) }

// stalledLink is how long a replica's offset may stand still, behind the
// offset it must reach, before its replication link is renewed.
const stalledLink = 50 * time.Millisecond

// errEmptyPrimary: following, or becoming, a primary without data while
// data exists elsewhere would replicate the loss to every instance.
var errEmptyPrimary = errors.New("refusing an empty primary")

// refuseEmpty fails when the master at nc holds no key and the server at
// oc, which would follow it and drop its own, holds some.
func refuseEmpty(oc, nc redis.Conn) error {
	mine, err := keyCount(oc)
	if err != nil {
		return err
	}
	theirs, err := keyCount(nc)
	if err != nil {
		return err
	}
	if theirs == 0 && mine > 0 {
		return fmt.Errorf("%w: it holds no key, and following it would drop the %d keys here", errEmptyPrimary, mine)
	}
	return nil
}

// isMaster says whether the server at addr answers as a master.
func isMaster(n redisNode, passwords []string) bool {
	master := false
	withRedis(n.dial, passwords, n.tls, oldPrimaryTimeout, func(c redis.Conn) error {
		info, err := infoReplication(c)
		master = err == nil && info.role() == "master"
		return err
	})
	return master
}

// promote makes the local server a master: the failover, for when the old
// primary has been gone longer than the failover window.
func promote(n redisNode, passwords []string) error {
	return withRedis(n.dial, passwords, n.tls, redisTimeout, func(c redis.Conn) error {
		if _, err := c.Do("REPLICAOF", "NO", "ONE"); err != nil {
			return fmt.Errorf("REPLICAOF NO ONE: %w", err)
		}
		return nil
	})
}

// pauseWrites keeps a master that is not the target from taking writes
// while it has nowhere to hand over to; the pause is renewed while that
// lasts, and ends with the handover.
func pauseWrites(n redisNode, passwords []string) error {
	return withRedis(n.dial, passwords, n.tls, redisTimeout, func(c redis.Conn) error {
		info, err := infoReplication(c)
		if err != nil || info.role() != "master" {
			return err // a replica takes no writes anyway
		}
		_, err = c.Do("CLIENT", "PAUSE", handoverPause.Milliseconds(), "WRITE")
		return err
	})
}

// followPrimary re-points a running replica whose primary moved. It never
// promotes: that is a switchover, and must not lose writes.
func followPrimary(n redisNode, passwords []string, obs *observation, want desiredRole) (moved bool, err error) {
	if want.primary || want.replicaOf == "" || obs == nil || obs.err != nil || obs.role() != "slave" {
		return false, nil
	}
	if obs.info.masterAddr() == canonicalAddr(want.replicaOf) {
		return false, nil
	}
	host, port, err := splitHostPort(want.replicaOf)
	if err != nil {
		return false, err
	}
	err = withRedis(n.dial, passwords, n.tls, redisTimeout, func(c redis.Conn) error {
		if _, err := c.Do("REPLICAOF", host, port); err != nil {
			return fmt.Errorf("REPLICAOF %s %s: %w", host, port, err)
		}
		return nil
	})
	return err == nil, err
}
