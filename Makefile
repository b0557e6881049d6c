# PowerHouse. `make test` is the test command; CI runs it through test-anywhere.
GO          ?= go
PREFIX      ?= /usr/local
DESTDIR     ?=
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# report.release is the release the supervisor and the workers built here
# name to each other (report.Release).
RELEASE     := -X github.com/powerhouse/powerhouse/report.release=$(VERSION)
LDFLAGS     := -X github.com/powerhouse/powerhouse/cmd/powerhouse/cli.version=$(VERSION) $(RELEASE)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Tests that boot a private systemd need root; they run one package at a
# time so that two houses never fight over the demo's loopback ports.
TESTFLAGS   ?= -race -count=1 -p 1 -timeout 20m

# Where build puts the binaries; tests that run make point it out of the
# source tree (no test reads or writes bin/).
BIN      ?= bin

.PHONY: all deps build test test-anywhere vet fmt-check lint golden fuzz bench bench-go demo install clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/powerhouse ./cmd/powerhouse
	$(GO) build -trimpath -ldflags "$(RELEASE)" -o $(BIN)/hello ./examples/hello
	$(GO) build -trimpath -ldflags "$(RELEASE)" -o $(BIN)/session ./examples/session

# What the tests run for real (systemd, haproxy, node, ...): installed
# when missing and root; otherwise named, with the command that installs it.
deps:
	@tools/test-deps

# examples/socketio is a module of its own (the PowerHouse module does not
# depend on socket.io): vet and test name it with -C.
EXAMPLE_MODULES := examples/socketio

vet:
	$(GO) vet ./...
	@for m in $(EXAMPLE_MODULES); do echo "$(GO) -C $$m vet ./..."; $(GO) -C $$m vet ./... || exit 1; done

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# internal/integration runs without -race: its code under test runs as
# separately built binaries inside the test systemd, and the race detector
# would only slow the load client whose latencies the fault tests measure
# (0.45 instead of 0.33 ms of CPU per connection, on 2 cores).
# The tests build what they run into directories of their own
# (internal/testenv): test does not need build, and a run leaves the tree
# as it found it, ignored files included.
INTEGRATION := ./internal/integration
test: deps vet fmt-check
	$(GO) test $(TESTFLAGS) $$($(GO) list ./... | grep -vx 'github.com/powerhouse/powerhouse/internal/integration')
	@for m in $(EXAMPLE_MODULES); do echo "$(GO) -C $$m test $(TESTFLAGS) ./..."; $(GO) -C $$m test $(TESTFLAGS) ./... || exit 1; done
	$(GO) test $(filter-out -race,$(TESTFLAGS)) $(INTEGRATION)

# make test from a fresh clone of the committed HEAD (uncommitted changes
# are not in it) in a new directory under /tmp, removed afterwards: the
# suite must not depend on where the clone lives (a private /tmp hides
# it from units) nor on files a clone lacks (bin/, caches), and must leave
# the clone as it found it. CI runs this alone, with the race detector: one
# pass of the whole suite from the harder place (under /tmp) keeps the run
# under 10 minutes on 2 cores, where make test and then this took 15.
test-anywhere:
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	rev=$$(git rev-parse HEAD); \
	git init -q "$$dir"; git -C "$$dir" fetch -q "$(CURDIR)" "$$rev"; \
	git -C "$$dir" checkout -q --detach FETCH_HEAD; \
	echo "test-anywhere: make test in $$dir (a clone of $$rev)"; \
	$(MAKE) -C "$$dir" test TESTFLAGS='$(TESTFLAGS)'; \
	test -z "$$(git -C "$$dir" status --porcelain --ignored)" || \
	{ echo "test-anywhere: the run left files in the clone:"; git -C "$$dir" status --short --ignored; exit 1; }

lint: vet fmt-check
	$(GO) run $(STATICCHECK) ./...

golden:
	$(GO) test ./generator -run TestGolden -update

# Every parser of outside input, FUZZTIME each (7 targets: about 7 min by
# default). Crashers land in the package's testdata/fuzz and then run as
# regression cases in `make test`.
# Minimising a new input may take 60 s by default (counted in FUZZTIME,
# with no execution counted meanwhile): 10 s leaves the time to fuzzing.
FUZZTIME ?= 60s
FUZZFLAGS = -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 10s
fuzz:
	$(GO) test ./sticky $(FUZZFLAGS) -fuzz '^FuzzParseProxy$$'
	$(GO) test ./handoff $(FUZZFLAGS) -fuzz '^FuzzParse$$'
	$(GO) test ./report $(FUZZFLAGS) -fuzz '^FuzzDecode$$'
	$(GO) test ./generator $(FUZZFLAGS) -fuzz '^FuzzGenerate$$'
	$(GO) test ./units $(FUZZFLAGS) -fuzz '^FuzzManifest$$'
	$(GO) test ./supervisor $(FUZZFLAGS) -fuzz '^FuzzRequest$$'
	$(GO) test ./cmd/powerhouse/cli $(FUZZFLAGS) -fuzz '^FuzzParseArgs$$'
	$(GO) test ./cmd/powerhouse/cli $(FUZZFLAGS) -fuzz '^FuzzGenerateVerb$$'

# The side-by-side run against direct SO_REUSEPORT and the peers, plus the
# Go micro-benchmarks (~9 min, root: the peers' setup uses apt and npm);
# rewrites the results in docs/BENCHMARKS.md. DURATION=8 ROUNDS=6 make bench
# for longer runs; BENCH_ROWS picks rows.
bench:
	bench/run.sh $(BENCH_ROWS)

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./activation ./handoff ./sticky

# The binary, the systemd generator (a link to it), the journal catalog and
# the sysusers.d file of the workers' user "powerhouse". systemd searches
# $(PREFIX)/lib/... for both /usr and /usr/local.
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
CATALOGDIR   ?= $(PREFIX)/lib/systemd/catalog
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d

# The tour: boots a private systemd (needs root); see internal/demo.
demo: build
	$(GO) build -trimpath -o bin/powerhouse-demo ./internal/demo
	bin/powerhouse-demo

# With DESTDIR (a package), the user is created when the package is
# installed or, at the latest, by systemd-sysusers.service at boot.
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(GENERATORDIR) $(DESTDIR)$(CATALOGDIR) $(DESTDIR)$(SYSUSERSDIR)
	install -m 0755 $(BIN)/powerhouse $(DESTDIR)$(PREFIX)/bin/powerhouse
	ln -sfn $(PREFIX)/bin/powerhouse $(DESTDIR)$(GENERATORDIR)/powerhouse-generator
	install -m 0644 events/powerhouse.catalog $(DESTDIR)$(CATALOGDIR)/powerhouse.catalog
	install -m 0644 units/sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/powerhouse.conf
	@if [ -z "$(DESTDIR)" ] && command -v journalctl >/dev/null; then journalctl --update-catalog || true; fi
	@if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/powerhouse.conf; fi

clean:
	rm -rf bin
