package main

// redis.conf is the user's fragment followed by the directives only this pod
// can know. The fragment is parsed the way Redis parses its own file, so that
// what we refuse and what Redis would read are the same thing, and it is
// rendered back canonically: the hash then changes only when a setting does.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// directive is one line of redis.conf: a lower-cased name and its arguments.
type directive struct {
	name string
	args []string
	line int // in the text it was read from
}

// ownedDirectives are set by the manager alone. A fragment that sets one
// would fight the manager over ports, roles or credentials.
var ownedDirectives = map[string]string{
	"port":                  "the manager sets it from --redis-port",
	"bind":                  "the manager binds all interfaces so that the other instances can reach this one",
	"dir":                   "the manager sets it from --data-dir",
	"daemonize":             "redis-server must stay in the foreground as the manager's child",
	"supervised":            "the manager is the supervisor",
	"pidfile":               "the manager tracks redis-server's PID itself",
	"logfile":               "redis-server logs to the manager, which re-emits its lines",
	"include":               "the whole configuration must come from the ConfigMap",
	"replicaof":             "roles follow spec.targetPrimary",
	"slaveof":               "roles follow spec.targetPrimary",
	"masterauth":            "credentials come from spec.authSecretRef",
	"masteruser":            "credentials come from spec.authSecretRef",
	"requirepass":           "credentials come from spec.authSecretRef",
	"replica-announce-ip":   "the manager sets it from --announce-host",
	"replica-announce-port": "the manager sets it from --redis-port",
	"slave-announce-ip":     "the manager sets it from --announce-host",
	"slave-announce-port":   "the manager sets it from --redis-port",
	"protected-mode":        "the manager must reach redis-server and so must the other instances",
}

// managerCommands are the commands the manager itself sends; renaming one
// away would leave the manager blind or unable to stop redis-server cleanly.
var managerCommands = map[string]bool{
	"auth": true, "config": true, "info": true, "ping": true,
	"replicaof": true, "shutdown": true, "slaveof": true,
}

// parseFragment reads a redis.conf fragment and refuses what the manager
// owns, naming the line and the reason.
func parseFragment(text string) ([]directive, error) {
	ds, err := parseConf(text)
	if err != nil {
		return nil, fmt.Errorf("redis.conf fragment %w", err)
	}
	for _, d := range ds {
		if why, owned := ownedDirectives[d.name]; owned {
			return nil, fmt.Errorf("redis.conf fragment line %d: %q is set by the manager and may not appear in the fragment: %s", d.line, d.name, why)
		}
		if d.name == "rename-command" && len(d.args) > 0 && managerCommands[strings.ToLower(d.args[0])] {
			return nil, fmt.Errorf("redis.conf fragment line %d: renaming %s would stop the manager from supervising redis-server", d.line, strings.ToUpper(d.args[0]))
		}
	}
	return ds, nil
}

