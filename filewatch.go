package main

// Local mode's news of a change: inotify on the directories that hold the
// cluster file and the status entries, so that an edit of the file, or
// another instance's new entry, is read at once instead of at the next
// poll. The poll stays, slower, for what inotify does not see (a file
// system without it, a directory replaced, a symlink swapped elsewhere),
// and when inotify cannot be had at all, the poll is as quick as before.

import (
	"bytes"
	"context"
	byteorder "encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// watchedDir is a directory to watch, and which of its names matter.
type watchedDir struct {
	path    string
	matters func(name string) bool
}

// dirWatch tells of a change in its directories on changed: one signal for
// however many events came at once, never blocking the reader.
type dirWatch struct {
	changed chan struct{}
}

// Completed writes and renames into the directory: an editor's save, sed
// -i, writeFileAtomic's rename. A file being created is not news until it
// is closed: reading it earlier would see half of it.
const watchMask = syscall.IN_CLOSE_WRITE | syscall.IN_MOVED_TO

// watchDirs starts watching until ctx ends. An error means no inotify (the
// caller polls quickly instead).
func watchDirs(ctx context.Context, dirs ...watchedDir) (*dirWatch, error) {
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	// Non-blocking, the file reads through Go's poller, and Close ends a
	// read under way.
	f := os.NewFile(uintptr(fd), "inotify")
	matters := map[int32]func(string) bool{}
	for _, d := range dirs {
		wd, err := syscall.InotifyAddWatch(fd, d.path, watchMask)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("inotify on %s: %w", d.path, err)
		}
		matters[int32(wd)] = d.matters
	}
	w := &dirWatch{changed: make(chan struct{}, 1)}
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go w.read(f, matters)
	return w, nil
}

// read turns each batch of events into at most one signal. A lost batch
// (the kernel's queue overflowed) or a watch gone (its directory removed)
// is a change too: the reader reads everything again.
func (w *dirWatch) read(f io.Reader, matters map[int32]func(string) bool) {
	buf := make([]byte, 16*(syscall.SizeofInotifyEvent+syscall.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.signal() // the poll carries on alone
			}
			return
		}
		if eventsMatter(buf[:n], matters) {
			w.signal()
		}
	}
}

// eventsMatter says whether a batch of inotify events names a file that
// matters, or says that events were lost.
func eventsMatter(batch []byte, matters map[int32]func(string) bool) bool {
	for len(batch) >= syscall.SizeofInotifyEvent {
		wd := int32(byteorder.NativeEndian.Uint32(batch[0:]))
		mask := byteorder.NativeEndian.Uint32(batch[4:])
		size := int(byteorder.NativeEndian.Uint32(batch[12:]))
		end := min(len(batch), syscall.SizeofInotifyEvent+size)
		name := string(bytes.TrimRight(batch[syscall.SizeofInotifyEvent:end], "\x00"))
		batch = batch[end:]
		if mask&(syscall.IN_Q_OVERFLOW|syscall.IN_IGNORED) != 0 {
			return true
		}
		if m := matters[wd]; m != nil && m(name) {
			return true
		}
	}
	return false
}

func (w *dirWatch) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}
