# ftpalg: the README's commands live here.
#   make demo   the namespace lab: ftpalg on a router, a passive and an active transfer through NAT
#   make test   everything CI runs: gofmt, go vet, all tests with the race detector (root: e2e too)

export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# An execution count, not a duration, for CI: with a duration the fuzzer's own timer can fire
# while a worker minimizes a new input, and the run fails with "context deadline exceeded".
FUZZTIME ?= 200000x

.PHONY: all build deps test fmt-check vet unit fuzz-short fuzz demo bench bench-short bench-go clean image manifests

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ftpalg ./cmd/ftpalg

deps:
	bash .ci/deps

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./...

# Every Fuzz target for a short budget each, seeded from testdata/fuzz.
# The short mode starts from the committed seeds only: inputs a long run left in the machine's
# fuzz cache make the fuzzer's baseline-coverage pass outlast a few seconds ("context
# deadline exceeded").
FUZZCLEAN ?= 1
fuzz-short:
	@if [ "$(FUZZCLEAN)" = 1 ]; then $(GO) clean -fuzzcache; fi
	@set -e; for pkg in ./alg ./nat ./conntrack; do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel 2 $$pkg; \
	  done; \
	done

fuzz:
	$(MAKE) fuzz-short FUZZTIME=5m FUZZCLEAN=0

# CI fuzzes every target briefly (FUZZTIME executions each) after the tests; the seed corpora under
# <pkg>/testdata/fuzz also run as plain tests in `unit`.
test: fmt-check vet manifests unit fuzz-short

demo: deps build
	$(GO) run ./e2e/cmd/demo -ftpalg bin/ftpalg

# ftpalg vs the kernel FTP helper vs plain forwarding, side by side in the namespace lab (root;
# < 10 minutes; prints the Markdown table of BENCHMARKS.md). Measure on an idle machine.
bench: build
	$(GO) run ./e2e/cmd/bench -ftpalg bin/ftpalg

# The same with small counts (< 2 minutes): checks that the harness works and nothing fails.
bench-short: build
	$(GO) run ./e2e/cmd/bench -short -ftpalg bin/ftpalg

# The Go micro-benchmarks of the packet path.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./alg ./nat ./gateway

clean:
	rm -rf bin

# The container image (deploy/Containerfile, FROM scratch + bin/ftpalg), reproducible: the
# timestamps are the last commit's, buildah's own version label is left out.
IMAGE             ?= localhost/ftpalg
PODMAN            ?= podman --storage-driver vfs --runtime runc
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
REVISION          ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

image: build
	$(PODMAN) build --layers=false --timestamp $(SOURCE_DATE_EPOCH) --identity-label=false \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) \
	  --build-arg CREATED=$$(date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ) \
	  -f deploy/Containerfile -t $(IMAGE):$(VERSION) -t $(IMAGE):latest bin
	@$(PODMAN) image inspect --format '{{.Id}} {{.Size}} bytes' $(IMAGE):$(VERSION)

# Offline validation of the Kubernetes manifests and the Compose file (deploy/manifestcheck, a
# module of its own so that the Kubernetes libraries stay out of ftpalg's go.mod).
manifests:
	cd deploy/manifestcheck && $(GO) vet ./... && $(GO) test -count=1 ./... && \
	  $(GO) run . -compose ../compose.yaml ../kubernetes/*.yaml
