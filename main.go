// GOMAXPROCS still follows the container's CPU limit at start; re-reading
// the cgroup every second for a limit that seldom changes would be a large
// part of what an idle manager costs.
//
//go:debug updatemaxprocs=0

// Command redis-operator is the instance manager of a Redis pod: it runs as
// PID 1, supervises redis-server, and follows the pod's RedisCluster.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	// Before anything else, so that a SIGTERM at any moment is a clean stop.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	// The main thread starts redis-server and makes the upgrade's exec
	// (mainthread.go); the manager runs beside it.
	os.Exit(serveMainThread(func() int {
		err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		return exitCode(err, os.Stderr)
	}))
}

// configError is a mistake in how the manager was started: exit 2, one line.
type configError struct{ err error }

func (e configError) Error() string { return e.err.Error() }
func (e configError) Unwrap() error { return e.err }

// errHelp ends a run that only printed its usage, as asked.
var errHelp = errors.New("help requested")

func configErrorf(format string, args ...any) error {
	return configError{fmt.Errorf(format, args...)}
}

func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "redis-operator: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	if errors.As(err, new(configError)) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return configErrorf("usage: redis-operator instance|status|install DEST|version")
	}
	switch args[0] {
	case "version":
		fmt.Fprintf(stdout, "redis-operator %s (commit %s, %s, %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "install":
		switch {
		case len(args) == 2:
			return install(args[1], false)
		case len(args) == 3 && args[1] == "--keep-existing":
			return install(args[2], true)
		}
		return configErrorf("usage: redis-operator install [--keep-existing] DEST")
	case "instance":
		s, err := parseSettings(args[1:], stderr)
		if err != nil || s.checkOnly {
			return err
		}
		return runInstance(ctx, s, stdout)
	case "status":
		return statusCommand(ctx, args[1:], stdout, stderr)
	}
	return configErrorf("unknown command %q: want instance, status, install or version", args[0])
}

// install copies this binary to dest so that a reader of dest never sees a
// partial file, as an init container does into a volume shared with Redis.
// With keep, a binary already at dest stays: an init container that runs
// again in the same pod (its sandbox recreated after a node restart) must
// not put back the image's binary over one an in-place upgrade installed.
// Only a vetted binary is ever at dest, for both write it whole.
func install(dest string, keep bool) error {
	if _, err := os.Stat(dest); keep && err == nil {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("install: find this binary: %w", err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := writeFileAtomic(dest, data, 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// offer puts v into a one-slot channel, replacing a value not yet taken:
// the reader wants the latest state, never a backlog.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}
