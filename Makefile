# The two commands of the README, the benchmarks, and a build.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

.PHONY: local local-down test bench build
local:
	hack/local-cluster.sh up
local-down:
	hack/local-cluster.sh down
test:
	hack/test.sh
bench:
	hack/bench.sh
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o bin/redis-operator .
