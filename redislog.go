package main

// redis-server logs to a pipe the manager reads: each line becomes a
// record of the manager's own log, and the last lines are kept, for they
// say why Redis stopped, which its exit status does not.

import (
	"bufio"
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// forwardLog re-emits redis-server's log lines as the manager's own records.
func (s *supervisor) forwardLog() {
	defer close(s.logDone)
	br := bufio.NewReaderSize(s.logR, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			s.tail.add(line)
			emitRedisLine(s.redisLog, line)
		}
		if err != nil {
			return
		}
	}
}

// emitRedisLine re-emits a line of redis-server's as a record of the
// manager's log.
func emitRedisLine(log *slog.Logger, line string) {
	pid, role, level, msg, ok := splitRedisLine(line)
	if !ok {
		log.Info(line)
		return
	}
	// Redis's verbose and debug lines are there because its loglevel asked
	// for them: they stay visible at Info, with Redis's own level beside.
	lvl := slog.LevelInfo
	if level == '#' {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, msg, "pid", pid, "role", redisLogRoles[role], "redisLevel", redisLogLevels[level])
}

// splitRedisLine splits "pid:role dd Mon yyyy hh:mm:ss.mmm level message";
// ok is false for a line without that prefix.
func splitRedisLine(line string) (pid int, role, level byte, msg string, ok bool) {
	p, rest, found := strings.Cut(line, ":")
	if !found || len(rest) < 29 || rest[1] != ' ' || rest[26] != ' ' || rest[28] != ' ' {
		return 0, 0, 0, "", false
	}
	pid, _ = strconv.Atoi(p)
	return pid, rest[0], rest[27], rest[29:], true
}

var (
	redisLogRoles  = map[byte]string{'M': "master", 'S': "replica", 'C': "child", 'X': "sentinel"}
	redisLogLevels = map[byte]string{'.': "debug", '-': "verbose", '*': "notice", '#': "warning"}
)

// redisTail keeps the last lines of redis-server's log, which say why it
// stopped (see lastWords): its exit status says only that it did.
type redisTail struct {
	mu  sync.Mutex
	buf []string // oldest first
}

const tailLines = 16

func (t *redisTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf[max(0, len(t.buf)+1-tailLines):], line)
}

func (t *redisTail) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = nil
}

func (t *redisTail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}

// lastWordsLine says whether a line of redis-server's output may say why
// it stopped. The line that quotes a configuration line Redis refuses
// (">>> '...'") never does: it may hold a password.
func lastWordsLine(line string) bool {
	if strings.HasPrefix(line, ">>> ") || strings.TrimSpace(line) == "" {
		return false
	}
	_, _, level, _, prefixed := splitRedisLine(line)
	return !prefixed || level == '#'
}

// lastWords is why a redis-server stopped, in its own words: the last two
// lines of its output that may say it, without their prefix, and without
// the secrets given.
func lastWords(out []string, secrets []string) string {
	var words []string
	for _, line := range slices.Backward(out) {
		if len(words) == 2 {
			break
		}
		if !lastWordsLine(line) {
			continue
		}
		if _, _, _, msg, ok := splitRedisLine(line); ok {
			line = msg
		}
		words = append([]string{strings.TrimSpace(line)}, words...)
	}
	return redact(strings.Join(words, "; "), secrets)
}
