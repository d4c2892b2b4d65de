package main

// The idle manager's footprint: its memory, and how often it wakes.
//
// Memory. Starting touches far more of this binary than
// serving does: every package's init, flag parsing, the client of the API
// server, the first start of redis-server. The kernel maps the binary's
// pages 64 KiB at a time around each one touched (fault-around), so after
// the start nearly the whole binary (10-11 MiB) sits in the manager's
// resident set, though an idle manager runs a small part of it. The heap
// too holds the start's garbage until the next collection.
//
// Once the start's work is done, trimFootprint gives both back: it unmaps
// the binary's read-only pages (madvise MADV_DONTNEED; the kernel maps back
// from the page cache, without a read from disk, whatever runs next) and
// returns the free heap to the system. Writable mappings are never touched:
// dropping one would throw away what the program wrote there.
//
// Wake-ups. An idle manager's CPU is mostly the cost of waking at all (the
// scheduler's and sysmon's work around each timer, system calls that cost
// tens of microseconds in a VM), not the work it then does. Its loops beat
// on their own (the look at Redis, the reaper's sweep, the supervisor's and
// the reconciler's heartbeats, the cluster file's poll), so each beat is a
// beat: a timer whose expiries fall on whole multiples of its period, counted
// from one origin. Loops of the same period, or of periods that divide one
// another, then wake the process once together instead of each on its own.

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// trimAfter is how long after the first look at Redis the start is
// considered done: a replica's first sync and the first status write are.
const trimAfter = 5 * time.Second

// idleGCPercent is GOGC once the start is over, unless GOGC is set. An idle
// manager's live heap is under a megabyte; at the default of 100 the heap
// grows to the runtime's 4 MiB minimum between collections, and that stays
// resident. At 50 the minimum is 2 MiB, for a collection every half minute
// or so when idle. (At 25 the managers collected four times as often in
// the moment of a switchover, while they decode watch events, and the
// handover on the real API server took 17 ms p50 instead of 10.)
const idleGCPercent = 50

// trimFootprint waits for the start's work to end, then trims once.
func trimFootprint(ctx context.Context, observed <-chan struct{}, log *slog.Logger) {
	select {
	case <-observed:
	case <-ctx.Done():
		return
	}
	select {
	case <-time.After(trimAfter):
	case <-ctx.Done():
		return
	}
	before := residentKiB()
	if err := unmapReadOnlyImage(); err != nil {
		log.Warn("cannot release the start's pages of this binary", "error", err)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(idleGCPercent)
	}
	debug.FreeOSMemory()
	log.Info("released what the start used", "residentKiBBefore", before, "residentKiBAfter", residentKiB())
}

// unmapReadOnlyImage drops this binary's read-only mappings (its code and
// constant data) from the page tables. They stay in the page cache, shared
// with any other process running the same binary.
func unmapReadOnlyImage() error {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		return fmt.Errorf("read this process's mappings: %w", err)
	}
	defer maps.Close()
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		start, end, ok := readOnlyMappingOf(sc.Text(), exe)
		if !ok {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, start, end-start, syscall.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("madvise %x-%x: %w", start, end, errno)
		}
	}
	return sc.Err()
}

// readOnlyMappingOf parses one line of /proc/self/maps ("start-end perms
// offset dev inode path") and says whether it maps exe without write
// permission.
func readOnlyMappingOf(line, exe string) (start, end uintptr, ok bool) {
	f := strings.Fields(line)
	if len(f) < 6 || strings.Join(f[5:], " ") != exe || len(f[1]) < 2 || f[1][1] != '-' {
		return 0, 0, false
	}
	from, to, found := strings.Cut(f[0], "-")
	s, err1 := strconv.ParseUint(from, 16, 64)
	e, err2 := strconv.ParseUint(to, 16, 64)
	if !found || err1 != nil || err2 != nil || e <= s {
		return 0, 0, false
	}
	return uintptr(s), uintptr(e), true
}

// beatOrigin is what beats count from: the monotonic clock, so that a
// step of the wall clock does not move them apart.
var beatOrigin = time.Now()

// beat is a loop's periodic timer, aligned on multiples of its period.
type beat struct {
	C      <-chan time.Time
	timer  *time.Timer
	period time.Duration
}

func newBeat(period time.Duration) *beat {
	t := time.NewTimer(untilBeat(period))
	return &beat{C: t.C, timer: t, period: period}
}

// next arms the beat after the one that just came.
func (b *beat) next() { b.timer.Reset(untilBeat(b.period)) }

func (b *beat) stop() { b.timer.Stop() }

// untilBeat is the time left until the next multiple of period. One that is
// a hair away (a beat handled a little early) is skipped: never two beats
// in a row.
func untilBeat(period time.Duration) time.Duration {
	left := period - time.Since(beatOrigin)%period
	if left < period/10 {
		left += period
	}
	return left
}

// residentKiB is this process's resident set (VmRSS), for the log.
func residentKiB() int64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kib
		}
	}
	return 0
}
