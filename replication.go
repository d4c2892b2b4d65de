package main

// What Redis says about itself (INFO), and what this pod's role must be.
// Roles come from the RedisCluster object alone: the target primary runs as
// master, every other instance replicates from the address the target
// published in its status entry.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// redisInfo is INFO's output as key/value pairs; keys are unique across
// sections, so the sections themselves are dropped.
type redisInfo map[string]string

// parseInfo reads INFO's "key:value" lines, skipping "# Section" headers.
func parseInfo(text string) redisInfo {
	info := redisInfo{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			info[k] = v
		}
	}
	return info
}

func (i redisInfo) role() string { return i["role"] }

func (i redisInfo) int(key string) int64 {
	n, _ := strconv.ParseInt(i[key], 10, 64)
	return n
}

func (i redisInfo) float(key string) float64 {
	f, _ := strconv.ParseFloat(i[key], 64)
	return f
}

// observation is one look at the local redis-server.
type observation struct {
	at      time.Time
	err     error // INFO got no answer
	pingErr error // PING was refused, e.g. LOADING
	info    redisInfo
	// primaryOffset is the replication offset of the master this replica
	// follows, read from the master itself, or -1 when unknown.
	primaryOffset int64
}

func (o *observation) loading() bool { return o.info["loading"] == "1" }
func (o *observation) role() string  { return o.info.role() }

// Poll intervals: quick while redis-server starts or loads, so that probes
// see progress; relaxed once it serves, at one INFO a second.
const (
	pollServing  = time.Second
	pollStarting = 200 * time.Millisecond
	redisTimeout = time.Second
)

// observer owns the manager's connections to Redis for watching it.
type observer struct {
	log       *slog.Logger
	port      int
	passwords func() []string
	isPeer    func(addr string) bool // whether the manager may dial addr: see reconciler.isPeer
	out       chan<- *observation
	poke      chan struct{} // look now: a role just changed
	beat      atomic.Int64  // unix nanoseconds of the last poll

	conn, primary         redis.Conn
	primaryAddr           string
	lastSuccess, lastPoll time.Time
}

func (o *observer) run(ctx context.Context) {
	defer func() {
		if o.conn != nil {
			o.conn.Close()
		}
		if o.primary != nil {
			o.primary.Close()
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-o.poke:
		}
		obs := o.poll()
		o.beat.Store(time.Now().UnixNano())
		select {
		case o.out <- obs:
		case <-ctx.Done():
			return
		}
		if obs.err != nil || obs.pingErr != nil || obs.loading() {
			t.Reset(pollStarting)
		} else {
			t.Reset(pollServing)
		}
	}
}

// poll sends PING and INFO in one round trip.
func (o *observer) poll() *observation {
	obs := &observation{at: time.Now(), primaryOffset: -1}
	if o.conn == nil {
		c, err := dialRedis(localAddr(o.port), o.passwords(), redisTimeout)
		if err != nil {
			obs.err = err
			return obs
		}
		o.conn = c
	}
	o.conn.Send("PING")
	o.conn.Send("INFO")
	if err := o.conn.Flush(); err != nil {
		o.dropConn()
		obs.err = err
		return obs
	}
	if _, err := o.conn.Receive(); err != nil {
		if _, isReply := err.(redis.Error); !isReply {
			o.dropConn()
			obs.err = err
			return obs
		}
		obs.pingErr = err
	}
	text, err := redis.String(o.conn.Receive())
	if err != nil {
		// A connection made before the password was known (a manager
		// that adopted a running redis-server) must be made again.
		if re, isReply := err.(redis.Error); !isReply || strings.HasPrefix(string(re), "NOAUTH") {
			o.dropConn()
		}
		obs.err = err
		return obs
	}
	obs.info = parseInfo(text)
	if master := joinHostPort(obs.info["master_host"], obs.info["master_port"]); obs.role() == "slave" && obs.info["master_link_status"] == "up" && o.isPeer(master) {
		obs.primaryOffset = o.primaryOffset(master)
	}
	return obs
}

