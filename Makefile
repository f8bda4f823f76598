# kmsfs — see README.md. The first command is `make demo`, the second `make test`.

SWIFT   ?= swift
PYTHON  ?= python3
PREFIX  ?= /usr/local
DESTDIR ?=
BIN     := .build/release/kmsfs
# The binary runs where Swift is not installed: the Swift runtime is linked
# in (it then loads only libfuse3, libcurl, libssl, libc and libstdc++), and
# no run path points into the toolchain or next to the binary.
SWIFTFLAGS ?= -c release --static-swift-stdlib --disable-local-rpath

.PHONY: all build deps demo test unit integration check-libfuse test-uring bench install uninstall clean deb boot-test

all: build

deps:
	@tools/deps.sh

build: deps
	$(SWIFT) build $(SWIFTFLAGS) --product kmsfs

# Unit tests build in debug (.build/debug): --static-swift-stdlib compiles
# against the static SDK, which has no swift-testing, and a release test
# build without it would relink .build/release/kmsfs against the toolchain's
# libraries. Then the integration suite mounts the release binary against
# moto on loopback.
test: build
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --parallel
	$(PYTHON) -m pytest -q Tests/integration

unit: build
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --parallel

# The libfuse adapter also builds against Debian 13's libfuse 3.17, whose
# headers changed calls kmsfs makes (tools/check-libfuse.sh; SKIP offline).
check-libfuse: deps
	SWIFT="$(SWIFT)" tools/check-libfuse.sh

integration: build
	$(PYTHON) -m pytest -q Tests/integration

# The whole integration suite again, every mount with -o io_uring (FUSE over
# io_uring, Linux 6.14+): the module's enable_uring is switched on for the
# run and put back after. Not part of `make test`, whose test_uring.py
# checks the transport itself.
URING_PARAM = /sys/module/fuse/parameters/enable_uring
test-uring: build
	@[ -w $(URING_PARAM) ] || { echo "test-uring: $(URING_PARAM) is missing or read-only: this kernel has no FUSE over io_uring"; exit 1; }
	@before=$$(cat $(URING_PARAM)); echo Y > $(URING_PARAM); \
	KMSFS_EXTRA_OPTS=io_uring $(PYTHON) -m pytest -q Tests/integration; rc=$$?; \
	echo $$before > $(URING_PARAM); exit $$rc

demo: build
	@tools/demo.sh

# Figures beside references measured in the same run; writes
# docs/benchmarks.md and docs/benchmarks-hotpath.png (as root, ~15 min).
# Not a test: nothing in CI is timed. BENCH_QUICK=1 make bench checks the
# harness with tiny sizes (report under /tmp); see bench/bench.py.
bench: build
	@$(PYTHON) -c 'import matplotlib' 2>/dev/null || \
		$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore matplotlib
	KMSFS_BIN=$(CURDIR)/$(BIN) $(PYTHON) bench/bench.py

clean:
	rm -rf .build .build-libfuse-check

# ---- install -------------------------------------------------------------
# `make && make install` (as root). PREFIX and DESTDIR as usual; the mount
# helper goes to $(DESTDIR)$(SBINDIR) (default /sbin, where mount(8) looks
# for mount.TYPE helpers), not under PREFIX. Installing does not build:
# give BIN=path/to/kmsfs to install another build.
INSTALL ?= install
BINDIR  ?= $(PREFIX)/bin
SBINDIR ?= /sbin
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/kmsfs
DOCS    := README.md $(wildcard docs/*.md)
UNITS   := $(wildcard docs/systemd/*)

install:
	@test -x $(BIN) || { echo "make install: $(BIN) is missing; run make first (or give BIN=path/to/kmsfs)" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/systemd
	$(INSTALL) -m 755 $(BIN) $(DESTDIR)$(BINDIR)/kmsfs
	sed 's|@KMSFS_BIN@|$(BINDIR)/kmsfs|' mount-helper/mount.kmsfs > $(DESTDIR)$(SBINDIR)/.mount.kmsfs.tmp
	chmod 755 $(DESTDIR)$(SBINDIR)/.mount.kmsfs.tmp
	mv -f $(DESTDIR)$(SBINDIR)/.mount.kmsfs.tmp $(DESTDIR)$(SBINDIR)/mount.kmsfs
	ln -sfn mount.kmsfs $(DESTDIR)$(SBINDIR)/mount.fuse.kmsfs
	sed 's|/usr/local/share/doc/kmsfs|$(DOCDIR)|g' docs/kmsfs.8 > $(DESTDIR)$(MANDIR)/man8/kmsfs.8
	chmod 644 $(DESTDIR)$(MANDIR)/man8/kmsfs.8
	$(INSTALL) -m 644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	for f in $(UNITS); do \
		sed 's|/usr/local/bin/kmsfs|$(BINDIR)/kmsfs|g' $$f > $(DESTDIR)$(DOCDIR)/systemd/$${f##*/} && \
		chmod 644 $(DESTDIR)$(DOCDIR)/systemd/$${f##*/} || exit 1; \
	done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/kmsfs $(DESTDIR)$(SBINDIR)/mount.kmsfs $(DESTDIR)$(SBINDIR)/mount.fuse.kmsfs \
		$(DESTDIR)$(MANDIR)/man8/kmsfs.8
	@case '$(DOCDIR)' in */kmsfs) ;; *) echo "make uninstall: DOCDIR=$(DOCDIR) does not end in /kmsfs; remove it by hand" >&2; exit 1 ;; esac
	rm -rf '$(DESTDIR)$(DOCDIR)'