// parseConf reads redis.conf text as Redis does: one directive a line, '#'
// comments, arguments split as sdssplitargs splits them.
func parseConf(text string) ([]directive, error) {
	if i := strings.IndexByte(text, 0); i >= 0 {
		return nil, fmt.Errorf("line %d: holds a NUL byte", 1+strings.Count(text[:i], "\n"))
	}
	var out []directive
	for i, line := range strings.Split(text, "\n") {
		line = strings.Trim(line, " \t\r\n")
		if line == "" || line[0] == '#' {
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if len(args) > 0 {
			out = append(out, directive{name: strings.ToLower(args[0]), args: args[1:], line: i + 1})
		}
	}
	return out, nil
}

// splitArgs is Redis's sdssplitargs: blanks separate arguments; "double
// quotes" take \n \r \t \b \a \\ \" and \xHH escapes; 'single quotes' take \'
// only; a closing quote must be followed by a blank or the end of the line.
func splitArgs(line string) ([]string, error) {
	var args []string
	i := 0
	for {
		for i < len(line) && isBlank(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		var cur strings.Builder
		inDouble, inSingle := false, false
		for done := false; !done; {
			if inDouble {
				switch {
				case i == len(line):
					return nil, fmt.Errorf("unbalanced double quotes")
				case line[i] == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					v, _ := strconv.ParseUint(line[i+2:i+4], 16, 8)
					cur.WriteByte(byte(v))
					i += 3
				case line[i] == '\\' && i+1 < len(line):
					i++
					cur.WriteByte(unescape(line[i]))
				case line[i] == '"':
					if i+1 < len(line) && !isBlank(line[i+1]) {
						return nil, fmt.Errorf("closing double quote must be followed by a space")
					}
					done = true
				default:
					cur.WriteByte(line[i])
				}
			} else if inSingle {
				switch {
				case i == len(line):
					return nil, fmt.Errorf("unbalanced single quotes")
				case line[i] == '\\' && i+1 < len(line) && line[i+1] == '\'':
					i++
					cur.WriteByte('\'')
				case line[i] == '\'':
					if i+1 < len(line) && !isBlank(line[i+1]) {
						return nil, fmt.Errorf("closing single quote must be followed by a space")
					}
					done = true
				default:
					cur.WriteByte(line[i])
				}
			} else {
				switch {
				case i == len(line) || line[i] == ' ' || line[i] == '\n' || line[i] == '\r' || line[i] == '\t':
					done = true
				case line[i] == '"':
					inDouble = true
				case line[i] == '\'':
					inSingle = true
				default:
					cur.WriteByte(line[i])
				}
			}
			if i < len(line) {
				i++
			}
		}
		args = append(args, cur.String())
	}
}

// isBlank is C's isspace, which sdssplitargs skips between arguments and
// wants after a closing quote; inside an unquoted argument only space, tab,
// CR and LF end it.
func isBlank(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f'
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}

// quoteArg writes an argument so that splitArgs reads it back unchanged.
func quoteArg(s string) string {
	plain := s != "" && s[0] != '#'
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c > ' ' && c < 0x7f && c != '"' && c != '\'' && c != '\\'
	}
	if plain {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < ' ' || c >= 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ownedMarker separates the fragment from the owned directives in the file,
// so that the last good fragment can be found again after a restart.
const ownedMarker = "\n# Owned by the manager.\n"

// previousFragment is the fragment of the redis.conf a previous run wrote:
// the last good configuration, should the current one be refused.
func previousFragment(path string) ([]directive, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	frag, _, found := strings.Cut(string(data), ownedMarker)
	if !found {
		return nil, false
	}
	ds, err := parseFragment(frag)
	return ds, err == nil
}

// pendingRestart names the directives whose values differ between the
// configuration redis-server started with and the one now wanted. replicaof
// is left out: the manager applies it live.
func pendingRestart(running, wanted string) []string {
	group := func(text string) map[string][][]string {
		ds, _ := parseConf(text)
		m := map[string][][]string{}
		for _, d := range ds {
			m[d.name] = append(m[d.name], d.args)
		}
		return m
	}
	a, b := group(running), group(wanted)
	names := []string{}
	for name := range a {
		if _, ok := b[name]; !ok {
			b[name] = nil
		}
	}
	for name, args := range b {
		if name != "replicaof" && !slices.EqualFunc(a[name], args, slices.Equal[[]string]) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// datasetKeys is how many keys the dataset in the data directory holds,
// as far as the files tell: 0 for none (no file, or a file of an empty
// dataset), at least 1 for a dataset whose count cannot be read cheaply (an
// AOF with commands in it). Redis reads the AOF when appendonly is on, the
// RDB otherwise; the names come from the fragment.
func datasetKeys(dir string, frag []directive) int64 {
	rdb, aofDir, aof := "dump.rdb", "appendonlydir", false
	for _, d := range frag {
		if len(d.args) != 1 {
			continue
		}
		switch d.name {
		case "dbfilename":
			rdb = d.args[0]
		case "appenddirname":
			aofDir = d.args[0]
		case "appendonly":
			aof = strings.EqualFold(d.args[0], "yes")
		}
	}
	if !aof {
		return rdbFileKeys(filepath.Join(dir, rdb))
	}
	files, _ := os.ReadDir(filepath.Join(dir, aofDir))
	var keys int64
	for _, f := range files {
		info, err := f.Info()
		switch {
		case err != nil || info.Size() == 0 || strings.HasSuffix(f.Name(), ".manifest"):
		case strings.HasSuffix(f.Name(), ".rdb"):
			keys += rdbFileKeys(filepath.Join(dir, aofDir, f.Name()))
		default: // commands: the count is not worth replaying them for
			keys++
		}
	}
	return keys
}

// rdbFileKeys reads an RDB file's header up to its first database, whose
// RESIZEDB record gives its size; Redis writes no database that is empty.
// A file it cannot follow counts as holding a key: a guard must not take a
// dataset it cannot read for an empty one.
func rdbFileKeys(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	r := bufio.NewReader(f)
	magic := make([]byte, 9)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic[:5]) != "REDIS" {
		return 1
	}
	for {
		op, err := r.ReadByte()
		if err != nil {
			return 1
		}
		switch op {
		case 0xFA: // AUX: key and value
			if skipString(r) != nil || skipString(r) != nil {
				return 1
			}
		case 0xF5: // FUNCTION2: the library's code
			if skipString(r) != nil {
				return 1
			}
		case 0xFE: // SELECTDB: a database with keys follows
			if _, _, err := readLength(r); err != nil {
				return 1
			}
			if op, err := r.ReadByte(); err != nil || op != 0xFB {
				return 1
			}
			n, _, err := readLength(r)
			if err != nil || n == 0 {
				return 1
			}
			return int64(n)
		case 0xFF: // EOF before any database
			return 0
		default:
			return 1
		}
	}
}

// readLength reads RDB's length encoding; special is true for the encoded
// strings (integers, LZF) whose kind it then returns.
func readLength(r *bufio.Reader) (n uint64, special bool, err error) {
	b, err := r.ReadByte()
	if err != nil {
		return 0, false, err
	}
	switch b >> 6 {
	case 0:
		return uint64(b & 0x3F), false, nil
	case 1:
		c, err := r.ReadByte()
		return uint64(b&0x3F)<<8 | uint64(c), false, err
	case 3:
		return uint64(b & 0x3F), true, nil
	}
	size := map[byte]int{0x80: 4, 0x81: 8}[b]
	if size == 0 {
		return 0, false, fmt.Errorf("bad length byte %#x", b)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, false, err
	}
	for _, c := range buf {
		n = n<<8 | uint64(c)
	}
	return n, false, nil
}

func skipString(r *bufio.Reader) error {
	n, special, err := readLength(r)
	if err != nil {
		return err
	}
	if special {
		switch n {
		case 0, 1, 2: // an 8, 16 or 32 bit integer
			n = 1 << n
		case 3: // LZF: compressed and plain length, then the compressed bytes
			if n, _, err = readLength(r); err != nil {
				return err
			}
			if _, _, err = readLength(r); err != nil {
				return err
			}
		default:
			return fmt.Errorf("bad string encoding %d", n)
		}
	}
	_, err = r.Discard(int(n))
	return err
}

// podConfig is what only this pod knows, rendered after the fragment.
type podConfig struct {
	dataDir      string
	port         int
	announceHost string
	replicaOf    string // "host:port" of the primary to follow; empty for the primary
	password     string
}

// renderConfig returns the whole redis.conf for a fragment and this pod.
func renderConfig(fragment []directive, pod podConfig) (string, error) {
	var b strings.Builder
	b.WriteString("# Generated by redis-operator; edit the ConfigMap, not this file.\n")
	line := func(name string, args ...string) {
		b.WriteString(quoteArg(name))
		for _, a := range args {
			b.WriteByte(' ')
			b.WriteString(quoteArg(a))
		}
		b.WriteByte('\n')
	}
	for _, d := range fragment {
		line(d.name, d.args...)
	}
	b.WriteString(ownedMarker)
	port := strconv.Itoa(pod.port)
	line("port", port)
	line("bind", "*", "-::*")
	line("protected-mode", "no")
	line("dir", pod.dataDir)
	line("daemonize", "no")
	line("supervised", "no")
	line("pidfile", "")
	line("logfile", "")
	line("replica-announce-ip", pod.announceHost)
	line("replica-announce-port", port)
	if pod.password != "" {
		line("requirepass", pod.password)
		line("masterauth", pod.password)
	}
	if pod.replicaOf != "" {
		host, p, err := splitHostPort(pod.replicaOf)
		if err != nil {
			return "", fmt.Errorf("primary address: %w", err)
		}
		line("replicaof", host, p)
	}
	return b.String(), nil
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

// configHash identifies a rendered configuration. The credential lines are
// left out: the hash is published, and must not let anyone test guesses of
// the password against it.
func configHash(conf string) string {
	h := sha256.New()
	for _, line := range strings.SplitAfter(conf, "\n") {
		if !strings.HasPrefix(line, "requirepass ") && !strings.HasPrefix(line, "masterauth ") {
			h.Write([]byte(line))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// confPassword is the requirepass of a rendered configuration: the password
// the redis-server started on it answers to.
func confPassword(conf string) string {
	ds, _ := parseConf(conf)
	for _, d := range ds {
		if d.name == "requirepass" && len(d.args) == 1 {
			return d.args[0]
		}
	}
	return ""
}

// writeFileAtomic replaces path with data so that a reader, or a crash, sees
// the old file or the new one and never a part of either.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	if _, err = f.Write(data); err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename itself durable
		d.Close()
	}
	return nil
}