func (o *observer) dropConn() {
	if o.conn != nil {
		o.conn.Close()
		o.conn = nil
	}
}

// primaryOffset asks the master this replica follows for its offset. It is
// read after the replica's own, so the lag it gives errs on the high side.
func (o *observer) primaryOffset(addr string) int64 {
	if o.primary != nil && o.primaryAddr != addr {
		o.primary.Close()
		o.primary = nil
	}
	if o.primary == nil {
		c, err := dialRedis(addr, o.passwords(), redisTimeout)
		if err != nil {
			o.log.Debug("cannot reach primary for its offset", "address", addr, "error", err)
			return -1
		}
		o.primary, o.primaryAddr = c, addr
	}
	text, err := redis.String(o.primary.Do("INFO", "replication"))
	if err != nil {
		o.primary.Close()
		o.primary = nil
		return -1
	}
	info := parseInfo(text)
	if _, ok := info["master_repl_offset"]; !ok {
		return -1
	}
	return info.int("master_repl_offset")
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

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

// currentPrimaryFile is status.currentPrimary in local mode, beside the
// status entries: the cluster file holds no status.
const currentPrimaryFile = "currentPrimary"

// claimCurrentPrimary records that pod holds the primary role, as the
// primary's status patch does in the object.
func claimCurrentPrimary(statusDir, pod string) error {
	path := filepath.Join(statusDir, currentPrimaryFile)
	if b, err := os.ReadFile(path); err == nil && string(b) == pod+"\n" {
		return nil // the claim stands; each status write need not sync it again
	}
	return writeFileAtomic(path, []byte(pod+"\n"), 0o644)
}

func readCurrentPrimary(statusDir string) string {
	b, _ := os.ReadFile(filepath.Join(statusDir, currentPrimaryFile))
	return strings.TrimSpace(string(b))
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

// canonicalAddr writes a host:port the way joinHostPort() does, for comparison.
func canonicalAddr(addr string) string {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return addr
	}
	return joinHostPort(host, port)
}

// followPrimary re-points a running replica whose primary moved. It never
// promotes: that is a switchover, and must not lose writes.
func followPrimary(addr string, passwords []string, obs *observation, want desiredRole) (moved bool, err error) {
	if want.primary || want.replicaOf == "" || obs == nil || obs.err != nil || obs.role() != "slave" {
		return false, nil
	}
	if joinHostPort(obs.info["master_host"], obs.info["master_port"]) == canonicalAddr(want.replicaOf) {
		return false, nil
	}
	host, port, err := splitHostPort(want.replicaOf)
	if err != nil {
		return false, err
	}
	err = withRedis(addr, passwords, redisTimeout, func(c redis.Conn) error {
		if _, err := c.Do("REPLICAOF", host, port); err != nil {
			return fmt.Errorf("REPLICAOF %s %s: %w", host, port, err)
		}
		return nil
	})
	return err == nil, err
}

// Moving the primary role. The target primary's manager drives it, and so
// does the old primary's, with the same steps, so that either one alone
// suffices; every step can be repeated without harm.
//
// A planned switchover loses no acknowledged write: the old master stops
// taking writes (CLIENT PAUSE WRITE), its offset is read, the new one is
// promoted only once it has applied everything up to that offset, and the
// old one becomes its replica before the pause ends, so the writes it held
// back are refused (READONLY) rather than acknowledged on the wrong side.

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

// redisNode is one instance as the manager reaches it: the address it
// dials, and the address the other instances use.
type redisNode struct {
	dial, announce string
}

// handover moves the primary role from old to new.
func handover(old, new redisNode, passwords []string) error {
	oc, err := dialRedis(old.dial, passwords, oldPrimaryTimeout)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	defer oc.Close()
	nc, err := dialRedis(new.dial, passwords, redisTimeout)
	if err != nil {
		return fmt.Errorf("connect to the new primary: %w", err)
	}
	defer nc.Close()

	oldInfo, err := infoReplication(oc)
	if err != nil {
		return fmt.Errorf("%w: %v", errUnreachable, err)
	}
	if oldInfo.role() == "master" {
		// A new primary still copying the old one's dataset cannot catch up
		// within a pause: pausing now would only hold writes back for
		// nothing, once a second, for as long as its full sync takes.
		if ni, err := infoReplication(nc); err == nil && ni.role() == "slave" && (ni["master_sync_in_progress"] == "1" || ni["master_link_status"] != "up") {
			return fmt.Errorf("the new primary is still syncing from the old one; handing over once it has")
		}
		pausedAt := time.Now()
		if _, err := oc.Do("CLIENT", "PAUSE", handoverPause.Milliseconds(), "WRITE"); err != nil {
			return fmt.Errorf("pause writes on the old primary: %w", err)
		}
		// Promote only well inside the pause: once it lapsed, the old
		// primary takes writes again, and they would be lost.
		inPause := func() error {
			if time.Since(pausedAt) > handoverPause/2 {
				return fmt.Errorf("the handover took %s, too long for the %s pause; abandoned", time.Since(pausedAt).Round(time.Millisecond), handoverPause)
			}
			return nil
		}
		// The offset after the pause: every acknowledged write is below it.
		if oldInfo, err = infoReplication(oc); err != nil {
			return fmt.Errorf("%w: %v", errUnreachable, err)
		}
		newInfo, err := infoReplication(nc)
		if err != nil {
			return fmt.Errorf("read the new primary's role: %w", err)
		}
		// Already a master (a failover while this one was cut off, or a
		// handover that stopped half way): the old one only has to follow,
		// unless that would trade its data for an empty dataset.
		if newInfo.role() == "master" {
			if err := refuseEmpty(oc, nc); err != nil {
				return err
			}
		} else {
			if err := awaitCatchUp(nc, oldInfo.int("master_repl_offset")); err != nil {
				return err
			}
			if err := inPause(); err != nil {
				return err
			}
			if _, err := nc.Do("REPLICAOF", "NO", "ONE"); err != nil {
				return fmt.Errorf("promote the new primary: %w", err)
			}
		}
	} else if newInfo, err := infoReplication(nc); err != nil || newInfo.role() != "master" {
		// Neither is master: the role is held elsewhere, not lost.
		return errOldNotMaster
	}
	// A pause left on the new primary by an earlier guard must not hold
	// back its first writes.
	if _, err := nc.Do("CLIENT", "UNPAUSE"); err != nil {
		return fmt.Errorf("unpause the new primary: %w", err)
	}
	host, port, err := splitHostPort(new.announce)
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
	// A new link, made unpaused, resumes with a partial resync.
	if _, err := oc.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		return fmt.Errorf("renew the old primary's replication link: %w", err)
	}
	return nil
}

