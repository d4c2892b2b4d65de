package main

// Fencing takes one instance, or all of them, out of service without
// deleting anything: redis-server is stopped at once, its data stays on disk,
// and it is not started again until the annotation lets it go. The manager
// keeps running and reporting, so the operator can see and undo the fence.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

const fencedAnnotation = "redisoperator.io/fencedInstances"

// fenceStop is how a fenced redis-server is stopped: NOW skips waiting for
// lagging replicas, since a fence is wanted at once; Redis still saves as
// its persistence settings say, so nothing on disk is lost.
var fenceStop = []string{"SHUTDOWN", "NOW"}

// isFenced reads the annotation: a JSON array of pod names, "*" for all.
// An error leaves the caller's current fencing as it is.
func isFenced(annotations map[string]string, pod string) (bool, error) {
	v, ok := annotations[fencedAnnotation]
	if !ok || strings.TrimSpace(v) == "" {
		return false, nil
	}
	var names []string
	if err := json.Unmarshal([]byte(v), &names); err != nil {
		return false, fmt.Errorf("annotation %s must be a JSON array of pod names such as [\"%s\"] or [\"*\"]: %w", fencedAnnotation, pod, err)
	}
	return slices.Contains(names, pod) || slices.Contains(names, "*"), nil
}
