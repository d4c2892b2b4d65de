package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// The reconciler owns the desired state of this pod: it turns each new
// view of the RedisCluster, and each new look at Redis, into redis.conf,
// into whether redis-server should run, into the role Redis must have, and
// into the status it publishes. One goroutine runs it (run), one select
// loop; each of its steps is named and lives in the file of its concern:
// the configuration (confcheck.go, liveconf.go), credentials (auth.go),
// the role (role.go), restores (restore.go), the status (status.go).

// redisProcess is the supervisor as the reconciler sees it.
type redisProcess interface {
	setWanted(run bool)
	snapshot() supervisorState
}

// reconciler owns the desired configuration and this pod's status.
type reconciler struct {
	log      *slog.Logger
	settings *settings
	sup      redisProcess
	statuses chan statusUpdate // to the status writer; the latest wins
	exeHash  string

	published   atomic.Pointer[probeState]
	beat        atomic.Int64
	primaryKeys atomic.Int64 // keys held while the primary, for the supervisor's restart guard

	view          clusterView
	haveView      bool
	checkConfig   func([]directive) error // redis-server's own verdict on a fragment; nil in unit tests
	fragment      []directive             // the last good fragment
	fragmentOK    bool                    // there is one
	fragmentText  string                  // the text it was read from
	refusedText   string                  // the last fragment text refused
	checkedAt     time.Time               // of the last fragment checked
	retryFragment bool                    // it was not refused but could not be checked: try again
	wantedValues  confValues              // the fragment's values
	applied       confValues              // what the running redis-server runs of it
	appliedFor    time.Time               // the start of the redis-server applied describes
	restartOnly   map[string]bool         // parameters Redis said it cannot change at run time
	liveRefused   string                  // the last change Redis refused live
	liveErr       string                  // why
	auth          authState
	authErr       string                          // why the password could not be rotated
	authWait      string                          // the replica a rotation waits for
	creds         atomic.Pointer[[]string]        // passwords to offer redis-server, for every goroutine
	peers         atomic.Pointer[map[string]bool] // the other instances' addresses: see isPeer
	fenced        bool
	wanted        bool // redis-server should run
	role          desiredRole
	conf          string // redis.conf as last written
	viewErr       string // the source's latest complaint
	viewSeq       uint64 // of the latest view applied
	errSeq        uint64 // of the latest complaint
	confErr       string // why the latest fragment was refused
	writeErr      string // why redis.conf could not be written
	fenceErr      string // why the latest fence annotation was refused
	roleErr       string // why the role could not be made right
	guardErr      string // why redis-server may not start
	restorer      *restorer
	restores      chan restoreResult
	restoreJob    *restoreJob // the restore under way, or abandoned and not yet ended
	restoreDone   restoreSpec // the backup restored, or found not needed
	restoreErr    string      // why the last attempt failed
	restoreFailed restoreSpec // the backup it failed for
	restoreFails  int
	restoreRetry  time.Time
	heldKeys      int64         // keys this instance last held: seen, or from its entry of before
	lostSince     time.Time     // when the old primary was first found gone
	demoteSince   time.Time     // when this master first found it is not the target
	stuckAt       int64         // the replica\'s offset, while it stands still
	stuckSince    time.Time     // since when it has
	poke          chan struct{} // asks the observer to look now
	pauses        chan chan struct{}
	observed      chan struct{} // closed once a state with a view and a look at Redis is published
	observedSent  bool
	began         time.Time
	adopted       bool // redis-server was inherited: no status before that look
	fenceKnown    bool // fenced was inherited too, a malformed annotation notwithstanding
	obs           *observation
	lastAnswer    time.Time
	written       instanceStatus
	writtenAt     time.Time
}

