# ournet: see README.md. `make demo` shows it working; `make test` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
E2E_TIMEOUT ?= 25m
# Engines of Debian's later suites, unpacked beside the system's by
# scripts/engine.sh: trixie (docker.io 26.1, containerd 1.7) and forky
# (docker.io 28.5, containerd 2.1), each with its docker-compose (v2).
ENGINES_DIR ?= build/engines

.PHONY: all build deps plugin install demo test vet unit e2e e2e-bookworm engines bench clean

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
	$(GO) vet -tags chaos ./e2e/
	$(GO) vet -tags cluster ./e2e/
	$(GO) vet -tags bench ./e2e/

# Unit tests and kernel tests (in throwaway network namespaces; need root).
unit:
	$(GO) test -race -count=1 ./driver/... ./ipam/... ./internal/... ./plugin/...

# End-to-end: a private dockerd with the plugin installed, real packets; the
# whole suite runs against three engines at once, each in namespaces and
# directories of its own (they share nothing but the CPUs); each run's
# output is printed whole when it ends, and a run that fails does not stop
# the others. make e2e-SUITE runs one alone. E2E_ENGINE_PATH comes first in PATH for
# dockerd and the docker CLI, so each engine runs with its own CLI, containerd,
# shims, docker-init, docker-proxy and docker-compose (and the system's runc).
# E2E_FLAGS: more go test flags for every run, e.g. E2E_FLAGS='-run TestTwoContainersTalk'.
# The chaos test (random kills under load, e2e/chaos_test.go) runs on the
# newest engine: -tags chaos (make e2e-bookworm E2E_TAGS='-tags chaos' runs
# it on the oldest too). The cluster tests (three hosts
# in namespaces, a three-member etcd, e2e/cluster_test.go) run on trixie's
# engine: -tags cluster.
E2E_RUN = $(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) $(E2E_TAGS) $(E2E_FLAGS) ./e2e/
CHAOS = -tags chaos

E2E_SUITES = e2e-bookworm e2e-trixie e2e-forky
e2e:
	$(MAKE) -k -j3 --output-sync=target $(E2E_SUITES)

# The system's engine: Debian bookworm's docker.io 20.10 (no Compose v2:
# the Compose tests use the unpacked trixie one).
e2e-bookworm: plugin engines
	@echo "== e2e on the system's engine: $$(PATH=/usr/sbin:/usr/bin:$$PATH dockerd --version)"
	E2E_ENGINE_PATH=/usr/sbin:/usr/bin E2E_COMPOSE=$(abspath $(ENGINES_DIR))/trixie/usr/libexec/docker/cli-plugins/docker-compose $(E2E_RUN)

e2e-forky: E2E_TAGS = $(CHAOS)
e2e-trixie: E2E_TAGS = -tags cluster

# e2e-SUITE: the engine of Debian's SUITE, fetched and unpacked on first use.
e2e-%: plugin engines
	@echo "== e2e on $*'s engine: $$($(ENGINES_DIR)/$*/usr/sbin/dockerd --version)"
	E2E_DOCKERD=$(abspath $(ENGINES_DIR))/$*/usr/sbin/dockerd \
	E2E_ENGINE_PATH=$(abspath $(ENGINES_DIR))/$*/usr/sbin:$(abspath $(ENGINES_DIR))/$*/usr/bin \
	E2E_COMPOSE=$(abspath $(ENGINES_DIR))/$*/usr/libexec/docker/cli-plugins/docker-compose \
	  $(E2E_RUN)

engines:
	scripts/engine.sh trixie $(ENGINES_DIR)/trixie >/dev/null
	scripts/engine.sh forky $(ENGINES_DIR)/forky >/dev/null

test: deps vet unit e2e

# ournet against Docker's bridge driver on one private engine (issue #7), on
# the system's engine: prints a table and writes docs/bench.md, docs/bench.png
# and README.md's Benchmark section. 13 to 16 minutes on 2 cores (500 networks
# of each driver for the growth rows).
BENCH_PLUGIN ?= build/plugin
bench:
	scripts/deps.sh iperf3=iperf3 gnuplot=gnuplot-nox
	scripts/build-plugin.sh $(BENCH_PLUGIN)
	E2E_PLUGIN_DIR=$(abspath $(BENCH_PLUGIN)) E2E_ENGINE_PATH=/usr/sbin:/usr/bin \
	  $(GO) test -tags bench -count=1 -run TestBench -v -timeout 25m ./e2e/

clean:
	rm -rf build