// awaitCatchUp waits until the new primary, a replica of old, has applied
// the replication stream up to offset. A new primary that is already a
// master has nothing to wait for only if it has all of it, which a master
// cannot show: it must be a replica of old.
func awaitCatchUp(nc redis.Conn, offset int64) error {
	deadline := time.Now().Add(catchUpTimeout)
	last, moved := int64(-1), time.Now()
	for {
		info, err := infoReplication(nc)
		if err != nil {
			return fmt.Errorf("read the new primary's offset: %w", err)
		}
		at := info.int("slave_repl_offset")
		switch {
		case info.role() != "slave":
			return fmt.Errorf("the new primary runs as %s, not as a replica of the old one: refusing to hand over", info.role())
		case info["master_link_status"] == "up" && at >= offset:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("the new primary reached offset %d of %d within %s; not promoting it", at, offset, catchUpTimeout)
		case at != last:
			last, moved = at, time.Now()
		case info["master_link_status"] == "up" && time.Since(moved) > stalledLink:
			// Redis 7.0 can leave a link up that carries nothing (seen
			// after a sub-replica's full sync from this replica): a new
			// link resumes from the backlog with a partial resync.
			if _, err := nc.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
				return fmt.Errorf("renew the new primary's replication link: %w", err)
			}
			moved = time.Now()
		}
		time.Sleep(time.Millisecond)
	}
}

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

