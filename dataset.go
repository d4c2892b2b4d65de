package main

// The dataset on disk, as the guards read it before a start: which files
// Redis would load (the RDB, or the AOF directory), how many keys they hold,
// and whether Redis could load them at all.

import (
	"bufio"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

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

// emptyPrimaryGuard is the supervisor's restart guard: a primary that
// comes back empty after a crash (persistence off, or its files lost) would
// have its replicas copy the loss. primaryKeys is what it held as the
// primary, as the reconciler last published it.
func emptyPrimaryGuard(dataDir string, primaryKeys *atomic.Int64) func(conf string) string {
	return func(conf string) string {
		held := primaryKeys.Load()
		if held == 0 {
			return ""
		}
		frag, _ := parseConf(conf)
		if datasetKeys(dataDir, frag) > 0 {
			return ""
		}
		return fmt.Sprintf("refusing to restart redis-server as the primary with an empty dataset: it held %d keys, and its replicas would copy the loss; move targetPrimary to a replica", held)
	}
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

// rdbHeaderLen is the length of an RDB file's header: "REDIS" and the
// format version in four digits.
const rdbHeaderLen = 9

// rdbVersion reads an RDB file's header: its format version, and whether
// it is one.
func rdbVersion(head []byte) (int, bool) {
	if len(head) < rdbHeaderLen || string(head[:5]) != "REDIS" {
		return 0, false
	}
	v, err := strconv.Atoi(string(head[5:rdbHeaderLen]))
	return v, err == nil
}

// redisCRC64 is the table of Redis's CRC-64 (Jones, reflected), the
// checksum of an RDB file's every byte but the last 8, which hold it.
var redisCRC64 = crc64.MakeTable(0x95ac9329ac4bc9b5)

func readRDBDamage(f *os.File, size int64) string {
	if size == 0 {
		return "is empty"
	}
	head := make([]byte, rdbHeaderLen)
	if _, err := io.ReadFull(f, head); err != nil {
		return "is not an RDB file"
	}
	version, ok := rdbVersion(head)
	if !ok {
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
	head := make([]byte, rdbHeaderLen)
	if _, err := io.ReadFull(r, head); err != nil {
		return 1
	}
	if _, ok := rdbVersion(head); !ok {
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