# ---- Debian package ------------------------------------------------------
# `make deb` packs the built binary (it does not build: run make first) with
# what `make install PREFIX=/usr` installs into kmsfs_VERSION_ARCH.deb in
# DEBDIR; `apt install ./kmsfs_*.deb` then needs no Swift. See tools/deb.sh.
DEBDIR ?= .

deb:
	@tools/deb.sh $(BIN) $(DEBDIR)

# ---- boot test (docs/boot-test.md) ---------------------------------------
# `make boot-test` (as root): boots a Debian 12 guest under qemu (TCG, no
# network device) with the fresh package installed as the guide says, and
# checks the fstab mount, kmsfs.service, credentials, units and the journal
# from inside it. The guest image is cached in /var/cache/kmsfs-boot
# (KMSFS_BOOT_CACHE); a run takes 4 to 8 minutes here once it is cached.
# Prints one SKIP line where qemu cannot run.
boot-test: build
	$(PYTHON) tools/boot/boot-test.py $(BIN)

# Shows the man page from the tree (no install needed).
.PHONY: man
man:
	man -l docs/kmsfs.8

# ---- fuzzing and sanitizers (docs/fuzzing.md) -----------------------------
# `make fuzz`: builds the libFuzzer targets in fuzz/targets (.build-fuzz) and
# fuzzes each for FUZZ_TIME seconds (FUZZ_TARGETS to pick some; FUZZ_RUNS
# caps executions). Not for CI: nothing in CI is timed. `make fuzz-replay`
# runs every committed seed once through the fuzz build; `make test` and
# `make unit` replay them through the ordinary unit-test build instead
# (FuzzCorpusReplayTests), which costs no extra build.
FUZZ_TIME    ?= 60
FUZZ_RUNS    ?= -1
FUZZ_TARGETS ?=

.PHONY: fuzz fuzz-build fuzz-replay sanitize sanitize-unit sanitize-integration

fuzz-build:
	fuzz/build.sh $(FUZZ_TARGETS)

fuzz: fuzz-build
	FUZZ_TIME=$(FUZZ_TIME) FUZZ_RUNS=$(FUZZ_RUNS) fuzz/run.sh $(FUZZ_TARGETS)

fuzz-replay: fuzz-build
	fuzz/run.sh --replay $(FUZZ_TARGETS)

# `make sanitize`: the unit tests under ThreadSanitizer and under
# AddressSanitizer (debug builds in .build-tsan and .build-asan), then the
# whole integration suite against a daemon built with each (SANITIZE_TESTS
# picks files). KMSFS_SANITIZED tells the suite: the tests that measure the
# daemon's memory (locked pages, scans of every mapping, core files) or the
# shipped artefacts (package, install, demo) skip, since against a sanitizer
# build they would measure the sanitizer (conftest.unsanitized_only).
# Sanitized daemons run with -o insecure_allow_unlocked (KMSFS_EXTRA_OPTS):
# the shadow memory makes mlock budgets meaningless. Any report fails the run.
# Under TSan, -DKMSFS_TSAN_MUTEX swaps Swift's Mutex (whose locking TSan
# cannot see on Linux) for a pthread one in each module (TSanMutex.swift).
# (TSan's "thread finished with ignores enabled" notes, from libfuse
# cancelling its workers at exit, are not reports, but they set TSan's exit
# status: hence exitcode=0, and the report files are what is checked).
SANITIZERS     ?= thread address
SANITIZE_TESTS ?= Tests/integration
# Options added to every mount; SANITIZE_OPTS=insecure_allow_unlocked,io_uring
# (with enable_uring=Y) runs the suite over the ring. Reports are looked for
# even when a test failed.
SANITIZE_OPTS  ?= insecure_allow_unlocked

sanitize: sanitize-unit sanitize-integration

sanitize-unit:
	@for s in $(SANITIZERS); do \
		flags=; [ $$s = thread ] && flags="-Xswiftc -DKMSFS_TSAN_MUTEX"; \
		echo "== unit tests under $$s sanitizer"; \
		$(SWIFT) build --build-tests --sanitize=$$s --scratch-path .build-$$(echo $$s | cut -c1-1)san $$flags && \
		TSAN_OPTIONS=halt_on_error=1 ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 SWIFT_BACKTRACE=enable=no \
		$(SWIFT) test --skip-build --sanitize=$$s --scratch-path .build-$$(echo $$s | cut -c1-1)san || exit 1; \
	done

sanitize-integration:
	@for s in $(SANITIZERS); do \
		d=.build-$$(echo $$s | cut -c1-1)san; \
		flags=; [ $$s = thread ] && flags="-Xswiftc -DKMSFS_TSAN_MUTEX"; \
		echo "== integration tests against a daemon built with the $$s sanitizer"; \
		$(SWIFT) build -c release --product kmsfs --sanitize=$$s --scratch-path $$d $$flags || exit 1; \
		rm -f $$d/report.*; \
		KMSFS_BIN=$(CURDIR)/$$d/release/kmsfs KMSFS_EXTRA_OPTS=$(SANITIZE_OPTS) KMSFS_SANITIZED=$$s \
		TSAN_OPTIONS="halt_on_error=1 exitcode=0 log_path=$(CURDIR)/$$d/report" \
		ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$(CURDIR)/$$d/report" SWIFT_BACKTRACE=enable=no \
		$(PYTHON) -m pytest -q $(SANITIZE_TESTS); rc=$$?; \
		if grep -l "WARNING: ThreadSanitizer\|ERROR: AddressSanitizer" $$d/report.* 2>/dev/null; then \
			echo "$$s sanitizer reports above (files $$d/report.*)"; exit 1; fi; \
		[ $$rc = 0 ] || exit $$rc; \
	done