// keyCount is the number of keys in all databases, from INFO keyspace.
func keyCount(c redis.Conn) (int64, error) {
	text, err := redis.String(c.Do("INFO", "keyspace"))
	if err != nil {
		return 0, err
	}
	return parseInfo(text).keys(), nil
}

// keys sums "dbN:keys=K,expires=...,avg_ttl=..." over the databases.
func (i redisInfo) keys() int64 {
	var n int64
	for k, v := range i {
		if !strings.HasPrefix(k, "db") {
			continue
		}
		for _, f := range strings.Split(v, ",") {
			if c, ok := strings.CutPrefix(f, "keys="); ok {
				k, _ := strconv.ParseInt(c, 10, 64)
				n += k
			}
		}
	}
	return n
}

func infoReplication(c redis.Conn) (redisInfo, error) {
	text, err := redis.String(c.Do("INFO", "replication"))
	if err != nil {
		return nil, err
	}
	return parseInfo(text), nil
}

// isMaster says whether the server at addr answers as a master.
func isMaster(addr string, passwords []string) bool {
	master := false
	withRedis(addr, passwords, oldPrimaryTimeout, func(c redis.Conn) error {
		info, err := infoReplication(c)
		master = err == nil && info.role() == "master"
		return err
	})
	return master
}

// promote makes the local server a master: the failover, for when the old
// primary has been gone longer than the failover window.
func promote(addr string, passwords []string) error {
	return withRedis(addr, passwords, redisTimeout, func(c redis.Conn) error {
		if _, err := c.Do("REPLICAOF", "NO", "ONE"); err != nil {
			return fmt.Errorf("REPLICAOF NO ONE: %w", err)
		}
		return nil
	})
}

// pauseWrites keeps a master that is not the target from taking writes
// while it has nowhere to hand over to; the pause is renewed while that
// lasts, and ends with the handover.
func pauseWrites(addr string, passwords []string) error {
	return withRedis(addr, passwords, redisTimeout, func(c redis.Conn) error {
		info, err := infoReplication(c)
		if err != nil || info.role() != "master" {
			return err // a replica takes no writes anyway
		}
		_, err = c.Do("CLIENT", "PAUSE", handoverPause.Milliseconds(), "WRITE")
		return err
	})
}

// A backup is the snapshot Redis sends a new replica, taken by the manager
// itself: Redis forks once, as for any full sync, and the RDB goes from the
// fork to the HTTP client without touching the disk (unless
// repl-diskless-sync is off, when Redis writes the RDB file it writes for any
// replica). "REPLCONF rdb-only" asks for the snapshot and nothing after it,
// so the write stream does not pile up in an output buffer while a slow
// client reads.

// snapshotMeta describes a snapshot once Redis has begun to send it.
type snapshotMeta struct {
	replID string
	offset int64 // the replication offset the snapshot is at
	size   int64 // -1 when Redis streams it with an end mark (diskless)
}

// snapshotResult is what was streamed.
type snapshotResult struct {
	size   int64
	sha256 string
}

// redisRefusal is Redis's answer refusing a sync, e.g. NOMASTERLINK on a
// replica whose link is down.
type redisRefusal string

func (r redisRefusal) Error() string { return "redis-server refuses the sync: " + string(r) }

// replTimeout is how long a sync may go without a byte: Redis's own
// repl-timeout default. Redis sends a newline every second while it
// prepares the snapshot.
const replTimeout = 60 * time.Second

