# flushvm: build, run and test. Guest artifacts (Debian kernel, initramfs
# images, static binaries) are cached under build/cache ($FLUSHVM_CACHE).

GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# How long each Fuzz target runs in `make test` (an execution count: a
# wall-clock -fuzztime races Go 1.26's fuzzing coordinator at its deadline,
# which then fails the target with "context deadline exceeded" and no
# input, go.dev/issue/75804, fixed in Go 1.27) and in `make fuzz`.
FUZZ_SMOKE  ?= 2000x
FUZZTIME    ?= 60s
# `make fuzz-long`: each Fuzz target runs to FUZZ_LONG_EXECS executions or
# for FUZZ_LONG_TIME, whichever comes first (see scripts/fuzz-long.sh).
FUZZ_LONG_EXECS ?= 10000000
FUZZ_LONG_TIME  ?= 30m
# Extra flags for `make run` (flushvm-harness demo): e.g. DEMO="--cache unsafe --cpus 1".
DEMO        ?=
# Bound on one `make run` (it must finish in < 3 minutes from a warm cache).
RUN_TIMEOUT ?= 170s
INTEGRATION_TIMEOUT ?= 70m
# `make crashtest`: the full crash-test campaign (issue 10: systematic). One
# record boot per cache mode, then every distinct crash state of its write log
# (MODE:all) or the first N (MODE:N), checked in batches; then each
# deliberately buggy workload in CRASHTEST_BUGS on cache=writeback, which must
# be caught within CRASHTEST_BUG_STATES states; then each application
# workload in CRASHTEST_APPS on cache=writeback, CRASHTEST_APP_STATES states
# (MODE:N syntax: all, or a number). Extra `flushvm crashtest` flags in
# CRASHTEST_ARGS (e.g. "--k 4" or "--torn 512").
CRASHTEST_WORKLOAD    ?= fsyncstress
CRASHTEST_SEED        ?= 1
CRASHTEST_DISK_SIZE   ?= 32M
# 4 writers x 70 records give a log of about 1,050-1,100 distinct crash states
# (65 gave 988-1,026 here: guest timing varies the log).
CRASHTEST_RECORDS     ?= 70
CRASHTEST_CPUS        ?= 1
# A nested boot takes 15-30 s here; a guest that hangs past this is retried.
CRASHTEST_BOOT_TIMEOUT ?= 2m
CRASHTEST_MODES       ?= writeback:all,writethrough:all,none:all,directsync:all,unsafe:100
# create-no-dirsync is left out: ext4 commits a new file's directory entry
# with the file's own fsync (the same journal transaction), so on ext4 that
# bug loses nothing (issue 10's note); run it with CRASHTEST_BUGS to see.
# create-tmpfile-no-dirsync is the same bug made visible: the file is
# created unnamed (O_TMPFILE), fsynced, then linked in without a directory
# fsync, so only the name is not durable.
CRASHTEST_BUGS        ?= fsyncstress-ack-early rename-no-dirsync create-tmpfile-no-dirsync sqlite-sync-off
CRASHTEST_BUG_STATES  ?= 200
# The other file systems (--fs): CRASHTEST_WORKLOAD and the buggy workloads on
# cache=writeback, CRASHTEST_FS_STATES states each, on a disk of
# CRASHTEST_FS_DISK_SIZE (mkfs.xfs refuses less than 300M).
CRASHTEST_MORE_FS     ?= xfs btrfs
CRASHTEST_FS_STATES   ?= 200
CRASHTEST_FS_DISK_SIZE ?= 300M
# SQLite (Debian's sqlite3 in the guest): rollback journal and WAL, a row per
# transaction; 20 rows give logs of about 150-250 distinct states.
CRASHTEST_APPS        ?= sqlite-rollback sqlite-wal
CRASHTEST_APP_RECORDS ?= 20
CRASHTEST_APP_STATES  ?= all
CRASHTEST_OUT         ?= build/crashtest
CRASHTEST_ARGS        ?=
# `make soak`: SOAK_BOOTS nested L2 boots with fio verification, 25 per L1
# session (each boot ~30-40 s here), taking the vCPU counts in SOAK_CPUS and
# the cache modes in SOAK_CACHE in turn; extra `flushvm-harness soak` flags in
# SOAK_ARGS (e.g. "--vmm both" for the QEMU-in-L1 control).
SOAK_BOOTS ?= 100
SOAK_CPUS  ?= 1,2
SOAK_CACHE ?= writethrough,writeback
SOAK_ARGS  ?=

UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/integration')

.PHONY: deps soak crashtest bench-vhost all build run run-nodisk test unit fuzz-smoke fuzz integration lint artifacts clean test-slurm

all: build

## build: the flushvm binary (static, so the nested harness can use it) and the guest tool.
build:
	mkdir -p build/bin
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=auto -o build/bin/flushvm ./cmd/flushvm
	$(GO) build -o build/bin/flushvm-harness ./cmd/flushvm-harness

## deps: install the Debian packages the guests and the nested harness need (as root: one
## apt-get line, said on stdout; otherwise it stops with the command to run). run, test and
## the targets that boot guests do it first.
deps:
	@scripts/deps.sh

## artifacts: fetch the kernel and build the guest initramfs (cached).
artifacts: deps
	$(GO) run ./cmd/flushvm-harness artifacts

