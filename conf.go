package main

// redis.conf is the user's fragment followed by the directives only this pod
// can know. The fragment is parsed the way Redis parses its own file, so that
// what we refuse and what Redis would read are the same thing, and it is
// rendered back canonically: the hash then changes only when a setting does.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gomodule/redigo/redis"
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
	"aclfile":               "the default user's passwords come from spec.authSecretRef, and an ACL file would replace them",
	// Left at Redis's default (no): CONFIG SET of dir and dbfilename would
	// let any client move Redis's files onto the manager's own.
	"enable-protected-configs": "Redis's data files stay where the fragment puts them, which a client could otherwise change with CONFIG SET",
}

// neededCommands are the commands the manager and replication rely on,
// and what renaming one away would break: the manager's own connections,
// a replica's link to its primary (AUTH with masterauth, PING, REPLCONF,
// PSYNC), and a backup, which is a replica's sync. SYNC is only what
// replicas older than Redis 2.8 send.
var neededCommands = map[string]string{
	"acl": "the manager's", "auth": "the manager's and replication's", "client": "the manager's",
	"config": "the manager's", "info": "the manager's", "ping": "the manager's and replication's",
	"replicaof": "the manager's", "slaveof": "the manager's", "shutdown": "the manager's",
	"replconf": "replication's and backups'", "psync": "replication's and backups'",
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
		if d.name == "rename-command" && len(d.args) > 0 {
			if whose, needed := neededCommands[strings.ToLower(d.args[0])]; needed {
				return nil, fmt.Errorf("redis.conf fragment line %d: renaming %s is refused: it is one of %s commands", d.line, strings.ToUpper(d.args[0]), whose)
			}
		}
		if d.name == "user" && len(d.args) > 0 && d.args[0] == "default" {
			return nil, fmt.Errorf("redis.conf fragment line %d: the default user is the manager's: its passwords come from spec.authSecretRef", d.line)
		}
		if _, names := dataFileDirectives[d.name]; names && len(d.args) == 1 {
			if err := checkDataFileName(d.name, d.args[0]); err != nil {
				return nil, fmt.Errorf("redis.conf fragment line %d: %w", d.line, err)
			}
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
// the last good configuration, should the current one be refused. It was
// checked when it was written; a manager whose rules have grown stricter
// since (an upgrade) refuses the same text when it comes again, and says
// so, but keeps it in force rather than stop a redis-server that runs on
// it.
func previousFragment(path string) ([]directive, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	return fragmentOf(string(data))
}

// fragmentOf is the user's part of a redis.conf the manager rendered.
func fragmentOf(conf string) ([]directive, bool) {
	frag, _, found := strings.Cut(conf, ownedMarker)
	if !found {
		return nil, false
	}
	ds, err := parseConf(frag)
	return ds, err == nil
}

// dataFiles names the dataset's files in the data directory, as the
// fragment sets them: Redis reads the AOF when appendonly is on, the RDB
// otherwise.
type dataFiles struct {
	rdb, aofDir, aofName string
	aof                  bool
}

func dataFilesOf(frag []directive) dataFiles {
	df := dataFiles{rdb: "dump.rdb", aofDir: "appendonlydir", aofName: "appendonly.aof"}
	for _, d := range frag {
		if len(d.args) != 1 {
			continue
		}
		switch d.name {
		case "dbfilename":
			df.rdb = d.args[0]
		case "appenddirname":
			df.aofDir = d.args[0]
		case "appendfilename":
			df.aofName = d.args[0]
		case "appendonly":
			df.aof = strings.EqualFold(d.args[0], "yes")
		}
	}
	return df
}

// datasetFound names a file of a dataset in dir, or "": the RDB, the AOF
// directory, or an AOF of Redis before 7.0, whether Redis would read it or
// not: a dataset found is never written over.
func datasetFound(dir string, frag []directive) string {
	df := dataFilesOf(frag)
	if _, err := os.Lstat(filepath.Join(dir, df.rdb)); err == nil {
		return df.rdb
	}
	if files, err := os.ReadDir(filepath.Join(dir, df.aofDir)); err == nil && len(files) > 0 {
		return df.aofDir + "/"
	}
	if _, err := os.Lstat(filepath.Join(dir, df.aofName)); err == nil {
		return df.aofName
	}
	return ""
}

// datasetKeys is how many keys the dataset in the data directory holds,
// as far as the files tell: 0 for none (no file, or a file of an empty
// dataset), at least 1 for a dataset whose count cannot be read cheaply (an
// AOF with commands in it).
func datasetKeys(dir string, frag []directive) int64 {
	df := dataFilesOf(frag)
	if !df.aof {
		return rdbFileKeys(filepath.Join(dir, df.rdb))
	}
	return aofKeys(dir, df)
}

// aofKeys is datasetKeys for the AOF directory.
func aofKeys(dir string, df dataFiles) int64 {
	files, _ := os.ReadDir(filepath.Join(dir, df.aofDir))
	var keys int64
	for _, f := range files {
		info, err := f.Info()
		switch {
		case err != nil || info.Size() == 0 || strings.HasSuffix(f.Name(), ".manifest"):
		case strings.HasSuffix(f.Name(), ".rdb"):
			keys += rdbFileKeys(filepath.Join(dir, df.aofDir, f.Name()))
		default: // commands: the count is not worth replaying them for
			keys++
		}
	}
	return keys
}

// unreadDataset says why redis-server must not start on dir, or "": it
// would start empty beside a dataset it does not read. With appendonly on,
// Redis reads the AOF alone, and with it off the RDB alone, so turning
// appendonly on in the file over a dataset kept in an RDB, the classic way
// to lose one, would start an empty primary whose first save, and whose
// replicas, make the loss final.
func unreadDataset(dir string, frag []directive) string {
	df := dataFilesOf(frag)
	rdb, aof := rdbFileKeys(filepath.Join(dir, df.rdb)), aofKeys(dir, df)
	switch {
	case df.aof && aof == 0 && rdb > 0:
		return fmt.Sprintf("refusing to start: appendonly is on and %s/ holds no AOF, so redis-server would start empty beside %s, which holds %d keys and which Redis does not read with appendonly on; start with appendonly off, then turn it on (Redis writes the AOF from the dataset, live)", df.aofDir, df.rdb, rdb)
	case !df.aof && rdb == 0 && aof > 0:
		return fmt.Sprintf("refusing to start: appendonly is off and %s holds no keys, so redis-server would start empty beside the AOF in %s/ (%d keys or more), which Redis does not read with appendonly off; turn appendonly on", df.rdb, df.aofDir, aof)
	}
	// Redis refuses such a file and exits; restarted, it refuses it again,
	// and all anyone would see is an exit status. Said once, here, the
	// reason is in lastError and /readyz, and nothing is started.
	if !df.aof {
		if damage := rdbDamage(filepath.Join(dir, df.rdb)); damage != "" {
			return fmt.Sprintf("refusing to start: %s %s; redis-server would refuse to load it. The file is kept as it is: put a good copy in its place, or move targetPrimary to an instance that holds the data and remove it here", df.rdb, damage)
		}
	}
	return ""
}

// rdbCheckBudget bounds the reading of an RDB file before a start: on the
// reconciler's time, and ahead of Redis's own reading of it (which it
// leaves in the page cache). A file too large to read within it is left to
// Redis's judgement.
const rdbCheckBudget = 5 * time.Second

// rdbVerdict is the last file rdbDamage read, so that it is read once
// however often the guard asks: Redis replaces the file by renaming a new
// one over it, which changes the inode.
var rdbVerdict struct {
	sync.Mutex
	id  [5]int64 // device, inode, size, modification and change times
	why string
}

// rdbDamage says what makes the RDB file at path one Redis cannot load, or
// "": it is empty, is no RDB, lacks the end mark its format ends with, or
// fails its CRC64, which Redis checks after loading all of it. A file saved
// without a checksum (rdbchecksum no), or of a format before version 5,
// which has none, passes what it can be checked for.
func rdbDamage(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	id := [5]int64{int64(st.Dev), int64(st.Ino), fi.Size(), fi.ModTime().UnixNano(), st.Ctim.Nano()}
	rdbVerdict.Lock()
	defer rdbVerdict.Unlock()
	if rdbVerdict.id == id {
		return rdbVerdict.why
	}
	why := readRDBDamage(f, fi.Size())
	rdbVerdict.id, rdbVerdict.why = id, why
	return why
}

// redisCRC64 is the table of Redis's CRC-64 (Jones, reflected), the
// checksum of an RDB file's every byte but the last 8, which hold it.
var redisCRC64 = crc64.MakeTable(0x95ac9329ac4bc9b5)

func readRDBDamage(f *os.File, size int64) string {
	if size == 0 {
		return "is empty"
	}
	head := make([]byte, 9) // "REDIS" and the format version
	if _, err := io.ReadFull(f, head); err != nil || string(head[:5]) != "REDIS" {
		return "is not an RDB file"
	}
	version, err := strconv.Atoi(string(head[5:]))
	if err != nil {
		return "is not an RDB file"
	}
	if version < 5 {
		return ""
	}
	if size < 9+9 {
		return "is truncated"
	}
	tail := make([]byte, 9)
	if _, err := f.ReadAt(tail, size-9); err != nil {
		return ""
	}
	if tail[0] != 0xFF { // the EOF opcode, before the checksum
		return "is truncated: it does not end with the end-of-file mark"
	}
	var want uint64 // little-endian
	for i := 8; i >= 1; i-- {
		want = want<<8 | uint64(tail[i])
	}
	if want == 0 {
		return "" // saved without a checksum
	}
	// crc64.Update inverts the checksum before and after; Redis's does not.
	crc, deadline := ^uint64(0), time.Now().Add(rdbCheckBudget)
	crc = crc64.Update(crc, redisCRC64, head)
	buf := make([]byte, 1<<20)
	for left := size - 8 - 9; left > 0; {
		if time.Now().After(deadline) {
			return "" // too large to tell in time: Redis will
		}
		n, err := f.Read(buf[:min(int64(len(buf)), left)])
		crc = crc64.Update(crc, redisCRC64, buf[:n])
		left -= int64(n)
		if err != nil && left > 0 {
			return ""
		}
	}
	if got := ^crc; got != want {
		return fmt.Sprintf("is damaged: its CRC64 is %016x, and the file says %016x", got, want)
	}
	return ""
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
	f, err := os.CreateTemp(dir, atomicTempPrefix(filepath.Base(path))+"*")
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
	syncDir(dir)
	return nil
}

// atomicTempPrefix starts the name of the temp file writeFileAtomic writes
// a file named base through.
func atomicTempPrefix(base string) string { return "." + base + ".tmp-" }

// syncDir makes a rename, link or creation in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// The configuration redis-server runs is brought to the wanted one without a
// restart where Redis allows: the difference between the two, by name, goes
// into one atomic CONFIG SET, and what Redis reads only at start waits for a
// restart, named in pendingRestart.

// confValues is a fragment's directives by name, each occurrence's
// arguments in order.
type confValues map[string][][]string

func valuesOf(ds []directive) confValues {
	v := confValues{}
	for _, d := range ds {
		v[d.name] = append(v[d.name], d.args)
	}
	return v
}

// fileOnly directives have no CONFIG SET: Redis reads them at start only.
var fileOnly = map[string]bool{"rename-command": true, "user": true, "loadmodule": true, "sentinel": true}

// configDiff is what it takes to go from the running values to the wanted.
type configDiff struct {
	set     []any    // name, value, ... for one CONFIG SET
	restart []string // names only a restart applies, sorted
}

// diffConfig compares by name. A directive dropped from the fragment waits
// for a restart too: what its default is, the running server cannot say.
func diffConfig(running, wanted confValues, restartOnly map[string]bool) configDiff {
	names := make([]string, 0, len(running)+len(wanted))
	for n := range running {
		names = append(names, n)
	}
	for n := range wanted {
		if _, ok := running[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	d := configDiff{restart: []string{}}
	for _, n := range names {
		a, b := running[n], wanted[n]
		switch {
		case slices.EqualFunc(a, b, slices.Equal[[]string]):
		case b == nil || fileOnly[n] || restartOnly[n] || n == "client-output-buffer-limit" && droppedClass(a, b):
			d.restart = append(d.restart, n)
		default:
			d.set = append(d.set, n, configValue(n, b))
		}
	}
	return d
}

// configValue is the one CONFIG SET value of a parameter as a file gives it,
// read the way Redis reads the file: save lines add up, and a save "" line
// clears those before it; each client-output-buffer-limit line sets its
// class; any other parameter takes its last line.
func configValue(name string, occs [][]string) string {
	var args []string
	switch name {
	case "save":
		for _, o := range occs {
			if len(o) == 1 && o[0] == "" {
				args = args[:0]
				continue
			}
			args = append(args, o...)
		}
	case "client-output-buffer-limit":
		for _, o := range occs {
			args = append(args, o...)
		}
	default:
		args = occs[len(occs)-1]
	}
	return strings.Join(args, " ")
}

// droppedClass says whether a client class limited before is no longer:
// CONFIG SET leaves a class it is not given as it was, so only a restart
// takes it back to its default.
func droppedClass(running, wanted [][]string) bool {
	for _, r := range running {
		if len(r) > 0 && !slices.ContainsFunc(wanted, func(w []string) bool { return len(w) > 0 && strings.EqualFold(w[0], r[0]) }) {
			return true
		}
	}
	return false
}

// immutableArg is how Redis names a parameter it cannot change at run time.
var immutableArg = regexp.MustCompile(`argument '([^']+)'\) - can't set (?:immutable|protected) config`)

// configSet applies the run-time part of a change with one atomic CONFIG
// SET. A parameter Redis calls immutable is learnt as such into
// restartOnly, moved to the restart part, and the rest tried again: no
// table of them is right for every Redis version. Any other refusal refuses
// the whole change, and Redis runs on as before.
func configSet(c redis.Conn, d *configDiff, restartOnly map[string]bool) error {
	for len(d.set) > 0 {
		_, err := c.Do("CONFIG", append([]any{"SET"}, d.set...)...)
		if err == nil {
			return nil
		}
		m := immutableArg.FindStringSubmatch(err.Error())
		if _, refused := err.(redis.Error); !refused || m == nil {
			return err
		}
		i := slices.Index(d.set, any(m[1]))
		if i < 0 || i%2 != 0 {
			return err
		}
		restartOnly[m[1]] = true
		d.set = slices.Delete(d.set, i, i+2)
		d.restart = append(d.restart, m[1])
		slices.Sort(d.restart)
	}
	return nil
}

// configHash identifies the configuration redis-server runs: the user's
// parameters as applied, at start or live since. The credentials are not in
// it: the hash is published, and must not let anyone test guesses of the
// password against it.
func configHash(v confValues) string {
	names := make([]string, 0, len(v))
	for n := range v {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		for _, args := range v[n] {
			h.Write([]byte(quoteArg(n)))
			for _, a := range args {
				h.Write([]byte(" " + quoteArg(a)))
			}
			h.Write([]byte("\n"))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
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
		b.WriteString(quoteArg(d.name))
		for _, a := range d.args {
			b.WriteString(" " + quoteArg(a))
		}
		b.WriteByte('\n')
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

// sensitiveDirectives carry a password in their arguments: an error names
// them, never quotes them.
var sensitiveDirectives = map[string]bool{"user": true, "tls-key-file-pass": true, "tls-client-key-file-pass": true,
	"requirepass": true, "masterauth": true}

// secretsIn lists what a configuration holds that no message may show: the
// arguments of the directives that carry a password, and of a user's rules
// those that set, remove or hash one (>, <, #, !), with and without their
// mark. Redis quotes a rule it refuses as it was written, so it is found
// whole.
func secretsIn(ds []directive) []string {
	var out []string
	for _, d := range ds {
		switch {
		case d.name == "user":
			for _, a := range d.args[min(1, len(d.args)):] {
				if a != "" && strings.ContainsRune("><#!", rune(a[0])) {
					out = append(out, a, a[1:])
				}
			}
		case sensitiveDirectives[d.name]:
			out = append(out, d.args...)
		}
	}
	return out
}

// redact takes every secret out of text, the longest first, so that one
// that holds another is taken out whole.
func redact(text string, secrets []string) string {
	secrets = slices.Clone(secrets)
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "(secret)")
		}
	}
	return text
}

var fatalConfig = regexp.MustCompile(`FATAL CONFIG FILE ERROR.*\n.*at line (\d+)\n>>> '(.*)'\n(.*)`)

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// persistent says whether a configuration writes the dataset to disk: with
// neither AOF nor a save point, a restart comes back empty.
func persistent(v confValues) bool {
	if ao := v["appendonly"]; len(ao) > 0 && len(ao[len(ao)-1]) == 1 && strings.EqualFold(ao[len(ao)-1][0], "yes") {
		return true
	}
	saves, set := v["save"]
	if !set {
		return true // Redis's default save points
	}
	for _, args := range saves {
		for _, a := range args {
			if a != "" {
				return true
			}
		}
	}
	return false
}

// The reconciler's side of the configuration: a new fragment is checked by
// redis-server, applied to the running one where it can be, and only then
// written to redis.conf; whatever only a restart applies is pending.

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
	if err == nil && r.checkConfig != nil {
		err = r.checkConfig(frag)
	}
	if err == nil {
		err = r.setLive(valuesOf(frag), began)
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

// reachable says whether the running redis-server answered since it started.
func (r *reconciler) reachable() bool {
	sup := r.sup.snapshot()
	return sup.running && r.obs != nil && r.obs.err == nil && !r.obs.at.Before(sup.startedAt)
}

// resetApplied takes what a newly started redis-server runs from the
// redis.conf it read: its fragment and its password.
func (r *reconciler) resetApplied() {
	sup := r.sup.snapshot()
	if sup.startedAt.Equal(r.appliedFor) {
		return
	}
	frag, _ := fragmentOf(sup.startedConf)
	r.applied, r.appliedFor = valuesOf(frag), sup.startedAt
	r.liveRefused, r.liveErr = "", ""
	pw := confPassword(sup.startedConf)
	r.auth = authState{accepted: []string{pw}, masterauth: pw}
	r.publishCredentials()
}

// setLive applies to the running redis-server what of wanted it can take at
// run time. It returns an error only when Redis refuses the change, which
// then is not made; a server that does not answer now gets it from syncLive
// once it does.
func (r *reconciler) setLive(wanted confValues, began time.Time) error {
	if !r.reachable() {
		return nil
	}
	r.resetApplied()
	d := diffConfig(r.applied, wanted, r.restartOnly)
	if len(d.set) == 0 {
		return nil
	}
	c, err := dialRedis(localAddr(r.settings.redisPort), r.credentials(), redisTimeout)
	if err != nil {
		r.log.Warn("cannot apply the configuration live yet", "error", err)
		return nil
	}
	defer c.Close()
	if err := configSet(c, &d, r.restartOnly); err != nil {
		if _, refused := err.(redis.Error); refused {
			return refusal{fmt.Errorf("redis-server refuses the new configuration: %w", err)}
		}
		r.log.Warn("cannot apply the configuration live yet", "error", err)
		return nil
	}
	names := make([]string, 0, len(d.set)/2)
	for i := 0; i < len(d.set); i += 2 {
		n := d.set[i].(string)
		r.applied[n] = wanted[n]
		names = append(names, n)
	}
	r.liveRefused, r.liveErr = "", ""
	if len(names) > 0 {
		r.log.Info("applied configuration live", "parameters", names, "pendingRestart", d.restart, "took", time.Since(began).Round(time.Microsecond).String())
	}
	return nil
}

// syncLive brings a running redis-server to the accepted fragment: after a
// change that came while it did not answer, or after it restarted on an
// older redis.conf.
func (r *reconciler) syncLive() {
	if !r.fragmentOK || !r.reachable() {
		return
	}
	r.resetApplied()
	d := diffConfig(r.applied, r.wantedValues, r.restartOnly)
	if len(d.set) == 0 || fmt.Sprint(d.set...) == r.liveRefused {
		return
	}
	if err := r.setLive(r.wantedValues, time.Now()); err != nil {
		counts.configErrors.Add(1)
		r.liveRefused, r.liveErr = fmt.Sprint(d.set...), err.Error()+"; it applies at the next restart"
		r.log.Error("redis-server refuses a configuration change live", "error", err)
	}
}

// configStatus is configHash and pendingRestart of the running server.
func (r *reconciler) configStatus() (string, []string) {
	r.resetApplied()
	return configHash(r.applied), diffConfig(r.applied, r.wantedValues, r.restartOnly).restart
}

// Credentials rotate without a refused client or a dropped replication
// link: the new password is accepted beside the old one (the default user
// may have several), replicas authenticate with the new one as soon as
// their primary takes it, and the old one goes only after the rotation
// window, once every connected replica has switched.
//
// Turning authentication on or off is one step: Redis refuses AUTH while
// the default user has no password, and a client without AUTH once it has
// one, so the two cannot both work for a while.

// authState is what the running redis-server's default user accepts, as
// this manager set it, and what it authenticates to its primary with.
type authState struct {
	accepted   []string // newest first; [""] is no password (nopass)
	masterauth string
	since      time.Time // when the newest was added
	nextProbe  time.Time // when other instances may be asked again
}

// credentials are the passwords the manager's connections offer, in order:
// what the server accepts, then the wanted one it may have been started on.
func (r *reconciler) credentials() []string { return *r.creds.Load() }

func (r *reconciler) publishCredentials() {
	list := slices.Clone(r.auth.accepted)
	if !slices.Contains(list, r.view.password) {
		list = append(list, r.view.password)
	}
	r.creds.Store(&list)
}

// A password is offered only to the local redis-server and to the other
// instances at the addresses their status entries publish. An address that
// Redis reports is a client's word: a replica announces its own (REPLCONF
// listening-port and ip-address), and whoever holds the password can point
// a server at any master (REPLICAOF). Dialled with the manager's
// credentials, such an address would hand the password, during a rotation
// the new one too, to whoever listens there.

// publishPeers takes the other instances' addresses from the cluster's
// status.
func (r *reconciler) publishPeers(rc *redisCluster) {
	peers := map[string]bool{}
	for pod, e := range rc.Status.InstancesStatus {
		if pod != r.settings.podName && e.Address != "" {
			peers[canonicalAddr(e.Address)] = true
		}
	}
	r.peers.Store(&peers)
}

// isPeer says whether addr, as Redis reports it (joinHostPort), is another
// instance's published address: the only remote addresses the manager's
// connections, and so its passwords, may go to. Safe from any goroutine.
func (r *reconciler) isPeer(addr string) bool { return (*r.peers.Load())[addr] }

// probeEvery spaces out the rotation's questions to other instances, which
// the reconciler waits for.
const probeEvery = 5 * time.Second

// rotateAuth takes the running redis-server one step towards the wanted
// password; each step is retried on the next look at Redis until it holds.
func (r *reconciler) rotateAuth() {
	if !r.haveView || !r.reachable() {
		return
	}
	r.resetApplied()
	want, a := r.view.password, &r.auth
	if slices.Equal(a.accepted, []string{want}) && a.masterauth == want {
		r.authErr = ""
		return
	}
	r.publishCredentials()
	me := localAddr(r.settings.redisPort)
	fail := func(what string, err error) {
		msg := what + ": " + secretFree(err)
		if msg != r.authErr {
			r.log.Error(what, "error", secretFree(err))
		}
		r.authErr = msg
	}
	if !slices.Contains(a.accepted, want) {
		rules := []any{">" + want}
		if want == "" || slices.Equal(a.accepted, []string{""}) {
			rules = []any{"resetpass", passRule(want)}
		}
		if err := aclSetDefault(me, r.credentials(), rules...); err != nil {
			fail("cannot give redis-server the new password", err)
			return
		}
		if len(rules) == 2 {
			a.accepted = []string{want}
			r.log.Info("redis-server authentication switched", "passwordRequired", want != "")
		} else {
			a.accepted, a.since = append([]string{want}, a.accepted...), time.Now()
			r.log.Info("redis-server accepts the new password beside the old one", "rotationWindow", r.settings.rotationWindow.String())
		}
		r.publishCredentials()
	}
	if a.masterauth != want && time.Now().After(a.nextProbe) {
		// A replica's primary must take the new password first, or the
		// next reconnection of the link would be refused.
		master := joinHostPort(r.obs.info["master_host"], r.obs.info["master_port"])
		if r.obs.role() != "slave" || r.isPeer(master) && passwordWorks(master, want) {
			err := withRedis(me, r.credentials(), redisTimeout, func(c redis.Conn) error {
				_, err := c.Do("CONFIG", "SET", "masterauth", want)
				return err
			})
			if err != nil {
				fail("cannot switch masterauth to the new password", err)
				return
			}
			a.masterauth = want
			r.log.Info("replication authenticates with the new password")
		} else {
			a.nextProbe = time.Now().Add(probeEvery)
		}
	}
	if len(a.accepted) == 1 || time.Since(a.since) < r.settings.rotationWindow {
		r.authErr = ""
		return
	}
	if r.obs.role() == "master" {
		if !time.Now().After(a.nextProbe) {
			return
		}
		if waiting := replicasBehind(r.obs.info, want, r.isPeer); waiting != "" {
			a.nextProbe = time.Now().Add(probeEvery)
			r.authErr = "the old password stays until the replica at " + waiting + " authenticates with the new one"
			return
		}
	}
	if err := aclSetDefault(me, r.credentials(), "resetpass", passRule(want)); err != nil {
		fail("cannot remove the old password", err)
		return
	}
	a.accepted, r.authErr = []string{want}, ""
	r.publishCredentials()
	r.log.Info("the old password no longer works: the rotation is complete")
}

func passRule(pw string) string {
	if pw == "" {
		return "nopass"
	}
	return ">" + pw
}

func aclSetDefault(addr string, creds []string, rules ...any) error {
	return withRedis(addr, creds, redisTimeout, func(c redis.Conn) error {
		_, err := c.Do("ACL", append([]any{"SETUSER", "default"}, rules...)...)
		return err
	})
}

// passwordWorks says whether the Redis at addr takes pw: AUTH succeeds, or,
// for no password, a PING without one.
func passwordWorks(addr, pw string) bool {
	return withRedis(addr, nil, redisTimeout, func(c redis.Conn) error {
		if pw == "" {
			_, err := c.Do("PING")
			return err
		}
		_, err := c.Do("AUTH", pw)
		return err
	}) == nil
}

// replicasBehind names a connected replica that does not yet authenticate
// with want, or "": each that is another instance of the cluster is asked,
// with want, for its masterauth. Any other connection that calls itself a
// replica is neither asked nor waited for: the old password goes when the
// window ends, whoever still uses it.
func replicasBehind(info redisInfo, want string, isPeer func(addr string) bool) string {
	for i := 0; ; i++ {
		line, ok := info[fmt.Sprintf("slave%d", i)]
		if !ok {
			return ""
		}
		fields := map[string]string{}
		for _, kv := range strings.Split(line, ",") {
			k, v, _ := strings.Cut(kv, "=")
			fields[k] = v
		}
		if fields["port"] == "0" {
			continue // a backup's sync, not a replica: it announces no port
		}
		addr := joinHostPort(fields["ip"], fields["port"])
		if !isPeer(addr) {
			continue
		}
		var got []string
		err := withRedis(addr, []string{want}, redisTimeout, func(c redis.Conn) error {
			var err error
			got, err = redis.Strings(c.Do("CONFIG", "GET", "masterauth"))
			return err
		})
		if err != nil || len(got) != 2 || got[1] != want {
			return addr
		}
	}
}

// secretFree is an error of a command that carried a password, told
// without Redis's text: Redis quotes the arguments it refuses, cut short
// and with line breaks replaced, so no search and replace could be sure to
// take the password out. Its first word (ERR, NOPERM, ...) says enough.
func secretFree(err error) string {
	var re redis.Error
	if errors.As(err, &re) {
		word, _, _ := strings.Cut(string(re), " ")
		return "redis-server answered " + word
	}
	return err.Error() // a connection error, which quotes nothing sent
}
