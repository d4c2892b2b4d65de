package main

// The manager is PID 1 of its pod: it starts redis-server, forwards its log,
// reaps every zombie in the container, restarts redis-server when it dies,
// and stops it gracefully when the pod is told to go.
//
// Exactly one goroutine waits for children (the reaper), because a second
// wait, such as exec.Cmd.Wait, would race it for redis-server's exit status.
// Exactly one goroutine owns redis-server's lifecycle (the supervisor).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Restart backoff: redis-server that dies at once is retried quickly, then
// ever more slowly; one that ran for a healthy minute starts the count anew.
const (
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 30 * time.Second
	healthyRunTime = time.Minute
)

// supervisorState is what the rest of the manager may know of redis-server.
type supervisorState struct {
	wanted      bool      // the manager wants redis-server running
	running     bool      // a redis-server process exists
	pid         int       // its PID while running
	restarts    int       // unexpected exits followed by a restart
	startedAt   time.Time // of the current process
	startedConf string    // redis.conf as it was read at the last start
	retryAt     time.Time // when a crashed redis-server will be started again
	lastExit    string
	exitStatus  int       // of the last exit when it was a non-zero status: see snapshot
	refused     string    // why a restart is being refused
	beat        time.Time // the loop is alive
}

// supervisor owns the redis-server process.
type supervisor struct {
	log         *slog.Logger // the manager's
	redisLog    *slog.Logger // for redis-server's own lines
	reaper      *reaper
	redisServer string
	confPath    string
	dataDir     string
	port        int
	shutdown    time.Duration // budget for a graceful stop
	// restartGuard says why redis-server must not be started again after
	// it died, given the redis.conf it ran on, or "".
	restartGuard func(conf string) string
	// credentials are the passwords redis-server may answer to.
	credentials func() []string

	want     chan bool // latest wish wins
	restarts chan chan error
	pauses   chan supervisorPause

	// A redis-server started by the manager this one replaced, if any.
	adoptProc   *os.Process
	adoptExited <-chan syscall.WaitStatus
	state       atomic.Pointer[supervisorState]

	logR, logW *os.File // one pipe carries the log of every redis-server we start
	logDone    chan struct{}
	tail       redisTail // of the redis-server started last
}

// newSupervisor makes the pipe of redis-server's log, unless it was
// inherited with an adopted redis-server (see adopt).
func newSupervisor(s *supervisor) (*supervisor, error) {
	if s.logR == nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("redis-server log pipe: %w", err)
		}
		s.logR, s.logW = r, w
	}
	s.want = make(chan bool, 1)
	s.restarts = make(chan chan error)
	s.pauses = make(chan supervisorPause)
	s.logDone = make(chan struct{})
	if s.state.Load() == nil {
		s.state.Store(&supervisorState{beat: time.Now()})
	}
	go s.forwardLog()
	return s, nil
}

// adopt takes over a redis-server the previous manager started, before
// run: its PID, the redis.conf it read, and the count of its restarts. One
// that exited in between is reaped by the reaper's first sweep and
// restarted like any that dies.
func (s *supervisor) adopt(h *handoff, reaper *reaper) {
	st := &supervisorState{restarts: h.Restarts, beat: time.Now()}
	if exited, ok := reaper.adopt(h.RedisPID); ok {
		s.adoptProc, _ = os.FindProcess(h.RedisPID)
		s.adoptExited = exited
		st.running, st.pid, st.startedAt, st.startedConf = true, h.RedisPID, h.StartedAt, h.StartedConf
	}
	s.state.Store(st)
}

// setWanted tells the supervisor whether redis-server should run. It never
// blocks: a newer wish replaces one not yet read.
func (s *supervisor) setWanted(run bool) { offer(s.want, run) }

// snapshot is the supervisor's state. The reason of an exit with a
// non-zero status is Redis's own last words, read when asked: they may
// reach the log pipe after the exit is reaped.
func (s *supervisor) snapshot() supervisorState {
	st := *s.state.Load()
	if !st.running && st.exitStatus != 0 {
		conf, _ := parseConf(st.startedConf)
		if words := lastWords(s.tail.lines(), secretsIn(conf)); words != "" {
			st.lastExit += ": " + words
		}
	}
	return st
}

