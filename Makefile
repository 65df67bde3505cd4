# ournet: see README.md. `make demo` shows it working; `make test` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
E2E_TIMEOUT ?= 15m
# Debian trixie's engine (docker.io 26.x, containerd 1.7), unpacked beside the system's.
TRIXIE_ENGINE ?= build/engines/trixie

.PHONY: all build deps plugin install demo test vet unit e2e e2e-bookworm e2e-trixie engine-trixie bench clean

all: build

build:
	$(GO) build ./...

deps:
	scripts/deps.sh

plugin:
	scripts/build-plugin.sh build/plugin

# Installs and enables the plugin "ournet" on the engine at $$DOCKER_HOST (default: local).
install: plugin
	scripts/install-plugin.sh build/plugin

demo: deps
	scripts/demo.sh

vet:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$bad" ]; then echo "gofmt needed: $$bad"; exit 1; fi
	$(GO) vet ./...

# Unit tests and kernel tests (in throwaway network namespaces; need root).
unit:
	$(GO) test -race -count=1 ./driver/... ./ipam/... ./internal/... ./plugin/...

# End-to-end: a private dockerd with the plugin installed, real packets; the
# whole suite runs against two engines, one after the other (make -k e2e runs
# the second even if the first fails). E2E_ENGINE_PATH comes first in PATH for
# dockerd and the docker CLI, so each engine runs with its own CLI, containerd,
# shims, docker-init and docker-proxy (and the system's runc).
# E2E_FLAGS: more go test flags for both runs, e.g. E2E_FLAGS='-run TestTwoContainersTalk'.
E2E_RUN = $(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) $(E2E_FLAGS) ./e2e/

e2e: e2e-bookworm e2e-trixie

# The system's engine: Debian bookworm's docker.io 20.10.
e2e-bookworm: plugin
	@echo "== e2e on the system's engine: $$(PATH=/usr/sbin:/usr/bin:$$PATH dockerd --version)"
	E2E_ENGINE_PATH=/usr/sbin:/usr/bin $(E2E_RUN)

# Debian trixie's docker.io 26.x, fetched and unpacked on first use.
e2e-trixie: plugin engine-trixie
	@echo "== e2e on trixie's engine: $$($(TRIXIE_ENGINE)/usr/sbin/dockerd --version)"
	E2E_DOCKERD=$(abspath $(TRIXIE_ENGINE))/usr/sbin/dockerd \
	E2E_ENGINE_PATH=$(abspath $(TRIXIE_ENGINE))/usr/sbin:$(abspath $(TRIXIE_ENGINE))/usr/bin \
	  $(E2E_RUN)

engine-trixie:
	scripts/engine-trixie.sh $(TRIXIE_ENGINE) >/dev/null

test: deps vet unit e2e

# ournet against Docker's bridge driver on one private engine (issue #7), on
# the system's engine: prints a table and writes docs/bench.md, docs/bench.png
# and README.md's Benchmark section. Under 10 minutes on 2 cores.
BENCH_PLUGIN ?= build/plugin
bench:
	scripts/deps.sh iperf3=iperf3 gnuplot=gnuplot-nox
	scripts/build-plugin.sh $(BENCH_PLUGIN)
	E2E_PLUGIN_DIR=$(abspath $(BENCH_PLUGIN)) E2E_ENGINE_PATH=/usr/sbin:/usr/bin \
	  $(GO) test -tags bench -count=1 -run TestBench -v -timeout 15m ./e2e/

clean:
	rm -rf build
