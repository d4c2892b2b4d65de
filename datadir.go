package main

// The data directory holds two kinds of files that must never meet: Redis's
// dataset, under the names the fragment gives it (dbfilename,
// appendfilename, appenddirname), and the manager's own. Every file the
// manager keeps there is redis.conf, the temp file redis.conf is written
// through, or lives in its private directory (restores under way, checks
// of a fragment, the handoff of an upgrade, and whatever comes later):
// managerNames lists them once. A fragment that would point a file of
// Redis's at one of them, or out of the data directory, is refused, and
// the manager removes files only inside its private directory (and an
// older version's handoff, only when it reads as one). So a
// dataset is never taken for a leftover of the manager's and deleted, and
// the manager's redis.conf is never loaded as a dataset.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const (
	confName       = "redis.conf"
	privateDirName = ".redis-operator"
)

// managerNames are the patterns (filepath.Match) of every name the manager
// uses in the data directory. The private directory's name is a prefix:
// the probe of the directory's writability starts with it too.
var managerNames = []string{confName, atomicTempPrefix(confName) + "*", privateDirName + "*"}

// privateDir is where the manager keeps its own files in the data
// directory: nothing in it outlives the manager that wrote it.
func privateDir(dataDir string) string { return filepath.Join(dataDir, privateDirName) }

// checkDataDir makes the data directory and the private one if needed, and
// proves the data directory writable: finding out when redis-server first
// saves would be too late.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if err := os.MkdirAll(privateDir(dir), 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	f, err := os.CreateTemp(dir, privateDirName+"-writable-*")
	if err != nil {
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// clearPrivateDir removes what a manager that ended abruptly left in its
// private directory: a restore's temp file may be a whole backup, and a
// handoff that was never read holds a password.
func clearPrivateDir(dataDir string) {
	entries, _ := os.ReadDir(privateDir(dataDir))
	for _, e := range entries {
		os.RemoveAll(filepath.Join(privateDir(dataDir), e.Name()))
	}
}

// privateTemp makes a directory of the caller's own in the private
// directory, which is made again should it have gone.
func privateTemp(dataDir, prefix string) (string, error) {
	if err := os.MkdirAll(privateDir(dataDir), 0o700); err != nil {
		return "", err
	}
	return os.MkdirTemp(privateDir(dataDir), prefix)
}

// dataFileDirectives name files of Redis's in the data directory.
var dataFileDirectives = map[string]string{"dbfilename": "file", "appendfilename": "file", "appenddirname": "directory"}

// checkDataFileName refuses a name for one of Redis's data files that is not
// a plain name in the data directory, or that is one the manager uses.
// Redis 7.0 itself refuses a path for each, but takes ".." as appenddirname.
func checkDataFileName(directive, name string) error {
	kind := dataFileDirectives[directive]
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%s %q does not name a %s in the data directory", directive, name, kind)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("%s %q is a path: it must name a %s in the data directory", directive, name, kind)
	}
	for _, pattern := range managerNames {
		if ok, _ := filepath.Match(pattern, name); ok {
			return fmt.Errorf("%s %q is a name the manager uses in the data directory (%s): Redis's data must not share it", directive, name, strings.Join(managerNames, ", "))
		}
	}
	return nil
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
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: make it durable: %w", path, err)
	}
	return nil
}

// atomicTempPrefix starts the name of the temp file writeFileAtomic writes
// a file named base through.
func atomicTempPrefix(base string) string { return "." + base + ".tmp-" }

// syncDir makes a rename, link or creation in dir durable: until then, a
// crash of the node may undo it.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
