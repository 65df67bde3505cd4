# ournet: see README.md. `make demo` shows it working; `make test` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
E2E_TIMEOUT ?= 15m

.PHONY: all build deps plugin install demo test vet unit e2e bench clean

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

# End-to-end: a private dockerd with the plugin installed, real packets.
e2e: plugin
	$(GO) test -count=1 -v -timeout $(E2E_TIMEOUT) ./e2e/

test: deps vet unit e2e

clean:
	rm -rf build
