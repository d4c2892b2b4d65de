package main

// A new fragment is accepted only once redis-server itself has judged it:
// parsing and refusing what the manager owns (conf.go) catches what the
// manager knows of, and redis-server's verdict everything else. That
// verdict is the running server's CONFIG SET for a change of parameters
// it takes live (liveconf.go judgeLive), and otherwise a redis-server run
// that reads the fragment as a start would (checkFragment).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The reconciler's side of the configuration: a new fragment is checked by
// redis-server, applied to the running one where it can be, and only then
// written to redis.conf; whatever only a restart applies is pending.

// fragmentState is the reconciler's part of the configuration: the last
// good fragment, in force, and the verdict on the latest text.
type fragmentState struct {
	fragment      []directive // the last good fragment
	fragmentOK    bool        // there is one
	fragmentText  string      // the text it was read from
	wantedValues  confValues  // its values
	refusedText   string      // the last fragment text refused
	confErr       string      // why
	checkedAt     time.Time   // of the last fragment checked
	retryFragment bool        // it was not refused but could not be checked: try again
}

// takeFragment accepts the fragment text of a new view, or refuses it and
// keeps the last good one in force: in redis-server and in redis.conf. A
// check that could not be made (no disk space, a timeout) is retried on the
// next look at Redis; a verdict stands until the text changes.
func (r *reconciler) takeFragment(text string) {
	switch {
	case r.fragmentOK && text == r.fragmentText:
		r.confErr, r.refusedText, r.retryFragment = "", "", false // back to the one in force
		return
	case r.confErr != "" && !r.retryFragment && text == r.refusedText:
		return // refused already; redis-server is not asked twice
	}
	began := time.Now()
	r.checkedAt = began
	frag, err := parseFragment(text)
	if err != nil {
		err = refusal{err}
	}
	if err == nil && !r.judgeLive(valuesOf(frag), began) {
		if r.checkConfig != nil {
			err = r.checkConfig(frag)
		}
		if err == nil {
			err = r.setLive(valuesOf(frag), began)
		}
	}
	if err != nil {
		if r.confErr != err.Error() {
			counts.configErrors.Add(1)
			r.log.Error("refusing the new redis.conf fragment; the last good configuration stays", "error", err)
		}
		r.confErr, r.refusedText, r.retryFragment = err.Error(), text, !errors.As(err, new(refusal))
		return
	}
	r.fragment, r.fragmentOK, r.fragmentText, r.refusedText, r.confErr, r.retryFragment = frag, true, text, "", "", false
	r.wantedValues = valuesOf(frag)
}

// retryFragmentCheck checks again a fragment whose check could not be
// made (no disk space, a timeout), at most every probeEvery.
func (r *reconciler) retryFragmentCheck() {
	if r.retryFragment && time.Since(r.checkedAt) >= probeEvery {
		r.applyView(r.view)
	}
}

// checkFragment has redis-server itself read the fragment as it would at a
// start: only Redis knows every directive and value it takes, those of
// parameters it reads only at start included, which would otherwise fail
// the next restart, long after the change. Told to listen nowhere, it
// exits right after reading its configuration, before it touches any
// data. What Redis reads only after its configuration, modules and ACL
// users, only a start shows: a fragment that has them is started on,
// listening on a socket of its own only, saving nothing, and stopped
// (SIGTERM) once it is ready; it reads no data either, for it runs in a
// directory of its own in the manager's private one, where there is none.
// The start costs a few milliseconds more, which a change of the others
// need not pay.
func checkFragment(redisServer, dataDir string, frag []directive, start startFunc) error {
	dir, err := privateTemp(dataDir, "confcheck-")
	if err != nil {
		return fmt.Errorf("check the fragment: %w", err)
	}
	defer os.RemoveAll(dir)
	var b strings.Builder
	mentions := map[string]bool{}
	for _, d := range frag {
		b.WriteString(directiveLine(d.name, d.args...))
		mentions[d.name] = true
	}
	// After the fragment, so that they win. The socket's path is relative
	// to the check's directory, its working directory: a whole path could
	// exceed what a socket's name may hold. Notice level, for the line
	// that says it is ready; hz 500, for Redis acts on a SIGTERM at its
	// next tick.
	starts, stopOn := mentions["loadmodule"] || mentions["user"], ""
	if starts {
		b.WriteString("port 0\nunixsocket check.sock\nsave \"\"\nloglevel notice\nhz 500\n")
		stopOn = redisReady
	} else {
		b.WriteString("port 0\nunixsocket \"\"\n")
	}
	if mentions["tls-port"] {
		b.WriteString("tls-port 0\n")
	}
	path := filepath.Join(dir, confName)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("check the fragment: %w", err)
	}
	// One that does not end is killed, for it is not the server.
	out, _, err := runChild(context.Background(), start, []string{redisServer, path}, dir, 5*time.Second, stopOn)
	if err != nil {
		return fmt.Errorf("check the fragment with %s: %w", redisServer, err)
	}
	secrets := secretsIn(frag)
	switch m := fatalConfig.FindStringSubmatch(out); {
	case m != nil:
		n, _ := strconv.Atoi(m[1])
		if n < 1 || n > len(frag) {
			return refusal{fmt.Errorf("redis-server refuses the configuration: %s", redact(m[3], secrets))}
		}
		d, quoted := frag[n-1], "'"+m[2]+"'"
		if sensitiveDirectives[d.name] {
			quoted = d.name // its arguments hold a password
		}
		return refusal{fmt.Errorf("redis.conf fragment line %d: redis-server refuses %s: %s", d.line, quoted, redact(m[3], secrets))}
	case starts && !strings.Contains(strings.ToLower(out), redisReady):
		return refusal{fmt.Errorf("redis-server cannot start with the fragment: %s", lastWords(strings.Split(out, "\n"), secrets))}
	case !starts && !strings.Contains(out, "Configured to not listen anywhere"):
		return fmt.Errorf("redis-server did not read the fragment as expected: %s", lastLine(out))
	}
	return nil
}

// redisReady is in the line Redis logs once it serves (7.0: "Ready to
// accept connections", and "The server is now ready to accept connections
// at <socket>").
const redisReady = "ready to accept connections"

// refusal is a verdict on a fragment, as opposed to a failure to reach one
// (no disk space for the check, a check that timed out): a refused fragment
// is not tried again, a failed check is.
type refusal struct{ error }

func (r refusal) Unwrap() error { return r.error }

var fatalConfig = regexp.MustCompile(`FATAL CONFIG FILE ERROR.*\n.*at line (\d+)\n>>> '(.*)'\n(.*)`)

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
