# The instance manager's image: the static binary and nothing else. It is
# not the Redis container's image: an init container of this image copies
# the binary into a volume shared with the stock Redis container, which runs
# it as its command, so the manager is PID 1 beside redis-server:
#
#   initContainers: [{image: <this>, command: [/redis-operator, install, --keep-existing, /controller/redis-operator]}]
#   containers:     [{image: redis:7, command: [/controller/redis-operator, instance]}]
#
# deploy/statefulset.yaml does exactly that. Build with
#   docker build --build-arg VERSION=$(git describe --always) --build-arg COMMIT=$(git rev-parse --short HEAD) -t redis-operator .

FROM golang:1.26-bookworm AS build
ARG VERSION=dev
ARG COMMIT=unknown
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY *.go ./
# The same flags as `make build`: static (no cgo), no local paths, stripped.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X main.version=$VERSION -X main.commit=$COMMIT" \
      -o /out/redis-operator . \
 && /out/redis-operator version

FROM scratch
COPY --from=build /out/redis-operator /redis-operator
# Any non-root user: the binary needs no account, and install writes only
# into the volume it is given.
USER 65532:65532
ENTRYPOINT ["/redis-operator"]
CMD ["version"]
