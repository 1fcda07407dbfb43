#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# logcheck (tools/testing/selftests/cbt/logcheck.c) on synthetic logs from
# logcheck-gen.c: it passes a log whose data writes follow their bits, finds
# a write flushed before its bit (at the flush points) and one logged before
# its bit (with --every-entry only), and exits 2 on usage and I/O errors.
# usage: test-logcheck.sh DIR (holding logcheck and logcheck-gen; run by `make unit`).
# shellcheck disable=SC2015 # "check && ok || bad": ok never fails
set -u
dir=$1
passed=0 failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cbt-logcheck.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "test-logcheck.sh: FAIL: $*" >&2; }

# expect RC LOG ARGS...: logcheck over LOG with the generator's slices.
expect() {
	local want=$1 log=$2 rc
	shift 2
	"$dir/logcheck" --log "$log" --data 0:2048 --meta 2048:64 "$@" >"$tmp/out" 2>&1 && rc=0 || rc=$?
	if [ "$rc" = "$want" ]; then ok; else bad "logcheck $log $*: exit $rc, expected $want: $(cat "$tmp/out")"; fi
}

has() {
	if grep -qF -- "$1" "$tmp/out"; then ok; else bad "output lacks '$1': $(cat "$tmp/out")"; fi
}

for ss in 512 4096; do
	for s in good bad reorder; do
		"$dir/logcheck-gen" $s "$tmp/$s-$ss" $ss || bad "logcheck-gen $s $ss"
	done
	g=$tmp/good-$ss
	expect 0 "$g" --from-mark bitmaps-added
	has "points checked"
	has "2 bitmaps, PASS"
	expect 0 "$g" --from-mark bitmaps-added --every-entry --min-points 20
	has "PASS"
	expect 0 "$g" --from-mark bitmaps-added --verbose
	has "bitmap 'off' not checked: not recording"
	has "mark 'dm-log-writes-end'"
	# The torn superblock (entry 13) leaves seq 1 current; both bitmaps stay checked.
	has "entry 13: point 9 passes (superblock seq 1, 2 writes, 2 bitmaps)"
	has "entry 28: point 20 passes (superblock seq 3, 7 writes, 2 bitmaps)"
	# Without the mark, the write before the first superblock is a violation.
	expect 1 "$g"
	has "but metadata image: unformatted"
	expect 1 "$g" --from-mark bitmaps-added --min-points 1000
	has "fewer than --min-points 1000 points"
	expect 1 "$g" --from-mark no-such-mark
	has "no mark 'no-such-mark'"

	expect 1 "$tmp/bad-$ss" --from-mark bitmaps-added
	has "VIOLATION at entry"
	has "data sector $((ss == 512 ? 9 : 8)) (written by entry"
	has "is in chunk 1 of bitmap 'b0', clean in superblock seq 3 (copy 1)"
	has "FAIL"

	expect 0 "$tmp/reorder-$ss" --from-mark bitmaps-added
	expect 1 "$tmp/reorder-$ss" --from-mark bitmaps-added --every-entry
	has "chunk 1 of bitmap 'b0'"
done

# Usage and I/O errors: exit 2.
g=$tmp/good-512
expect 2 "$g" --meta 5
expect 2 "$g" --meta 2048:0
expect 2 "$g" --meta 0:64
has "overlap"
expect 2 "$g" --meta 4096:16
has "smaller than its superblocks"
expect 2 "$g" --min-points -1
expect 2 "$g" extra
"$dir/logcheck" --meta 2048:64 --data 0:2048 >/dev/null 2>&1; [ $? = 2 ] && ok || bad "no --log: not exit 2"
expect 2 "$tmp/no-such-log"
has "cannot open"
head -c 20000 "$g" >"$tmp/short"
expect 2 "$tmp/short" --from-mark bitmaps-added
has "log ends inside"
printf 'not a log' >"$tmp/junk"
expect 2 "$tmp/junk"
expect 2 "$tmp/good-4096" --data 1:2047 --meta 2048:64
has "multiple of the log's sector size 4096"

echo "test-logcheck.sh: $passed passed, $failed failed"
[ "$failed" = 0 ]