// streamSnapshot has the redis-server at addr send a full sync and copies
// its RDB into the writer begin returns, which is called once, when the
// snapshot starts. An error before begin means nothing was written.
func streamSnapshot(ctx context.Context, addr string, passwords []string, begin func(snapshotMeta) io.Writer) (snapshotResult, error) {
	var raw net.Conn
	dialer := &net.Dialer{Timeout: redisTimeout}
	c, err := dialRedis(addr, passwords, redisTimeout, redis.DialNetDial(func(network, addr string) (net.Conn, error) {
		conn, err := dialer.DialContext(ctx, network, addr)
		raw = conn
		return conn, err
	}))
	if err != nil {
		return snapshotResult{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	// Redis before 7.0 knows no rdb-only; the stream that follows the
	// snapshot is then left unread.
	if _, err := c.Do("REPLCONF", "rdb-only", "1"); err != nil && !errors.As(err, new(redis.Error)) {
		return snapshotResult{}, fmt.Errorf("sync: %w", err)
	}
	if _, err := c.Do("REPLCONF", "capa", "eof", "capa", "psync2"); err != nil {
		return snapshotResult{}, fmt.Errorf("sync: %w", err)
	}
	// From here on the protocol is not request and answer: bare newlines
	// keep the link alive, then the payload comes.
	raw.SetWriteDeadline(time.Now().Add(redisTimeout))
	if _, err := io.WriteString(raw, "PSYNC ? -1\r\n"); err != nil {
		return snapshotResult{}, fmt.Errorf("sync: %w", err)
	}
	br := bufio.NewReaderSize(idleReader{raw}, 64<<10)
	line, err := syncLine(br)
	if err != nil {
		return snapshotResult{}, err
	}
	var meta snapshotMeta
	if f := strings.Fields(line); len(f) == 3 && f[0] == "+FULLRESYNC" {
		meta.replID = f[1]
		meta.offset, _ = strconv.ParseInt(f[2], 10, 64)
	} else {
		return snapshotResult{}, fmt.Errorf("sync: unexpected answer %q", line)
	}
	if line, err = syncLine(br); err != nil {
		return snapshotResult{}, err
	}
	var mark []byte
	switch {
	case strings.HasPrefix(line, "$EOF:") && len(line) == 5+40:
		mark, meta.size = []byte(line[5:]), -1
	case strings.HasPrefix(line, "$"):
		if meta.size, err = strconv.ParseInt(line[1:], 10, 64); err != nil || meta.size < 0 {
			return snapshotResult{}, fmt.Errorf("sync: unexpected payload header %q", line)
		}
	default:
		return snapshotResult{}, fmt.Errorf("sync: unexpected payload header %q", line)
	}

	h := sha256.New()
	out := &countingWriter{w: io.MultiWriter(begin(meta), h)}
	if mark == nil {
		_, err = io.CopyN(out, br, meta.size)
	} else {
		err = copyUntilMark(out, br, mark)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return snapshotResult{size: out.n}, fmt.Errorf("sync: after %d bytes: %w", out.n, err)
	}
	return snapshotResult{size: out.n, sha256: hex.EncodeToString(h.Sum(nil))}, nil
}

// syncLine reads the next line of a sync that is not a keep-alive newline.
func syncLine(br *bufio.Reader) (string, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("sync: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
		case line[0] == '-':
			return "", redisRefusal(line[1:])
		default:
			return line, nil
		}
	}
}

// copyUntilMark copies a diskless payload, which ends with the 40-byte
// mark it was announced with. The last bytes read are held back until it
// is clear they are not the mark.
func copyUntilMark(w io.Writer, r io.Reader, mark []byte) error {
	buf := make([]byte, 64<<10+len(mark))
	held := 0
	for {
		n, err := r.Read(buf[held:])
		held += n
		if i := bytes.Index(buf[:held], mark); i >= 0 {
			_, werr := w.Write(buf[:i])
			return werr
		}
		if keep := len(mark) - 1; held > keep {
			if _, werr := w.Write(buf[:held-keep]); werr != nil {
				return werr
			}
			held = copy(buf, buf[held-keep:held])
		}
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		} else if err != nil {
			return err
		}
	}
}

// idleReader renews the read deadline before each read: a sync may take
// long, but not stand still.
type idleReader struct{ c net.Conn }

func (r idleReader) Read(p []byte) (int, error) {
	r.c.SetReadDeadline(time.Now().Add(replTimeout))
	return r.c.Read(p)
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