// run owns redis-server until ctx ends, then stops it gracefully.
func (s *supervisor) run(ctx context.Context) {
	st := *s.state.Load()
	publish := func() { st.beat = time.Now(); c := st; s.state.Store(&c) }
	var (
		proc    = s.adoptProc
		exited  = s.adoptExited
		backoff time.Duration
		retry   *time.Timer
		retryC  <-chan time.Time
		beat    = time.NewTicker(5 * time.Second) // well inside loopStale; an idle pod should sleep
	)
	defer beat.Stop()
	retryLater := func() {
		backoff = nextBackoff(backoff)
		st.retryAt = time.Now().Add(backoff)
		retry = time.NewTimer(backoff)
		retryC = retry.C
	}
	// refuse keeps redis-server stopped for now, for the guard's reason.
	refuse := func(why string) {
		if why != st.refused {
			s.log.Error("not starting redis-server again", "reason", why)
		}
		st.refused, st.lastExit, st.exitStatus = why, why, 0
		retryLater()
	}
	start := func() {
		retryC = nil
		p, ch, conf, err := s.startRedis()
		if err != nil {
			s.log.Error("cannot start redis-server", "error", err)
			st.lastExit, st.exitStatus = err.Error(), 0
			exited = nil
			retryLater()
			return
		}
		proc, exited = p, ch
		st.running, st.pid, st.startedAt, st.retryAt, st.exitStatus = true, p.Pid, time.Now(), time.Time{}, 0
		st.startedConf = conf
		s.log.Info("redis-server started", "pid", p.Pid)
	}
	for {
		publish()
		select {
		case <-ctx.Done():
			if proc != nil {
				s.stop(proc, exited, time.Now().Add(s.shutdown), "SHUTDOWN")
				st.running, st.pid = false, 0
				publish()
			}
			s.logW.Close() // lets the forwarder drain and finish
			select {
			case <-s.logDone:
			case <-time.After(time.Second):
			}
			return
		case st.wanted = <-s.want:
			switch {
			case st.wanted && proc == nil && retryC == nil:
				start()
			case !st.wanted && proc != nil:
				s.stop(proc, exited, time.Now().Add(s.shutdown), fenceStop...)
				proc, exited, st.running, st.pid = nil, nil, false, 0
			case !st.wanted && retryC != nil:
				retry.Stop()
				retryC, st.retryAt = nil, time.Time{}
			}
		case p := <-s.pauses:
			p.state <- st
			<-p.resume
		case done := <-s.restarts:
			if !st.wanted || proc == nil {
				done <- errNotRunning
				break
			}
			s.stop(proc, exited, time.Now().Add(s.shutdown), "SHUTDOWN")
			proc, exited, st.running, st.pid = nil, nil, false, 0
			// The guard of a crash holds here too, on the file the new
			// process would read: it may name other data files.
			conf, _ := os.ReadFile(s.confPath)
			if why := s.restartGuard(string(conf)); why != "" {
				refuse(why)
				publish()
				done <- errors.New(why)
				break
			}
			start()
			publish() // before the answer: the caller goes on to watch the new process
			if proc == nil {
				done <- fmt.Errorf("start redis-server again: %s", st.lastExit)
			} else {
				done <- nil
			}
		case ws := <-exited:
			proc.Release()
			ran := time.Since(st.startedAt)
			proc, exited, st.running, st.pid = nil, nil, false, 0
			st.lastExit, st.exitStatus = describeExit(ws), 0
			if ws.Exited() {
				st.exitStatus = ws.ExitStatus()
			}
			if !st.wanted {
				break
			}
			if ran >= healthyRunTime {
				backoff = 0
			}
			retryLater()
			st.restarts++
			s.log.Error("redis-server exited unexpectedly; restarting", "status", st.lastExit, "ranFor", ran.Round(time.Millisecond).String(), "restartIn", backoff.String(), "restarts", st.restarts)
		case <-retryC:
			if !st.wanted || proc != nil {
				break
			}
			if why := s.restartGuard(st.startedConf); why != "" {
				refuse(why)
				break
			}
			st.refused = ""
			start()
		case <-beat.C:
		}
	}
}

