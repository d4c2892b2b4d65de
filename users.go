package main

// ACL users: those spec.users declares, and the manager's own.
//
// The manager, replication (masteruser) and backups authenticate as the
// user redis-operator, with the spec.authSecretRef password and the
// commands they need and no more, so that restricting or turning off the
// default user never locks the manager out. spec.users cannot name it.
//
// A declared user is exactly its rules: each is applied with ACL SETUSER
// name reset <rules> <password hashes>, live, with no restart and no
// client of another user dropped; a user removed from the spec is deleted
// (ACL DELUSER); users the spec never named are left alone. Passwords come
// only from Secrets and are written hashed (#<sha256>), in redis.conf too,
// so that a restart or a new replica comes up with exactly the declared
// users. Rules are checked by redis-server itself before anything is
// applied, as the fragment is; a declaration with a refused rule, a rule
// that carries a password, a bad name or a missing Secret is refused
// whole, and the last good users stay.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// operatorUser is the manager's own ACL user.
const operatorUser = "redis-operator"

// operatorCommands are what the manager's connections (PING, INFO, CONFIG,
// CLIENT PAUSE/UNPAUSE/KILL, REPLICAOF, SHUTDOWN, ACL for the users and
// the rotation), a replica's link (AUTH, PING, REPLCONF, PSYNC; SYNC from
// replicas before 2.8) and a backup (a replica's sync) send. No key and no
// channel: none of them reads or writes data.
var operatorCommands = []string{"-@all", "+ping", "+auth", "+info", "+role", "+config|get", "+config|set",
	"+client|pause", "+client|unpause", "+client|kill", "+client|list", "+replicaof", "+slaveof", "+shutdown",
	"+acl|setuser", "+acl|deluser", "+acl|getuser", "+acl|list", "+replconf", "+psync", "+sync"}

// declaredUser is one spec.users entry as the source read it.
type declaredUser struct {
	name, rules string
	password    string
	hasPassword bool // passwordSecretRef is set; without it the user has no password
}

// declaredUsers reads the users' passwords with get. A password that
// cannot be read refuses the whole declaration, named by its user.
func declaredUsers(spec []userSpec, get func(*keyRef) (string, error)) ([]declaredUser, string) {
	var out []declaredUser
	for _, u := range spec {
		d := declaredUser{name: u.Name, rules: u.Rules}
		if ref := u.PasswordSecretRef; ref != nil {
			pw, err := get(ref)
			if err != nil {
				return nil, fmt.Sprintf("spec.users %q: %v", u.Name, err)
			}
			d.password, d.hasPassword = strings.TrimRight(pw, "\r\n"), true
		}
		out = append(out, d)
	}
	return out, ""
}

// passwordRule says whether an ACL rule sets, removes or drops passwords.
func passwordRule(rule string) bool {
	if rule == "" {
		return false
	}
	switch strings.ToLower(rule) {
	case "nopass", "resetpass":
		return true
	}
	return strings.ContainsRune("><#!", rune(rule[0]))
}

// validUserName is what Redis takes as a user's name in redis.conf and in
// ACL SETUSER alike: no blank, no control character, no quote.
func validUserName(name string) bool {
	if name == "" || len(name) > 128 {
		return false
	}
	for _, c := range name {
		if c <= ' ' || c == 0x7f || c == '"' || c == '\'' || c == '\\' {
			return false
		}
	}
	return true
}

// userRules checks a declaration without Redis: names, duplicates, the
// manager's user, users the fragment declares, rules that carry a
// password. It returns each user's rules, split as Redis splits them. No
// error quotes a rule that carries a password.
func userRules(users []declaredUser, fragment []directive) (map[string][]string, error) {
	inFragment := map[string]bool{}
	for _, d := range fragment {
		if d.name == "user" && len(d.args) > 0 {
			inFragment[d.args[0]] = true
		}
	}
	out := map[string][]string{}
	for _, u := range users {
		switch {
		case !validUserName(u.name):
			return nil, fmt.Errorf("spec.users: %q is not a valid ACL user name (no blank, quote or control character)", u.name)
		case u.name == operatorUser || u.name == scratchUser:
			return nil, fmt.Errorf("spec.users: %q is the manager's own user, with the spec.authSecretRef password", u.name)
		case out[u.name] != nil:
			return nil, fmt.Errorf("spec.users: %q is declared twice", u.name)
		case inFragment[u.name]:
			return nil, fmt.Errorf("spec.users: %q is declared by a user line of the redis.conf fragment too", u.name)
		}
		rules, err := splitArgs(u.rules)
		if err != nil {
			return nil, fmt.Errorf("spec.users %q: rules: %w", u.name, err)
		}
		for i, rule := range rules {
			if passwordRule(rule) {
				return nil, fmt.Errorf("spec.users %q: rule %d sets a password (>, <, #, ! and nopass, resetpass are refused): passwords come only from passwordSecretRef", u.name, i+1)
			}
		}
		out[u.name] = append([]string{"reset"}, rules...)
	}
	return out, nil
}

