#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Runs the dm-cbt selftests listed in build/selftests/tests.list (built by
# `make selftests`) as TAP, each under the timeout from `settings`. A test,
# or one of its subtests, that skips counts as a failure unless it skipped
# because a tool is not installed (or, on a kernel other than the debug
# kernel, because it needs the debug kernel).
# CBT_TEST_FILTER (a grep -E pattern) selects tests by name; CBT_TEST_SKIP
# (another) leaves tests out, each named in a comment.
# CBT_TEST_QUEUE (a directory shared by several VMs of one kernel) splits the
# list between them: each runs the next test no other has claimed (mkdir is
# atomic on the host), leaves NAME.rc there when it is done, and prints its
# plan at the end.
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../../.." && pwd)
list=$top/build/selftests/tests.list
timeout=$(sed -n 's/^timeout=//p' "$here/settings")
kernel=${CBT_KERNEL:-$(uname -r)}

[ -f "$list" ] || { echo "run_tests.sh: $list is missing: run 'make selftests'" >&2; exit 1; }
mapfile -t tests < <(grep -E "${CBT_TEST_FILTER:-.}" "$list" |
	if [ -n "${CBT_TEST_SKIP:-}" ]; then grep -vE "$CBT_TEST_SKIP"; else cat; fi)

queue=${CBT_TEST_QUEUE:-}
echo "TAP version 13"
if [ -n "${CBT_TEST_SKIP:-}" ]; then
	for t in $(grep -E "${CBT_TEST_FILTER:-.}" "$list" | grep -E "$CBT_TEST_SKIP"); do
		echo "# not run on this kernel (CBT_TEST_SKIP): $(basename "$t")"
	done
fi
[ -n "$queue" ] || echo "1..${#tests[@]}"
passed=0 failed=0 skipped=0 n=0
for t in "${tests[@]}"; do
	name=$(basename "$t")
	if [ -n "$queue" ] && ! mkdir "$queue/$name" 2>/dev/null; then
		continue
	fi
	n=$((n + 1))
	echo "# selftests: cbt: $name"
	start=$(date +%s)
	out=$(mktemp)
	timeout -k 10 "$timeout" "$t" 2>&1 | tee "$out" | sed 's/^/# /'
	rc=${PIPESTATUS[0]}
	secs=$(($(date +%s) - start))
	# A subtest skipped for any reason but a missing tool fails its program.
	# A test that needs the debug kernel's fault injection skips on the
	# others ("debug kernel only"); on the debug kernel that skip fails.
	bad_skip=$(grep -E '^ok [0-9]+ .*# SKIP' "$out" | grep -v "not installed" |
		if [ "$kernel" = debug ]; then cat; else grep -v "debug kernel only"; fi | head -1)
	if [ "$rc" = 0 ] && [ -n "$bad_skip" ]; then
		echo "not ok $n selftests: cbt: $name # a subtest skipped: $bad_skip"
		failed=$((failed + 1))
	elif [ "$rc" = 0 ]; then
		echo "ok $n selftests: cbt: $name # ${secs}s"
		passed=$((passed + 1))
	elif [ "$rc" = 4 ] && grep -q "not installed" "$out"; then
		echo "ok $n selftests: cbt: $name # SKIP a tool is missing"
		skipped=$((skipped + 1))
	elif [ "$rc" = 4 ] && [ "$kernel" != debug ] && grep -q "debug kernel only" "$out"; then
		echo "ok $n selftests: cbt: $name # SKIP debug kernel only"
		skipped=$((skipped + 1))
	elif [ "$rc" = 124 ]; then
		echo "not ok $n selftests: cbt: $name # TIMEOUT ${timeout}s"
		failed=$((failed + 1))
	else
		echo "not ok $n selftests: cbt: $name # exit=$rc"
		failed=$((failed + 1))
	fi
	rm -f "$out"
	[ -z "$queue" ] || echo "$rc" >"$queue/$name.rc"
done
[ -z "$queue" ] || echo "1..$n"
echo "cbt-selftests-$kernel: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
