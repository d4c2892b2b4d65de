package main

// GET /v1/backup: the snapshot Redis sends a new replica, taken by the
// manager itself. Redis forks once, as for any full sync, and the RDB goes
// from the fork to the HTTP client without touching the disk (unless
// repl-diskless-sync is off, when Redis writes the RDB file it writes for any
// replica). "REPLCONF rdb-only" asks for the snapshot and nothing after it,
// so the write stream does not pile up in an output buffer while a slow
// client reads.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// backup is GET /v1/backup: one at a time, and not under a restart or an
// upgrade, which would cut it (see exclusive); each backup costs Redis a
// fork.
func (h *endpoints) backup(w http.ResponseWriter, r *http.Request) {
	// HTTP/1.0 ends a body by closing the connection, so a backup cut
	// short would look whole; chunked encoding tells them apart.
	if !r.ProtoAtLeast(1, 1) {
		writeJSON(w, http.StatusHTTPVersionNotSupported, map[string]any{"error": "a backup needs HTTP/1.1 or later"})
		return
	}
	if sup := h.sup.snapshot(); !sup.running {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "redis-server is not running"})
		return
	}
	h.streamBackup(w, r)
}

// streamBackup streams a snapshot of this instance's dataset. Its length and
// SHA-256 come as trailers, known only once it has all gone by: Redis
// streams a diskless snapshot without announcing its length. A snapshot
// cut short ends the response without its last chunk, so that no client
// takes a part for the whole.
func (h *endpoints) streamBackup(w http.ResponseWriter, r *http.Request) {
	log := h.log
	began := time.Now()
	rc := http.NewResponseController(w)
	started := false
	res, err := streamSnapshot(r.Context(), localAddr(h.rec.settings.redisPort), h.rec.creds.list(), h.rec.creds.tlsLocal(), func(m snapshotMeta) io.Writer {
		started = true
		hd := w.Header()
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", fmt.Sprintf("%s-%s.rdb", h.rec.settings.podName, began.UTC().Format("20060102T150405Z"))))
		hd.Set("X-Redis-Replication-Id", m.replID)
		hd.Set("X-Redis-Replication-Offset", strconv.FormatInt(m.offset, 10))
		if m.size >= 0 {
			hd.Set("X-Backup-Length", strconv.FormatInt(m.size, 10))
		}
		hd.Set("Trailer", "X-Backup-Sha256, X-Backup-Length")
		w.WriteHeader(http.StatusOK)
		return deadlineWriter{w, rc}
	})
	switch {
	case err != nil && r.Context().Err() != nil:
		log.Info("backup abandoned by the client", "bytes", res.size, "remote", r.RemoteAddr)
	case err != nil && !started:
		log.Warn("backup refused", "error", err, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
	case err != nil:
		log.Error("backup cut short", "error", err, "bytes", res.size, "remote", r.RemoteAddr)
		panic(http.ErrAbortHandler)
	default:
		w.Header().Set("X-Backup-Sha256", res.sha256)
		w.Header().Set("X-Backup-Length", strconv.FormatInt(res.size, 10))
		log.Info("backup streamed", "bytes", res.size, "sha256", res.sha256, "seconds", time.Since(began).Seconds(), "remote", r.RemoteAddr)
	}
}

// deadlineWriter gives each write a minute: a backup may take long, but a
// client that stops reading must not hold Redis's fork for ever.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(time.Minute))
	return d.w.Write(p)
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
func streamSnapshot(ctx context.Context, addr string, passwords []string, tlsc *tls.Config, begin func(snapshotMeta) io.Writer) (snapshotResult, error) {
	var raw net.Conn // the TLS connection with TLS: the payload is read from it, not through the client
	c, err := dialRedis(addr, passwords, tlsc, redisTimeout, redis.DialNetDial(func(network, addr string) (net.Conn, error) {
		conn, err := dialSecure(ctx, network, addr, tlsc, redisTimeout)
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