// passwordHash is how Redis stores a password: #<sha256 in hex>.
func passwordHash(pw string) string {
	sum := sha256.Sum256([]byte(pw))
	return "#" + hex.EncodeToString(sum[:])
}

// usersState is the reconciler's part of the users.
type usersState struct {
	userRules    map[string][]string // of the accepted declaration, by name: reset and the rules
	usersChecked string              // the rules redis-server last accepted
	usersErr     string              // why the latest declaration was refused
	userHashes   map[string][]string // each declared user's password hashes, newest first
	userSince    map[string]time.Time
	usersLive    map[string]string // what the running redis-server has of the users the manager owns, by name
	usersLiveFor time.Time
	usersLiveErr string
}

// seedUsers takes the users of the redis.conf a previous manager wrote:
// the last good ones, should the next declaration be refused, and their
// password hashes, so that a rotation under way keeps its old password
// for a window still.
func (r *reconciler) seedUsers(confPath string) {
	r.userRules, r.userHashes, r.userSince = map[string][]string{}, map[string][]string{}, map[string]time.Time{}
	conf, _ := os.ReadFile(confPath)
	_, owned, _ := strings.Cut(string(conf), ownedMarker)
	ds, _ := parseConf(owned)
	for _, d := range ds {
		if d.name != "user" || len(d.args) < 2 || d.args[0] == operatorUser {
			continue
		}
		name := d.args[0]
		for _, a := range d.args[1:] {
			if strings.HasPrefix(a, "#") {
				r.userHashes[name] = append(r.userHashes[name], a)
				r.userSince[name] = time.Now()
			} else {
				r.userRules[name] = append(r.userRules[name], a)
			}
		}
	}
}

// takeUsers checks the view's declaration and, when good, makes it the
// one in force; their passwords rotate as the main one does (rotate).
func (r *reconciler) takeUsers(v clusterView) {
	if v.usersErr != "" {
		r.refuseUsers(fmt.Errorf("%s", v.usersErr))
		return
	}
	rules, err := userRules(v.users, r.fragment)
	if err == nil {
		err = r.checkUserRules(rules)
	}
	if err != nil {
		r.refuseUsers(err)
		return
	}
	if r.usersErr != "" {
		r.log.Info("spec.users accepted")
	}
	r.usersErr, r.userRules = "", rules
	hashes := map[string][]string{}
	for _, u := range v.users {
		if !u.hasPassword {
			hashes[u.name] = nil
			continue
		}
		h, old := passwordHash(u.password), r.userHashes[u.name]
		switch {
		case len(old) > 0 && old[0] == h:
			hashes[u.name] = old
		case len(old) > 0:
			hashes[u.name] = []string{h, old[0]} // the old one works until the window ends
			r.userSince[u.name] = time.Now()
			r.log.Info("a user's password rotates: the new one works beside the old one", "user", u.name, "rotationWindow", r.settings.rotationWindow.String())
		default:
			hashes[u.name] = []string{h}
		}
	}
	r.userHashes = hashes
}

func (r *reconciler) refuseUsers(err error) {
	if err.Error() != r.usersErr {
		r.log.Error("refusing spec.users; the users stay as they were", "error", err)
	}
	r.usersErr = err.Error()
}

// checkUserRules has Redis itself read the declared users' rules, without
// passwords, before any is applied: the running redis-server, on a scratch
// user (ACL SETUSER takes all of its rules or none, and the scratch user,
// which no one can log in as, is deleted at once), in a fraction of a
// millisecond; or, while none answers, a redis-server started on them as
// on redis.conf (confcheck.go), in some 30 ms. What Redis accepted once is
// not asked again.
func (r *reconciler) checkUserRules(rules map[string][]string) error {
	names := slices.Sorted(maps.Keys(rules))
	var lines []directive
	var key strings.Builder
	for i, name := range names {
		lines = append(lines, directive{name: "user", args: append([]string{name}, rules[name]...), line: i + 1})
		key.WriteString(directiveLine("user", lines[i].args...))
	}
	if len(lines) == 0 || key.String() == r.usersChecked || r.checkConfig == nil {
		return nil
	}
	var err error
	if r.reachable() {
		err = r.checkUsersLive(names, rules)
	} else {
		err = r.checkConfig(lines)
	}
	if err != nil {
		return fmt.Errorf("spec.users: %w", err)
	}
	r.usersChecked = key.String()
	return nil
}

// scratchUser is the name the rules are tried on; spec.users cannot
// declare it, being the manager's user's.
const scratchUser = operatorUser + "-check"

func (r *reconciler) checkUsersLive(names []string, rules map[string][]string) error {
	return withRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
		defer c.Do("ACL", "DELUSER", scratchUser)
		for _, name := range names {
			// resetpass last: whatever the rules say, no one logs in.
			args := append(append([]any{"SETUSER", scratchUser}, anys(rules[name])...), "off", "resetpass")
			if _, err := c.Do("ACL", args...); err != nil {
				if _, refused := err.(redis.Error); refused {
					return refusal{fmt.Errorf("redis-server refuses the rules of %q: %s", name, strings.ReplaceAll(err.Error(), scratchUser, name))}
				}
				return err
			}
		}
		return nil
	})
}