## run: boot a test guest under flushvm (nested on hosts without usable KVM)
## with a fresh sparse ext4 disk, show the machine from /init and run fsyncstress.
run: deps
	$(GO) run ./cmd/flushvm-harness --timeout $(RUN_TIMEOUT) demo --disk $(DEMO)

## run-nodisk: the same boot without a disk: only the machine line from /init.
run-nodisk: deps
	$(GO) run ./cmd/flushvm-harness --timeout $(RUN_TIMEOUT) demo $(DEMO)

## test: unit tests, a short fuzz of every Fuzz target, then the Linux-guest integration tests.
test: deps unit fuzz-smoke integration

unit:
	$(GO) test -count=1 -timeout 15m $(UNIT_PKGS)

fuzz-smoke:
	FUZZTIME=$(FUZZ_SMOKE) scripts/fuzz.sh

fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

.PHONY: fuzz-long
## fuzz-long: every Fuzz target to FUZZ_LONG_EXECS executions or FUZZ_LONG_TIME, then a table of
## executions and new coverage per target (also in build/fuzz-long/summary.txt).
fuzz-long:
	FUZZ_LONG_EXECS=$(FUZZ_LONG_EXECS) FUZZ_LONG_TIME=$(FUZZ_LONG_TIME) scripts/fuzz-long.sh

integration: deps
	$(GO) test -count=1 -v -timeout $(INTEGRATION_TIMEOUT) ./integration/...

## lint: formatting, vet and staticcheck (pinned).
lint:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf build/bin build/cache/jobs

## bench-vhost: fio in a QEMU TCG guest against flushvm vhost-user-blk, qemu-storage-daemon and QEMU's virtio-blk (table, CSV, SVG under build/bench-vhost).
bench-vhost: deps
	scripts/bench-vhost.sh

## crashtest: the full crash-test campaign: a flushvm crashtest per cache mode (one L1 session when
## nested), JSON reports in $(CRASHTEST_OUT)/MODE.json, then one per-mode table (also table.md).
crashtest: deps
	$(GO) run ./cmd/flushvm-harness campaign --modes $(CRASHTEST_MODES) --out $(CRASHTEST_OUT) \
		--workload $(CRASHTEST_WORKLOAD) --seed $(CRASHTEST_SEED) \
		--disk-size $(CRASHTEST_DISK_SIZE) --records $(CRASHTEST_RECORDS) --cpus $(CRASHTEST_CPUS) \
		--boot-timeout $(CRASHTEST_BOOT_TIMEOUT) $(CRASHTEST_ARGS)
	for w in $(CRASHTEST_BUGS); do \
		$(GO) run ./cmd/flushvm-harness campaign --modes writeback:$(CRASHTEST_BUG_STATES) --out $(CRASHTEST_OUT)/$$w \
			--workload $$w --seed $(CRASHTEST_SEED) --disk-size $(CRASHTEST_DISK_SIZE) --records $(CRASHTEST_RECORDS) \
			--cpus $(CRASHTEST_CPUS) --boot-timeout $(CRASHTEST_BOOT_TIMEOUT) $(CRASHTEST_ARGS) || exit 1; \
	done
	for fs in $(CRASHTEST_MORE_FS); do for w in $(CRASHTEST_WORKLOAD) $(CRASHTEST_BUGS); do \
		$(GO) run ./cmd/flushvm-harness campaign --modes writeback:$(CRASHTEST_FS_STATES) --out $(CRASHTEST_OUT)/$$fs/$$w \
			--workload $$w --fs $$fs --seed $(CRASHTEST_SEED) --disk-size $(CRASHTEST_FS_DISK_SIZE) --records $(CRASHTEST_RECORDS) \
			--cpus $(CRASHTEST_CPUS) --boot-timeout $(CRASHTEST_BOOT_TIMEOUT) $(CRASHTEST_ARGS) || exit 1; \
	done; done
	for w in $(CRASHTEST_APPS); do \
		$(GO) run ./cmd/flushvm-harness campaign --modes writeback:$(CRASHTEST_APP_STATES) --out $(CRASHTEST_OUT)/$$w \
			--workload $$w --seed $(CRASHTEST_SEED) --disk-size $(CRASHTEST_DISK_SIZE) --records $(CRASHTEST_APP_RECORDS) \
			--cpus $(CRASHTEST_CPUS) --boot-timeout $(CRASHTEST_BOOT_TIMEOUT) $(CRASHTEST_ARGS) || exit 1; \
	done

## test-slurm: the Slurm path alone: a single-node cluster on loopback (munge, slurmctld, slurmd in
## a temporary directory), a 2-shard crash-test campaign on it, merged and compared with the
## unsharded run (installs Slurm and munge first).
test-slurm:
	scripts/deps.sh slurm
	$(GO) test -count=1 -v -timeout 30m -run 'TestLocalCluster|TestSlurm' ./host/slurm/ ./integration/

## soak: SOAK_BOOTS nested L2 boots with disk I/O (fio, crc32c verify); prints every failed boot
## with its diagnostic and the count; exits non-zero if any boot failed.
soak: deps
	$(GO) run ./cmd/flushvm-harness soak --boots $(SOAK_BOOTS) --cpus $(SOAK_CPUS) --cache $(SOAK_CACHE) $(SOAK_ARGS)