func newReconciler(r *reconciler) *reconciler {
	r.statuses = make(chan statusUpdate, 1)
	r.pauses = make(chan chan struct{})
	r.began = time.Now()
	r.observed = make(chan struct{})
	r.restores = make(chan restoreResult, 1)
	r.fragment, r.fragmentOK = previousFragment(r.settings.confPath())
	r.wantedValues, r.restartOnly = valuesOf(r.fragment), map[string]bool{}
	r.creds.Store(&[]string{})
	r.peers.Store(&map[string]bool{})
	r.published.Store(&probeState{reason: "starting", startupReason: "starting"})
	r.beat.Store(time.Now().UnixNano())
	return r
}

// run reacts to the source, to Redis, and to time until ctx ends. Nothing
// starts before the first view of the cluster: nothing starts on a guess.
func (r *reconciler) run(ctx context.Context, f *feed, observations <-chan *observation) {
	// The observer's looks, at least one a second, are what moves the
	// reconciler; the tick only keeps it beating should they stop, and
	// costs an idle pod a wakeup each time.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		r.publish()
		select {
		case <-ctx.Done():
			if r.restoreJob != nil {
				r.restoreJob.cancel() // what it leaves, the next start removes
			}
			r.stopped("stopping")
			return
		case res := <-r.restores:
			r.restoreEnded(res)
		case resume := <-r.pauses:
			<-resume
		case v := <-f.views:
			if v.seq > r.errSeq {
				r.viewErr = "" // the complaint is older than this view
			}
			r.viewSeq = v.seq
			r.applyView(v)
			if r.obs != nil && r.obs.err != nil {
				r.pokeObserver() // it may have lacked the password the view brought
			}
			r.enforceRole()
			r.rotateAuth()
		case e := <-f.errs:
			if e.seq < r.viewSeq {
				break // a newer view already came
			}
			r.errSeq = e.seq
			if msg := e.err.Error(); msg != r.viewErr {
				r.log.Error("cannot use the cluster's new state; keeping the last good one", "error", e.err)
				r.viewErr = msg
			}
		case o := <-observations:
			r.obs = o
			if o.err == nil {
				r.lastAnswer = o.at
				if !o.loading() {
					r.heldKeys = o.info.keys()
				}
			}
			if r.retryFragment && time.Since(r.checkedAt) >= probeEvery {
				r.applyView(r.view) // its fragment could not be checked
			}
			r.retryRestore()
			r.enforceRole()
			r.syncLive()
			r.rotateAuth()
		case <-tick.C:
			r.retryRestore()
			if r.guardErr != "" {
				r.applyView(r.view) // what the guard refused may have been put right on disk
			}
		}
	}
}

