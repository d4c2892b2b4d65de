package main

// The supervisor owns redis-server's lifecycle: it starts it when the
// reconciler wants it to run, restarts it when it dies (with backoff, and
// not when it would come back as an empty primary), restarts it when the
// operator asks, and stops it gracefully when the pod is told to go or a
// fence comes; SIGKILL is only the last step of a stop that ran out of
// time. Exactly one goroutine runs it; the reaper (reaper.go) does every
// wait for its exit.

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

// supervisorState is what the rest of the manager may know of redis-server.
type supervisorState struct {
	wanted      bool      // the manager wants redis-server running
	running     bool      // a redis-server process exists
	pid         int       // its PID while running
	restarts    int       // unexpected exits followed by a restart
	startedAt   time.Time // of the current process
	startedConf string    // redis.conf as it was read at the last start
	startedTLS  bool      // it has redis-server serve TLS (spec.tls)
	retryAt     time.Time // when a crashed redis-server will be started again
	lastExit    string
	exitStatus  int       // of the last exit when it was a non-zero status: see snapshot
	refused     string    // why a restart is being refused
	beat        time.Time // the loop is alive
}

// supervisor owns the redis-server process: one goroutine (run) starts,
// stops and restarts it, and publishes its state for every other.
type supervisor struct {
	log         *slog.Logger // the manager's
	redisLog    *slog.Logger // for redis-server's own lines
	reaper      *reaper
	creds       *credentials
	redisServer string
	confPath    string
	dataDir     string
	port        int
	shutdown    time.Duration // budget for a graceful stop
	// guard says why redis-server must not be started again after it
	// died, given the redis.conf it ran on, or "".
	guard func(conf string) string

	want     chan bool // latest wish wins
	restarts chan chan error
	pauses   chan supervisorPause
	state    atomic.Pointer[supervisorState]

	// Owned by run's goroutine (and by stopAdopted, before run).
	st         supervisorState
	proc       *os.Process
	exited     <-chan syscall.WaitStatus
	retry      backoff
	retryTimer *time.Timer
	retryC     <-chan time.Time

	logR, logW *os.File // one pipe carries the log of every redis-server we start
	logDone    chan struct{}
	tail       redisTail // of the redis-server started last
}

// newSupervisor makes the pipe of redis-server's log and starts forwarding
// it. With a handoff, it adopts the redis-server the previous manager
// started, and its log pipe; it must then be made before the reaper first
// sweeps, which would reap that redis-server as an orphan.
func newSupervisor(s *settings, log, redisLog *slog.Logger, reaper *reaper, creds *credentials, guard func(conf string) string, inherited *handoff) (*supervisor, error) {
	sup := &supervisor{log: log, redisLog: redisLog, reaper: reaper, creds: creds, guard: guard,
		redisServer: s.redisServer, confPath: s.confPath(), dataDir: s.dataDir, port: s.redisPort, shutdown: s.shutdownTimeout,
		want: make(chan bool, 1), restarts: make(chan chan error), pauses: make(chan supervisorPause),
		retry: newBackoff(), logDone: make(chan struct{})}
	if inherited != nil {
		sup.logR, sup.logW = inheritedFile(inherited.LogR, "redis-log"), inheritedFile(inherited.LogW, "redis-log-w")
		sup.adopt(inherited)
	} else {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("redis-server log pipe: %w", err)
		}
		sup.logR, sup.logW = r, w
	}
	sup.publish()
	go sup.forwardLog()
	return sup, nil
}