// expireUserPasswords ends the rotations whose window is over.
func (r *reconciler) expireUserPasswords() {
	for name, hs := range r.userHashes {
		if len(hs) > 1 && time.Since(r.userSince[name]) >= r.settings.rotationWindow {
			r.userHashes[name] = hs[:1]
			r.log.Info("a user's old password no longer works: the rotation is complete", "user", name)
		}
	}
}

// declares says whether spec.users declares name (in force).
func (r *reconciler) declares(name string) bool { return r.userRules[name] != nil }

// wantedUsers is each user the manager owns as ACL SETUSER arguments: the
// declared ones and the manager's own, whose passwords are what the
// default user's rotation accepts (auth.go).
func (r *reconciler) wantedUsers(operatorPasswords []string) map[string][]string {
	out := map[string][]string{}
	for name, rules := range r.userRules {
		out[name] = append(slices.Clone(rules), r.userHashes[name]...)
	}
	op := append([]string{"reset", "on"}, operatorCommands...)
	for _, pw := range operatorPasswords {
		if pw == "" {
			op = append(op, "nopass")
		} else {
			op = append(op, passwordHash(pw))
		}
	}
	out[operatorUser] = op
	return out
}

// userLines are the users of a redis.conf the manager wrote, by name:
// what a redis-server started on it has.
func userLines(conf string) map[string]string {
	_, owned, _ := strings.Cut(conf, ownedMarker)
	ds, _ := parseConf(owned)
	out := map[string]string{}
	for _, d := range ds {
		if d.name == "user" && len(d.args) > 0 {
			out[d.args[0]] = strings.Join(d.args[1:], " ")
		}
	}
	return out
}

// syncUsers brings the running redis-server's users to the wanted ones:
// a changed user set whole, a user the manager owned and no longer wants
// deleted. Each step is one command; one refused is retried on a later
// look, and said in lastError.
func (r *reconciler) syncUsers() {
	if !r.haveView || !r.reachable() {
		return
	}
	r.expireUserPasswords()
	sup := r.sup.snapshot()
	if !sup.startedAt.Equal(r.usersLiveFor) {
		r.usersLive, r.usersLiveFor, r.usersLiveErr = userLines(sup.startedConf), sup.startedAt, ""
	}
	wanted := r.wantedUsers(r.auth.accepted)
	var set, del []string
	for _, name := range slices.Sorted(maps.Keys(wanted)) {
		if r.usersLive[name] != strings.Join(wanted[name], " ") {
			set = append(set, name)
		}
	}
	for name := range r.usersLive {
		if wanted[name] == nil && name != "default" {
			del = append(del, name)
		}
	}
	// default, when no longer declared, goes back to the password of
	// spec.authSecretRef rather than away: see restoreDefault.
	restoreDefault := r.usersLive["default"] != "" && !r.declares("default")
	if len(set) == 0 && len(del) == 0 && !restoreDefault {
		return
	}
	began := time.Now()
	err := withRedis(localAddr(r.settings.redisPort), r.creds.list(), r.creds.tlsLocal(), redisTimeout, func(c redis.Conn) error {
		for _, name := range set {
			if _, err := c.Do("ACL", append([]any{"SETUSER", name}, anys(wanted[name])...)...); err != nil {
				return fmt.Errorf("ACL SETUSER %s: %s", name, secretFree(err))
			}
			r.usersLive[name] = strings.Join(wanted[name], " ")
		}
		for _, name := range del {
			if _, err := c.Do("ACL", "DELUSER", name); err != nil {
				return fmt.Errorf("ACL DELUSER %s: %s", name, secretFree(err))
			}
			delete(r.usersLive, name)
		}
		if restoreDefault {
			if _, err := c.Do("ACL", append([]any{"SETUSER", "default", "reset", "on", "~*", "&*", "+@all"}, passRules(r.auth.accepted)...)...); err != nil {
				return fmt.Errorf("ACL SETUSER default: %s", secretFree(err))
			}
			delete(r.usersLive, "default")
		}
		return nil
	})
	if err != nil {
		if msg := "cannot apply spec.users: " + err.Error(); msg != r.usersLiveErr {
			r.log.Error("cannot apply spec.users", "error", err)
			r.usersLiveErr = msg
		}
		return
	}
	r.usersLiveErr = ""
	r.log.Info("applied the users", "set", set, "deleted", del, "took", time.Since(began).Round(time.Microsecond).String())
}

// passRules are the ACL rules of a password list: >pw, or nopass.
func passRules(passwords []string) []any {
	var out []any
	for _, pw := range passwords {
		out = append(out, passRule(pw))
	}
	return out
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
