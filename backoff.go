package main

// Everything the manager retries (a redis-server that keeps dying, a watch
// the API server keeps refusing, a status write, a restore) is retried the
// same way: quickly at first, then ever more slowly, and quickly again once
// it has worked for a while.

import "time"

// The supervisor's, the source's and the status writer's retries: from a
// tenth of a second to half a minute; a minute of health starts anew.
const (
	backoffMin     = 100 * time.Millisecond
	backoffMax     = 30 * time.Second
	healthyRunTime = time.Minute
)

// backoff is the wait before the next retry: min the first time, twice the
// last wait after that, at most max.
type backoff struct {
	min, max time.Duration
	last     time.Duration
}

func newBackoff() backoff { return backoff{min: backoffMin, max: backoffMax} }

// next is the wait before the next retry, which it counts.
func (b *backoff) next() time.Duration {
	if b.last == 0 {
		b.last = b.min
	} else {
		b.last = min(2*b.last, b.max)
	}
	return b.last
}

// reset starts the count anew: what failed has worked.
func (b *backoff) reset() { b.last = 0 }
