# kmsfs — see README.md. The first command is `make demo`, the second `make test`.

SWIFT   ?= swift
PYTHON  ?= python3
PREFIX  ?= /usr/local
DESTDIR ?=
BIN     := .build/release/kmsfs

.PHONY: all build deps demo test unit integration bench install uninstall clean

all: build

deps:
	@tools/deps.sh

build: deps
	$(SWIFT) build -c release --product kmsfs

# Unit tests build in release with the product (one build), then the
# integration suite mounts the real binary against moto on loopback.
test: build
	$(SWIFT) build -c release --build-tests
	$(SWIFT) test -c release --skip-build --parallel
	$(PYTHON) -m pytest -q Tests/integration

unit: build
	$(SWIFT) build -c release --build-tests
	$(SWIFT) test -c release --skip-build --parallel

integration: build
	$(PYTHON) -m pytest -q Tests/integration

demo: build
	@tools/demo.sh

clean:
	rm -rf .build
