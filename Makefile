# SPDX-License-Identifier: GPL-2.0
#
# dm-cbt: changed-block tracking for device-mapper.
#
#   make deps     install build tools and the test kernels (root)
#   make          module for every test kernel (and the running one), userspace, selftests
#   make check    unit tests on the host, then the kselftests in a VM per test kernel
#   make demo     the main job end to end in a VM
#   make lint     checkpatch --strict and sparse on kernel/
#   make bench    benchmarks
#   make install  module for the running kernel, cbtctl, libcbt (or use dkms.conf)
#   make deb      Debian packages (dm-cbt-dkms, cbtctl, libcbt-dev) in build/deb, lintian-clean

KERNELS ?= 6.1 6.12 sid debug
VM := tools/testing/vm
SELFTESTS := tools/testing/selftests/cbt
CACHE ?= $(CURDIR)/.cache
LINUX_SRC := $(CACHE)/linux-src
HOST_KDIR := /lib/modules/$(shell uname -r)/build
DESTDIR ?=
PREFIX ?= /usr/local

# Where the running kernel has headers, build for it too.
ifneq ($(wildcard $(HOST_KDIR)/Makefile),)
MODULE_TARGETS := $(KERNELS) host
else
MODULE_TARGETS := $(KERNELS)
endif

.PHONY: all deps modules userspace selftests check unit vmcheck demo lint bench bench-bits unit-bits \
	unit-logcheck unit-make install dkms-install deb clean

all: modules userspace selftests

# What `make deps` installs is done once per content of the scripts that
# install it: check and everything that builds run it first when its stamp
# is missing (a fresh clone, or the scripts or the debug kernel's config
# changed). The demo needs less: the host's packages and its one kernel
# (DEMO_KERNEL), not the other kernels nor the debug kernel's build, so it
# has a stamp of its own, which the full one implies.
DEPS_KEY := $(shell cat $(VM)/deps $(VM)/lib.sh $(VM)/debug.config | sha256sum | cut -c1-16)
DEPS_STAMP := $(CACHE)/deps-$(DEPS_KEY).stamp
DEMO_KERNEL := $(firstword $(KERNELS))
DEMO_DEPS_STAMP := $(CACHE)/deps-$(DEPS_KEY)-$(DEMO_KERNEL).stamp
export CBT_CACHE := $(CACHE)

deps:
	$(VM)/deps
	@touch $(DEPS_STAMP) $(DEMO_DEPS_STAMP)

$(DEPS_STAMP):
	$(VM)/deps
	@touch $@ $(DEMO_DEPS_STAMP)

$(DEMO_DEPS_STAMP):
	$(if $(wildcard $(DEPS_STAMP)),,$(VM)/deps $(DEMO_KERNEL))
	@touch $@

modules: $(DEPS_STAMP)
	$(VM)/build-module $(MODULE_TARGETS)

# Userspace needs only the host's packages: the demo's stamp has them.
userspace: $(DEMO_DEPS_STAMP)
	$(MAKE) -C userspace

selftests: userspace
	$(MAKE) -C $(SELFTESTS) KSFT_DIR=$(LINUX_SRC)/tools/testing/selftests

unit: $(DEPS_STAMP) unit-bits unit-logcheck unit-make
	$(MAKE) -C userspace check

# The dependency graph: what a fresh clone's `make demo` would run.
unit-make:
	bash tools/testing/unit/test-make.sh

# kernel/dm-cbt-bits.c on the host, with ASan and UBSan.
unit-bits:
	@mkdir -p build/unit
	$(CC) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror \
		-Itools/kernel-shim -Ikernel -Iuserspace/tests \
		-o build/unit/test-bits tools/testing/unit/test-bits.c kernel/dm-cbt-bits.c
	build/unit/test-bits

# The crash-point checker (a selftests helper) on synthetic dm-log-writes
# logs, with ASan and UBSan.
LOGCHECK_SRCS := $(SELFTESTS)/logcheck.c userspace/lib/metadata.c userspace/lib/err.c
unit-logcheck:
	@mkdir -p build/unit
	$(CC) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror \
		-D_GNU_SOURCE -Iinclude/uapi -Iuserspace/lib \
		-o build/unit/logcheck $(LOGCHECK_SRCS) -lz
	$(CC) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror \
		-Iinclude/uapi -Iuserspace/tests \
		-o build/unit/logcheck-gen tools/testing/unit/logcheck-gen.c -lz
	bash tools/testing/unit/test-logcheck.sh build/unit

