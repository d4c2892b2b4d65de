package main

// The observer looks at the local redis-server (PING and INFO in one round
// trip) once a second, faster while it starts or loads, and hands each look
// to the reconciler; for a replica it also reads its primary's offset, for
// the lag.

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

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

func (o *observation) role() string { return o.info.role() }

// Poll intervals: quick while redis-server starts or loads, so that probes
// see progress; relaxed once it serves, at one INFO every 2.5 s, every
// other one on the 5 s beats of the other loops. What must be seen at once
// is told, not polled for: redis-server's exit by the reaper, a handover's
// end and a role change by the reconciler's pokes. Each look wakes an idle
// manager, and was most of what one cost.
const (
	pollServing  = 2500 * time.Millisecond
	pollStarting = 200 * time.Millisecond
	redisTimeout = time.Second
)

// observer owns the manager's connections to Redis for watching it.
type observer struct {
	log   *slog.Logger
	port  int
	creds *credentials // what to offer, and to which primaries: see credentials.isPeer
	out   chan *observation
	poke  chan struct{} // look now: a role just changed
	beat  atomic.Int64  // unix nanoseconds of the last poll

	conn, primary redis.Conn
	primaryAddr   string
}

func newObserver(log *slog.Logger, port int, creds *credentials) *observer {
	o := &observer{log: log, port: port, creds: creds, out: make(chan *observation, 1), poke: make(chan struct{}, 1)}
	o.beat.Store(time.Now().UnixNano())
	return o
}

// lookNow asks for a look at once; it never blocks.
func (o *observer) lookNow() { offer(o.poke, struct{}{}) }

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
			t.Reset(untilBeat(pollServing)) // on the other loops' beats (footprint.go)
		}
	}
}

// poll sends PING and INFO in one round trip.
func (o *observer) poll() *observation {
	obs := &observation{at: time.Now(), primaryOffset: -1}
	if o.conn == nil {
		c, err := dialRedis(localAddr(o.port), o.creds.list(), o.creds.tlsLocal(), redisTimeout)
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
	if master := obs.info.masterAddr(); obs.role() == "slave" && obs.info["master_link_status"] == "up" && o.creds.isPeer(master) {
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
		c, err := dialRedis(addr, o.creds.list(), o.creds.tlsPeer(addr), redisTimeout)
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
