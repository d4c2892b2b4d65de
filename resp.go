package main

// RESP, the Redis protocol, as the discovery port reads requests and writes
// replies: RESP2, and RESP3 after HELLO 3. What a client sends is bounded
// (maxArgs arguments of maxArgLen bytes); what is not RESP, or larger, is a
// protocolError.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A command is a few short words: what is larger is no client's.
const (
	maxArgs   = 64
	maxArgLen = 64 << 10
)

// protocolError is a request that is not RESP, or too large: answered,
// and the connection closed.
type protocolError string

func (e protocolError) Error() string { return string(e) }

// readCommand reads one command: an array of bulk strings, as clients send
// them, or an inline line, as a human at telnet does.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	if line == "" || line[0] != '*' {
		args := strings.Fields(line)
		if len(args) > maxArgs {
			return nil, protocolError("too many arguments in an inline request")
		}
		return args, nil
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n > maxArgs {
		return nil, protocolError("invalid multibulk length")
	}
	args := make([]string, 0, max(n, 0))
	for range n {
		head, err := readLine(r)
		if err != nil {
			return nil, err
		}
		if head == "" || head[0] != '$' {
			return nil, protocolError(fmt.Sprintf("expected '$', got '%.1s'", head))
		}
		size, err := strconv.Atoi(head[1:])
		if err != nil || size < 0 || size > maxArgLen {
			return nil, protocolError("invalid bulk length")
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		if buf[size] != '\r' || buf[size+1] != '\n' {
			return nil, protocolError("bulk string not followed by CRLF")
		}
		args = append(args, string(buf[:size]))
	}
	return args, nil
}

// readLine reads a line ended by CRLF (or LF), at most maxArgLen long.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		part, err := r.ReadSlice('\n')
		b = append(b, part...)
		if len(b) > maxArgLen {
			return "", protocolError("too big inline request")
		}
		if err == nil {
			return strings.TrimRight(string(b), "\r\n"), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
	}
}

// respWriter writes replies in RESP2, or in RESP3 after HELLO 3.
type respWriter struct {
	w     *bufio.Writer
	resp3 bool
}

func (w *respWriter) ok() { w.status("OK") }

func (w *respWriter) status(s string) { w.w.WriteString("+" + s + "\r\n") }

func (w *respWriter) err(s string) { w.w.WriteString("-" + s + "\r\n") }

func (w *respWriter) int(n int64) { w.w.WriteString(":" + strconv.FormatInt(n, 10) + "\r\n") }

func (w *respWriter) array(n int) { w.w.WriteString("*" + strconv.Itoa(n) + "\r\n") }

func (w *respWriter) bulk(s string) {
	w.w.WriteString("$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n")
}

func (w *respWriter) bulks(ss ...string) {
	for _, s := range ss {
		w.bulk(s)
	}
}

// null is a missing value: RESP2's null bulk string.
func (w *respWriter) null() {
	if w.resp3 {
		w.w.WriteString("_\r\n")
	} else {
		w.w.WriteString("$-1\r\n")
	}
}

// nullArray is a missing array, as Sentinel answers an unknown master.
func (w *respWriter) nullArray() {
	if w.resp3 {
		w.w.WriteString("_\r\n")
	} else {
		w.w.WriteString("*-1\r\n")
	}
}

// fields starts n field/value pairs: a map in RESP3, a flat array in RESP2.
func (w *respWriter) fields(n int) {
	if w.resp3 {
		w.w.WriteString("%" + strconv.Itoa(n) + "\r\n")
	} else {
		w.array(2 * n)
	}
}

// push starts a pub/sub message: a push in RESP3, an array in RESP2.
func (w *respWriter) push(n int) {
	if w.resp3 {
		w.w.WriteString(">" + strconv.Itoa(n) + "\r\n")
	} else {
		w.array(n)
	}
}

// verbatim is INFO's text: a verbatim string in RESP3, bulk in RESP2.
func (w *respWriter) verbatim(s string) {
	if w.resp3 {
		w.w.WriteString("=" + strconv.Itoa(len(s)+4) + "\r\ntxt:" + s + "\r\n")
	} else {
		w.bulk(s)
	}
}

// quoteForError is how Redis quotes what a client sent in an error: cut
// short, without line breaks.
func quoteForError(s string) string {
	if len(s) > 128 {
		s = s[:128]
	}
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

func quoteArgsForError(args []string) string {
	var b strings.Builder
	for _, a := range args {
		if b.Len() > 128 {
			break
		}
		fmt.Fprintf(&b, "'%s' ", quoteForError(a))
	}
	return b.String()
}