# The kselftests on every test kernel; each kernel's TAP log is kept in build/.
# The first kernel's job also installs the packages (tools/testing/vm/deb-test).
vmcheck: modules selftests deb
	$(VM)/check-kernels $(KERNELS)

check: unit vmcheck

# Only what the demo boots: one kernel, its module, userspace.
demo: $(DEMO_DEPS_STAMP) userspace
	$(VM)/build-module $(DEMO_KERNEL)
	$(VM)/vmrun -k $(DEMO_KERNEL) -- tools/demo.sh

lint: $(DEPS_STAMP)
	perl $(LINUX_SRC)/scripts/checkpatch.pl --strict --no-tree --terse --show-types \
		--ignore SPDX_LICENSE_TAG,FILE_PATH_CHANGES \
		-f kernel/*.c kernel/*.h include/uapi/linux/*.h
	@mkdir -p build
	$(VM)/build-module --lint 6.1 6.12 2>&1 | tee build/sparse.log
	@if grep -E 'warning|error' build/sparse.log; then \
		echo "lint: sparse reported the lines above"; exit 1; fi

# The bit array on the host (kernel/dm-cbt-bits.c over tools/kernel-shim),
# then fio in a VM. The tables in Documentation/testing.rst were measured
# with -cpu max (not vmrun's default): the same model, the same figures;
# the copy engine's with vmrun's default, as the tests run, and without the
# tests' debugging (slub_debug, KFENCE, the page allocation tracepoint),
# which made a backup's page and slab allocations a third of its time.
bench: export CBT_VM_CPU ?= max
bench: bench-bits modules userspace
	$(VM)/vmrun -k $(firstword $(KERNELS)) --icount --timeout 2700 -- \
		sh -c "tools/bench/run.sh && tools/bench/backup.sh && tools/bench/metadata.sh"
	$(VM)/vmrun -k $(firstword $(KERNELS)) --cpus 2 --mem 6144 --timeout 2700 -- \
		env BENCH_SNAP_PARTS=iops tools/bench/snapshot.sh
	$(VM)/vmrun -k $(firstword $(KERNELS)) --icount --mem 6144 --timeout 2700 -- \
		env BENCH_SNAP_PARTS=idle BENCH_SNAP_MB=512 tools/bench/snapshot.sh
	CBT_VM_CPU=max,erms=off,fsrm=off \
	CBT_VM_APPEND="slub_debug=- kfence.sample_interval=0 trace_event=" \
		$(VM)/vmrun -k $(firstword $(KERNELS)) --icount --mem 6144 --timeout 2700 -- \
		sh -c "tools/bench/copy.sh && tools/bench/restore.sh"

bench-bits:
	@mkdir -p build/bench
	$(CC) -O2 -g -Wall -Wextra -Werror -Itools/kernel-shim -Ikernel \
		-o build/bench/bits-bench tools/bench/bits-bench.c kernel/dm-cbt-bits.c
	build/bench/bits-bench

install:
	sh kernel/gen-compat.sh $(HOST_KDIR) >kernel/compat-gen.h
	$(MAKE) -C $(HOST_KDIR) M=$(CURDIR) modules
	$(MAKE) -C $(HOST_KDIR) M=$(CURDIR) modules_install
	depmod -a
	$(MAKE) -C userspace install DESTDIR=$(DESTDIR) PREFIX=$(PREFIX)

# The Debian packages, built from a copy of the tracked files as they are
# in the working tree (new files need `git add`), in build/deb/src; the
# .debs land in build/deb. Any lintian error or warning fails it (none
# is overridden; an override would go in debian/*.lintian-overrides with
# its reason).
# debian/rules fails when debian/changelog and dkms.conf disagree on the
# version.
deb: $(DEMO_DEPS_STAMP)
	rm -rf build/deb
	mkdir -p build/deb/src
	git ls-files -z | tar -c --null -T - --ignore-failed-read -f - | tar -x -C build/deb/src -f -
	cd build/deb/src && dpkg-buildpackage -b -us -uc
	lintian --fail-on error,warning build/deb/*.changes

clean:
	rm -rf build
	$(MAKE) -C userspace clean
	$(MAKE) -C $(SELFTESTS) clean
