#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The Makefile's dependency graph, as a fresh clone sees it (an empty
# cache): `make demo` installs and builds only what the demo boots (the
# host's packages and one kernel), never the other kernels nor the debug
# kernel's build; `make check` sets up every kernel.
set -euo pipefail

top=$(cd "$(dirname "$0")/../../.." && pwd)
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
fail=0

# A make of its own: not the flags (KERNELS=..., -j) of a make that runs this.
# MAKE=true: make -n still runs recipe lines that name $(MAKE); in a fresh
# clone those sub-makes would fail on files a dry run never builds.
plan() {
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
		make -s -n -C "$top" CACHE="$cache" KERNELS="6.1 6.12 sid debug" MAKE=true "$@" 2>&1
}
bad() { echo "not ok: $*"; fail=1; }

demo=$(plan demo)
deps_lines=$(grep -E '(^|/)deps( |$)' <<<"$demo" || true)
[ "$(grep -c . <<<"$deps_lines")" = 1 ] || bad "demo: expected one run of deps, got: $deps_lines"
grep -qE '/deps 6\.1$' <<<"$deps_lines" || bad "demo: deps is not limited to 6.1: $deps_lines"
grep -qE 'build-module 6\.1$' <<<"$demo" || bad "demo: does not build the 6.1 module alone"
if grep -E '(/deps|build-module|vmrun|check-kernels)( |$)' <<<"$demo" | grep -E ' (debug|6\.12|sid)( |$)'; then
	bad "demo: sets up or boots a kernel it does not need (lines above)"
fi
grep -qE 'vmrun -k 6\.1 -- tools/demo\.sh' <<<"$demo" || bad "demo: does not boot tools/demo.sh on 6.1"

check=$(plan check)
grep -qE '(^|/)deps$' <<<"$check" || bad "check: does not set up every kernel"
grep -qE 'build-module 6\.1 6\.12 sid debug' <<<"$check" || bad "check: does not build the module for every kernel"

# With the full stamp there, the demo's own stamp does not run deps again.
key=$(cat "$top"/tools/testing/vm/{deps,lib.sh,debug.config} | sha256sum | cut -c1-16)
touch "$cache/deps-$key.stamp"
if plan demo | grep -E '(^|/)deps( |$)'; then
	bad "demo: runs deps again though make deps was done"
fi

[ $fail = 0 ] && echo "ok: make's dependency graph (demo sets up 6.1 only, check everything)"
exit $fail