// applyView renders redis.conf for the new view. A refused fragment keeps
// the last good one in force but does not hold up what else changed.
func (r *reconciler) applyView(v clusterView) {
	defer func() { r.haveView = true }()
	if !r.haveView {
		// What this instance held before it (re)started, before its own
		// entry is overwritten.
		r.heldKeys = v.cluster.Status.InstancesStatus[r.settings.podName].Keys
	}
	if v.password == "" && (!r.haveView || r.view.password != "") {
		r.log.Warn("no password from spec.authSecretRef: redis-server takes every client without one, on every interface (protected-mode no); set authSecretRef for anything but a local experiment")
	}
	r.view = v
	r.publishCredentials()
	r.publishPeers(&v.cluster)
	r.takeFragment(v.fragment)
	if fenced, err := isFenced(v.cluster.Metadata.Annotations, r.settings.podName); err != nil {
		if !r.haveView && !r.fenceKnown {
			// Nothing to keep as it was: the pod may well be meant to be
			// fenced, so redis-server stays stopped until it parses.
			r.fenced = true
		}
		if r.fenceErr != err.Error() {
			r.log.Error("ignoring a malformed fence annotation; fencing stays as it was", "error", err, "fenced", r.fenced)
		}
		r.fenceErr = err.Error()
	} else {
		if fenced != r.fenced {
			r.log.Info("fencing changed", "fenced", fenced)
		}
		r.fenced, r.fenceErr = fenced, ""
	}
	r.role = roleFor(&v.cluster, r.settings.podName)
	if r.fenced {
		r.setWanted(false) // whatever fails below, a fence holds
	}
	if !r.fragmentOK {
		r.setWanted(false) // never a configuration we did not check
		return
	}
	conf, err := renderConfig(r.fragment, podConfig{
		dataDir:      r.settings.dataDir,
		port:         r.settings.redisPort,
		announceHost: r.settings.announceHost,
		replicaOf:    r.role.replicaOf,
		password:     v.password,
	})
	if err == nil && conf != r.conf {
		err = writeFileAtomic(r.settings.confPath(), []byte(conf), 0o600)
		if err == nil {
			r.conf = conf
			r.log.Info("wrote redis.conf", "configHash", configHash(r.wantedValues))
		}
	}
	if err != nil {
		if err.Error() != r.writeErr {
			r.log.Error("cannot write redis.conf", "error", err)
		}
		r.writeErr = err.Error()
		return
	}
	r.writeErr = ""
	waiting := !r.role.primary && r.role.replicaOf == ""
	if waiting && !r.fenced && r.wanted {
		r.log.Info("waiting for the target primary to publish its address", "targetPrimary", r.role.target)
	}
	// The guard decides a start only: a running server has the run-time
	// guards of enforceRole.
	guard, restoring := "", false
	if !r.sup.snapshot().running {
		guard = r.startGuard()
		if guard == "" {
			restoring = r.bootstrap()
		} else if r.restoreJob != nil || r.restoreErr != "" {
			r.abandonRestore("a guard keeps redis-server from starting") // no restore while the guard holds
			r.restoreErr, r.restoreRetry = "", time.Time{}
		}
	}
	if guard != "" && guard != r.guardErr {
		r.log.Error("not starting redis-server", "reason", guard)
	}
	r.guardErr = guard
	r.setWanted(!r.fenced && !waiting && guard == "" && !restoring)
}

// startGuard says why redis-server must not start now, or "": as the
// primary on an empty data directory while the status shows the cluster held
// data (the data was lost here, and replicas would copy the loss), or as a
// replica holding data of a master that holds none.
func (r *reconciler) startGuard() string {
	entries := r.view.cluster.Status.InstancesStatus
	onDisk := datasetKeys(r.settings.dataDir, r.fragment)
	if r.role.leads() {
		if why := unreadDataset(r.settings.dataDir, r.fragment); why != "" {
			return why
		}
		if onDisk > 0 {
			return ""
		}
		holder, most := "this instance", r.heldKeys // its entry of before counts too
		for pod, e := range entries {
			if pod != r.settings.podName && e.Keys > most {
				holder, most = pod, e.Keys
			}
		}
		if most == 0 {
			return ""
		}
		return fmt.Sprintf("refusing to start as the primary with an empty data directory while %s reported %d keys: move targetPrimary to an instance that holds the data", holder, most)
	}
	// The entry of the one to follow reports what it holds even while it
	// is stopped. A target that starts as the replica of the instance still
	// holding the role follows that one until the handover.
	follow := r.role.target
	if r.role.primary {
		follow = r.view.cluster.Status.CurrentPrimary
	}
	if e, ok := entries[follow]; ok && e.Keys == 0 && onDisk > 0 {
		return fmt.Sprintf("refusing to follow %s, which reports no key, with the dataset on disk here (%d keys or more): it stays as it is", follow, onDisk)
	}
	return ""
}

func (r *reconciler) setWanted(run bool) {
	r.wanted = run
	r.sup.setWanted(run)
}

// pause holds the reconciler still, between two of its steps, until the
// returned function is called: an upgrade writes the state down meanwhile.
// It waits at most wait for a step (a handover, say) to end.
func (r *reconciler) pause(ctx context.Context, wait time.Duration) (func(), bool) {
	resume := make(chan struct{})
	select {
	case r.pauses <- resume:
		return func() { close(resume) }, true
	case <-ctx.Done():
	case <-time.After(wait):
	}
	return nil, false
}

func (r *reconciler) pokeObserver() {
	if r.poke != nil {
		offer(r.poke, struct{}{})
	}
}
