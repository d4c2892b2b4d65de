package main

// redis.conf is the user's fragment followed by the directives only this pod
// can know. The fragment is parsed the way Redis parses its own file, so that
// what we refuse and what Redis would read are the same thing, and it is
// rendered back canonically: the hash then changes only when a setting does.

import (
	"fmt"
	"maps"
	"os"
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
	"port":                     "the manager sets it from --redis-port",
	"bind":                     "the manager binds all interfaces so that the other instances can reach this one",
	"dir":                      "the manager sets it from --data-dir",
	"daemonize":                "redis-server must stay in the foreground as the manager's child",
	"supervised":               "the manager is the supervisor",
	"pidfile":                  "the manager tracks redis-server's PID itself",
	"logfile":                  "redis-server logs to the manager, which re-emits its lines",
	"include":                  "the whole configuration must come from the ConfigMap",
	"replicaof":                "roles follow spec.targetPrimary",
	"slaveof":                  "roles follow spec.targetPrimary",
	"masterauth":               "credentials come from spec.authSecretRef",
	"masteruser":               "credentials come from spec.authSecretRef",
	"requirepass":              "credentials come from spec.authSecretRef",
	"replica-announce-ip":      "the manager sets it from --announce-host",
	"replica-announce-port":    "the manager sets it from --redis-port",
	"slave-announce-ip":        "the manager sets it from --announce-host",
	"slave-announce-port":      "the manager sets it from --redis-port",
	"protected-mode":           "the manager must reach redis-server and so must the other instances",
	"aclfile":                  "the default user's passwords come from spec.authSecretRef, and an ACL file would replace them",
	"tls-port":                 "spec.tls serves TLS on --redis-port",
	"tls-cert-file":            "the certificate comes from spec.tls",
	"tls-key-file":             "the certificate comes from spec.tls",
	"tls-key-file-pass":        "the certificate comes from spec.tls",
	"tls-client-cert-file":     "the certificate comes from spec.tls",
	"tls-client-key-file":      "the certificate comes from spec.tls",
	"tls-client-key-file-pass": "the certificate comes from spec.tls",
	"tls-ca-cert-file":         "the CA comes from spec.tls",
	"tls-ca-cert-dir":          "the CA comes from spec.tls",
	"tls-replication":          "replication uses TLS the way the primary serves it",
	"tls-auth-clients":         "spec.tls.clientAuth sets it",
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
			return nil, fmt.Errorf("redis.conf fragment line %d: the default user is declared in spec.users, or keeps the spec.authSecretRef password", d.line)
		}
		if d.name == "user" && len(d.args) > 0 && d.args[0] == operatorUser {
			return nil, fmt.Errorf("redis.conf fragment line %d: %q is the manager's own user", d.line, operatorUser)
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

// podConfig is what only this pod knows, rendered after the fragment.
type podConfig struct {
	dataDir      string
	port         int
	announceHost string
	replicaOf    string // "host:port" of the primary to follow; empty for the primary
	password     string
	tls          *podTLS             // nil: plaintext
	users        map[string][]string // ACL users by name, as ACL SETUSER arguments: users.go
	ownDefault   bool                // spec.users declares the default user: no requirepass
}

// podTLS is redis.conf's TLS: the files the manager keeps, whether
// clients must show a certificate, and whether the primary is reached over
// TLS (the way it serves; see redistls.go).
type podTLS struct {
	cert, key, ca string
	authClients   string // no, optional, yes
	replication   bool
}

// directiveLine is one line of redis.conf as the manager writes it: the
// name and the arguments, each quoted so that Redis reads it back as it was.
func directiveLine(name string, args ...string) string {
	var b strings.Builder
	b.WriteString(quoteArg(name))
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(quoteArg(a))
	}
	b.WriteByte('\n')
	return b.String()
}

// renderConfig returns the whole redis.conf for a fragment and this pod.
func renderConfig(fragment []directive, pod podConfig) (string, error) {
	var b strings.Builder
	b.WriteString("# Generated by redis-operator; edit the ConfigMap, not this file.\n")
	line := func(name string, args ...string) { b.WriteString(directiveLine(name, args...)) }
	for _, d := range fragment {
		line(d.name, d.args...)
	}
	b.WriteString(ownedMarker)
	port := strconv.Itoa(pod.port)
	if t := pod.tls; t != nil {
		line("port", "0") // TLS only: a plaintext client gets nothing
		line("tls-port", port)
		line("tls-cert-file", t.cert)
		line("tls-key-file", t.key)
		line("tls-ca-cert-file", t.ca)
		line("tls-auth-clients", t.authClients)
		line("tls-replication", map[bool]string{true: "yes", false: "no"}[t.replication])
	} else {
		line("port", port)
	}
	line("bind", "*", "-::*")
	line("protected-mode", "no")
	line("dir", pod.dataDir)
	line("daemonize", "no")
	line("supervised", "no")
	line("pidfile", "")
	line("logfile", "")
	line("replica-announce-ip", pod.announceHost)
	line("replica-announce-port", port)
	if pod.password != "" && !pod.ownDefault {
		line("requirepass", pod.password)
	}
	if pod.password != "" {
		line("masterauth", pod.password)
	}
	line("masteruser", operatorUser)
	for _, name := range slices.Sorted(maps.Keys(pod.users)) {
		line("user", append([]string{name}, pod.users[name]...)...)
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

// servesTLS says whether a redis.conf the manager wrote has redis-server
// serve TLS.
func servesTLS(conf string) bool {
	port := confSetting(conf, "tls-port")
	return port != "" && port != "0"
}

// confSetting is the last value of a one-argument directive in a
// redis.conf, or "": confSetting(conf, "requirepass") is the password the
// redis-server started on it answers to.
func confSetting(conf, name string) string {
	ds, _ := parseConf(conf)
	v := ""
	for _, d := range ds {
		if d.name == name && len(d.args) == 1 {
			v = d.args[0]
		}
	}
	return v
}