// startRedis starts redis-server on the generated redis.conf, in its own
// process group so that a Ctrl-C meant for the manager does not reach it.
func (s *supervisor) startRedis() (*os.Process, <-chan syscall.WaitStatus, string, error) {
	conf, err := os.ReadFile(s.confPath)
	if err != nil {
		return nil, nil, "", fmt.Errorf("read %s: %w", s.confPath, err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, nil, "", err
	}
	defer devnull.Close()
	s.tail.reset()
	p, ch, err := s.reaper.start(func() (*os.Process, error) {
		return os.StartProcess(s.redisServer, []string{s.redisServer, s.confPath}, &os.ProcAttr{
			Dir:   s.dataDir,
			Env:   os.Environ(),
			Files: []*os.File{devnull, s.logW, s.logW},
			Sys:   &syscall.SysProcAttr{Setpgid: true},
		})
	})
	if err != nil {
		return nil, nil, "", fmt.Errorf("start %s: %w", s.redisServer, err)
	}
	return p, ch, string(conf), nil
}

// stop asks redis-server to shut down with the given SHUTDOWN arguments
// (plain SHUTDOWN saves when persistence is on and lets lagging replicas
// catch up), falls back to SIGTERM when it cannot be asked, and only when the
// deadline passes kills it.
//
// A redis-server still loading its dataset gets the same SHUTDOWN: Redis
// makes it SHUTDOWN NOSAVE while it loads (shutdownCommand; a SIGTERM then
// too), so a half-loaded dataset is never saved over the whole one, and it
// stops at once. The manager does not send NOSAVE itself: it can only know
// Redis is loading by asking, and a load that ended between the question
// and the SHUTDOWN would lose every write taken since.
func (s *supervisor) stop(proc *os.Process, exited <-chan syscall.WaitStatus, deadline time.Time, shutdown ...string) {
	s.log.Info("stopping redis-server", "pid", proc.Pid, "command", strings.Join(shutdown, " "), "budget", time.Until(deadline).Round(time.Millisecond).String())
	asked := make(chan error, 1)
	go func() { asked <- s.askShutdown(deadline, shutdown) }()
	beat := time.NewTicker(time.Second)
	defer beat.Stop()
	for {
		select {
		case <-beat.C:
			s.touch()
		case ws := <-exited:
			s.log.Info("redis-server stopped", "pid", proc.Pid, "status", describeExit(ws))
			proc.Release()
			return
		case err := <-asked:
			asked = nil
			if err != nil {
				s.log.Warn("SHUTDOWN failed; sending SIGTERM", "error", err)
				proc.Signal(syscall.SIGTERM)
			}
		case <-time.After(time.Until(deadline)):
			s.log.Error("redis-server did not stop within the shutdown budget; killing it", "pid", proc.Pid)
			proc.Kill()
			ws := <-exited
			s.log.Warn("redis-server killed", "pid", proc.Pid, "status", describeExit(ws))
			proc.Release()
			return
		}
	}
}

// askShutdown sends SHUTDOWN. Redis closes the connection instead of
// answering when it goes, so an EOF is success.
func (s *supervisor) askShutdown(deadline time.Time, args []string) error {
	c, err := dialRedis(localAddr(s.port), s.credentials(), time.Until(deadline))
	if err != nil {
		return err
	}
	defer c.Close()
	cmdArgs := make([]any, 0, len(args)-1)
	for _, a := range args[1:] {
		cmdArgs = append(cmdArgs, a)
	}
	_, err = c.Do(args[0], cmdArgs...)
	if err == nil || errors.Is(err, io.EOF) || isConnReset(err) {
		return nil
	}
	return err
}

// touch keeps the heartbeat fresh while the run loop waits in a stop.
func (s *supervisor) touch() {
	c := *s.state.Load()
	c.beat = time.Now()
	s.state.Store(&c)
}

// errNotRunning refuses a restart of a redis-server that is not meant to
// run: fenced, waiting, or between crashes.
var errNotRunning = errors.New("redis-server is not running")

// restart stops redis-server gracefully and starts it again on redis.conf
// as it now is: how parameters that Redis reads only at start are applied.
// The stop is the same as the pod's: SHUTDOWN saves where persistence is on.
func (s *supervisor) restart(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case s.restarts <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// supervisorPause holds the supervisor still while an upgrade writes its
// state down: it starts and stops nothing until resumed.
type supervisorPause struct {
	state  chan supervisorState
	resume chan struct{}
}

// pause waits at most wait for the supervisor to hold still; false when it
// is busy (stopping, starting, restarting redis-server) or stopping.
func (s *supervisor) pause(ctx context.Context, wait time.Duration) (supervisorState, func(), bool) {
	p := supervisorPause{state: make(chan supervisorState, 1), resume: make(chan struct{})}
	select {
	case s.pauses <- p:
	case <-ctx.Done():
		return supervisorState{}, nil, false
	case <-time.After(wait):
		return supervisorState{}, nil, false
	}
	return <-p.state, func() { close(p.resume) }, true
}

// releaseLog stops forwarding redis-server's log and returns its pipe for
// the next manager; resume forwards again, should the exec not happen.
// What the pipe holds and was not read yet stays in it for the next reader.
func (s *supervisor) releaseLog() (r, w *os.File, resume func()) {
	s.logR.SetReadDeadline(time.Now())
	<-s.logDone
	return s.logR, s.logW, func() {
		s.logR.SetReadDeadline(time.Time{})
		s.logDone = make(chan struct{})
		go s.forwardLog()
	}
}

func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return backoffMin
	}
	return min(2*d, backoffMax)
}
