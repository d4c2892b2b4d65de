package main

// What Redis says about itself (INFO), and what this pod's role must be.
// Roles come from the RedisCluster object alone: the target primary runs as
// master, every other instance replicates from the address the target
// published in its status entry.

import (
	"context"
	"fmt"
	"log/slog"
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
func (o *observation) role() string  { return o.info["role"] }

// Poll intervals: quick while redis-server starts or loads, so that probes
// see progress; relaxed once it serves, at one INFO a second.
const (
	pollServing  = time.Second
	pollStarting = 200 * time.Millisecond
	redisTimeout = time.Second
)

// observer owns the manager's connections to Redis for watching it.
type observer struct {
	log      *slog.Logger
	port     int
	password func() string
	out      chan<- *observation
	beat     atomic.Int64 // unix nanoseconds of the last poll

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
		c, err := dialRedis(localAddr(o.port), o.password(), redisTimeout)
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
		if _, isReply := err.(redis.Error); !isReply {
			o.dropConn()
		}
		obs.err = err
		return obs
	}
	obs.info = parseInfo(text)
	if obs.role() == "slave" && obs.info["master_link_status"] == "up" {
		obs.primaryOffset = o.primaryOffset(joinHostPort(obs.info["master_host"], obs.info["master_port"]))
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
		c, err := dialRedis(addr, o.password(), redisTimeout)
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
// means the target has not published where to reach it yet.
type desiredRole struct {
	primary   bool
	target    string
	replicaOf string
}

func roleFor(rc *redisCluster, pod string) desiredRole {
	target := rc.targetPrimary()
	if target == pod {
		return desiredRole{primary: true, target: target}
	}
	return desiredRole{target: target, replicaOf: rc.Status.InstancesStatus[target].Address}
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
func followPrimary(addr, password string, obs *observation, want desiredRole) (moved bool, err error) {
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
	c, err := dialRedis(addr, password, redisTimeout)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := c.Do("REPLICAOF", host, port); err != nil {
		return false, fmt.Errorf("REPLICAOF %s %s: %w", host, port, err)
	}
	return true, nil
}