// adopt takes over a redis-server the previous manager started: its PID,
// the redis.conf it read, and the count of its restarts. One that exited
// in between is reaped by the reaper's first sweep and restarted like any
// that dies.
func (s *supervisor) adopt(h *handoff) {
	s.st.restarts = h.Restarts
	if exited, ok := s.reaper.adopt(h.RedisPID); ok {
		s.proc, _ = os.FindProcess(h.RedisPID)
		s.exited = exited
		s.st.running, s.st.pid, s.st.startedAt, s.st.startedConf = true, h.RedisPID, h.StartedAt, h.StartedConf
		s.st.startedTLS = servesTLS(h.StartedConf)
		s.creds.setLocalTLS(s.st.startedTLS)
	}
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

// publish makes the loop's state what snapshot returns.
func (s *supervisor) publish() {
	s.st.beat = time.Now()
	c := s.st
	s.state.Store(&c)
}

// run owns redis-server until ctx ends, then stops it gracefully.
func (s *supervisor) run(ctx context.Context) {
	beat := newBeat(5 * time.Second) // well inside loopStale; an idle pod should sleep
	defer beat.stop()
	for {
		s.publish()
		select {
		case <-ctx.Done():
			s.stopForGood()
			return
		case s.st.wanted = <-s.want:
			s.follow()
		case p := <-s.pauses:
			p.state <- s.st
			<-p.resume
		case done := <-s.restarts:
			done <- s.restartNow()
		case ws := <-s.exited:
			s.died(ws)
		case <-s.retryC:
			s.retryStart()
		case <-beat.C:
			beat.next()
		}
	}
}

// follow starts or stops redis-server as the latest wish says.
func (s *supervisor) follow() {
	if !s.st.wanted && s.proc == nil {
		s.stopStrayIfAny() // not wanted (fenced): nor is one a dead manager left (portholder.go)
	}
	switch {
	case s.st.wanted && s.proc == nil && s.retryC == nil:
		s.start()
	case !s.st.wanted && s.proc != nil:
		s.stopNow(fenceStop...)
	case !s.st.wanted && s.retryC != nil:
		s.retryTimer.Stop()
		s.retryC, s.st.retryAt = nil, time.Time{}
	}
}

// start starts redis-server, or schedules a retry when it cannot.
func (s *supervisor) start() {
	s.retryC = nil
	if why := s.clearPort(); why != "" {
		s.refuse(why)
		return
	}
	s.st.refused = ""
	p, ch, conf, err := s.startRedis()
	if err != nil {
		s.log.Error("cannot start redis-server", "error", err)
		s.st.lastExit, s.st.exitStatus = err.Error(), 0
		s.exited = nil
		s.retryLater()
		return
	}
	s.proc, s.exited = p, ch
	s.st.running, s.st.pid, s.st.startedAt, s.st.retryAt, s.st.exitStatus = true, p.Pid, time.Now(), time.Time{}, 0
	s.st.startedConf, s.st.startedTLS = conf, servesTLS(conf)
	s.creds.setLocalTLS(s.st.startedTLS)
	s.log.Info("redis-server started", "pid", p.Pid, "tls", s.st.startedTLS)
}

// stopNow stops the running redis-server gracefully, with the given
// SHUTDOWN, within the shutdown budget.
func (s *supervisor) stopNow(shutdown ...string) {
	s.stop(s.proc, s.exited, time.Now().Add(s.shutdown), shutdown...)
	s.proc, s.exited, s.st.running, s.st.pid = nil, nil, false, 0
}

// stopForGood is the end of run: redis-server stops as the pod's does
// (SHUTDOWN saves where persistence is on), then its log drains.
func (s *supervisor) stopForGood() {
	if s.proc != nil {
		s.stopNow("SHUTDOWN")
		s.publish()
	}
	s.logW.Close() // lets the forwarder drain and finish
	select {
	case <-s.logDone:
	case <-time.After(time.Second):
	}
}

// stopAdopted stops a redis-server adopted from an upgrade when the new
// manager cannot run after all, before run: as PID 1, its exit would kill
// redis-server with no chance to save. The reaper must be running.
func (s *supervisor) stopAdopted() {
	if s.proc != nil {
		s.log.Error("cannot run after the upgrade; stopping the inherited redis-server", "pid", s.proc.Pid)
		s.stopNow("SHUTDOWN")
	}
}

// restartNow stops redis-server gracefully and starts it again, unless the
// guard of a crash refuses the start.
func (s *supervisor) restartNow() error {
	if !s.st.wanted || s.proc == nil {
		return errNotRunning
	}
	s.stopNow("SHUTDOWN")
	// The guard of a crash holds here too, on the file the new process
	// would read: it may name other data files.
	conf, _ := os.ReadFile(s.confPath)
	if why := s.guard(string(conf)); why != "" {
		s.refuse(why)
		s.publish()
		return errors.New(why)
	}
	s.start()
	s.publish() // before the answer: the caller goes on to watch the new process
	if s.proc == nil {
		return fmt.Errorf("start redis-server again: %s", s.st.lastExit)
	}
	return nil
}

// died takes an exit of redis-server; one that was not asked for is
// followed by a restart, after the backoff.
func (s *supervisor) died(ws syscall.WaitStatus) {
	s.proc.Release()
	ran := time.Since(s.st.startedAt)
	s.proc, s.exited, s.st.running, s.st.pid = nil, nil, false, 0
	s.st.lastExit, s.st.exitStatus = describeExit(ws), 0
	if ws.Exited() {
		s.st.exitStatus = ws.ExitStatus()
	}
	if !s.st.wanted {
		return
	}
	if ran >= healthyRunTime {
		s.retry.reset()
	}
	wait := s.retryLater()
	s.st.restarts++
	s.log.Error("redis-server exited unexpectedly; restarting", "status", s.st.lastExit, "ranFor", ran.Round(time.Millisecond).String(), "restartIn", wait.String(), "restarts", s.st.restarts)
}

// retryStart starts redis-server again once the backoff is over, unless
// the guard refuses: a primary that would come back empty stays stopped.
func (s *supervisor) retryStart() {
	if !s.st.wanted || s.proc != nil {
		return
	}
	if why := s.guard(s.st.startedConf); why != "" {
		s.refuse(why)
		return
	}
	s.start()
}

func (s *supervisor) retryLater() time.Duration {
	wait := s.retry.next()
	s.st.retryAt = time.Now().Add(wait)
	s.retryTimer = time.NewTimer(wait)
	s.retryC = s.retryTimer.C
	return wait
}

// refuse keeps redis-server stopped for now, for the guard's reason.
func (s *supervisor) refuse(why string) {
	if why != s.st.refused {
		s.log.Error("not starting redis-server again", "reason", why)
	}
	s.st.refused, s.st.lastExit, s.st.exitStatus = why, why, 0
	s.retryLater()
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
	p, ch, err := s.reaper.start(func() (p *os.Process, err error) {
		// From the main thread, with SIGTERM should the manager die
		// (mainthread.go).
		onMainThread(func() {
			p, err = os.StartProcess(s.redisServer, []string{s.redisServer, s.confPath}, &os.ProcAttr{
				Dir:   s.dataDir,
				Env:   os.Environ(),
				Files: []*os.File{devnull, s.logW, s.logW},
				Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM},
			})
		})
		return p, err
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
	c, err := dialRedis(localAddr(s.port), s.creds.list(), s.creds.tlsLocal(), time.Until(deadline))
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
// A pipe whose reads take no deadline (one inherited in blocking mode)
// cannot be released: an upgrade must refuse rather than wait for ever,
// with the reaper held, for a forwarder that never stops.
func (s *supervisor) releaseLog() (r, w *os.File, resume func(), err error) {
	if err := s.logR.SetReadDeadline(time.Now()); err != nil {
		return nil, nil, nil, fmt.Errorf("cannot stop forwarding redis-server's log: %w", err)
	}
	select {
	case <-s.logDone:
	case <-time.After(time.Second):
		s.logR.SetReadDeadline(time.Time{})
		return nil, nil, nil, errors.New("redis-server's log forwarder did not stop")
	}
	return s.logR, s.logW, func() {
		s.logR.SetReadDeadline(time.Time{})
		s.logDone = make(chan struct{})
		go s.forwardLog()
	}, nil
}
