package main

// The manager's Redis client: connections that offer every password the
// server may answer to, with a deadline on every step, and INFO read as
// key/value pairs.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
)

// dialRedis connects as the manager's own user (users.go) and
// authenticates with the first of passwords that works ("" for none), with
// a deadline on every step. The manager offers every password the server
// may answer to: during a rotation it accepts two, and a restarted server
// may already have the new one only. No passwords: the caller
// authenticates.
//
// With tlsc the connection is TLS (see dialSecure); nil is plaintext.
func dialRedis(addr string, passwords []string, tlsc *tls.Config, timeout time.Duration, opts ...redis.DialOption) (redis.Conn, error) {
	return dialRedisAs(operatorUser, addr, passwords, tlsc, timeout, opts...)
}

// dialRedisAs is dialRedis as user; "" is the default user.
func dialRedisAs(user, addr string, passwords []string, tlsc *tls.Config, timeout time.Duration, opts ...redis.DialOption) (redis.Conn, error) {
	timeout = max(timeout, 10*time.Millisecond)
	c, err := redis.Dial("tcp", addr, append([]redis.DialOption{
		redis.DialNetDial(func(network, addr string) (net.Conn, error) {
			return dialSecure(context.Background(), network, addr, tlsc, timeout)
		}),
		redis.DialReadTimeout(timeout),
		redis.DialWriteTimeout(timeout)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	if len(passwords) == 0 {
		return c, nil
	}
	for _, pw := range passwords {
		err = authenticate(c, user, pw)
		if _, refused := err.(redis.Error); !refused {
			break // accepted, or the connection failed
		}
	}
	if err != nil {
		c.Close()
		// Redis's answer names no password; say so rather than quote it.
		return nil, fmt.Errorf("authenticate to redis at %s: %w", addr, err)
	}
	return c, nil
}

// authenticate logs c in as user with pw. The manager's user is offered
// the default user's way too when refused: a redis-server started by a
// manager older than that user has it only once this manager gave it
// (syncUsers), and until then the default user has the same password.
func authenticate(c redis.Conn, user, pw string) error {
	if user != "" {
		_, err := c.Do("AUTH", user, pw)
		if _, refused := err.(redis.Error); !refused || user != operatorUser {
			return err
		}
	}
	if pw == "" {
		_, err := c.Do("PING")
		return err
	}
	_, err := c.Do("AUTH", pw)
	return err
}

// dialSecure dials addr and, with tlsc, completes a TLS handshake within
// timeout: every connection the manager makes to Redis goes through it.
func dialSecure(ctx context.Context, network, addr string, tlsc *tls.Config, timeout time.Duration) (net.Conn, error) {
	conn, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
	if err != nil || tlsc == nil {
		return conn, err
	}
	tc := tls.Client(conn, tlsc)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// withRedis runs fn on a connection of its own, closed after.
func withRedis(addr string, passwords []string, tlsc *tls.Config, timeout time.Duration, fn func(redis.Conn) error) error {
	c, err := dialRedis(addr, passwords, tlsc, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

func localAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// redisInfo is INFO's output as key/value pairs; keys are unique across
// sections, so the sections themselves are dropped.
type redisInfo map[string]string

// parseInfo reads INFO's "key:value" lines, skipping "# Section" headers.
func parseInfo(text string) redisInfo {
	// Sized for its lines at once: an INFO of some 200 lines every look
	// would otherwise leave the map's smaller sizes behind as garbage.
	info := make(redisInfo, strings.Count(text, "\n"))
	for line := range strings.Lines(text) {
		line = strings.TrimRight(line, "\r\n")
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

// keyCount is the number of keys in all databases, from INFO keyspace.
func keyCount(c redis.Conn) (int64, error) {
	text, err := redis.String(c.Do("INFO", "keyspace"))
	if err != nil {
		return 0, err
	}
	return parseInfo(text).keys(), nil
}

// splitHostPort splits "host:port" as Redis announces it; an IPv6 host may be
// bracketed or bare, since Redis itself writes it bare.
func splitHostPort(addr string) (host, port string, err error) {
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 || i == len(addr)-1 {
		return "", "", fmt.Errorf("%q is not host:port", addr)
	}
	host, port = strings.Trim(addr[:i], "[]"), addr[i+1:]
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", "", fmt.Errorf("%q has no valid port", addr)
	}
	return host, port, nil
}

// masterAddr is the address of the master a replica follows, as INFO
// gives it: net.JoinHostPort of master_host and master_port.
func (i redisInfo) masterAddr() string { return net.JoinHostPort(i["master_host"], i["master_port"]) }

// canonicalAddr writes a host:port as net.JoinHostPort does, for comparison.
func canonicalAddr(addr string) string {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, port)
}
