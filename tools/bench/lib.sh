# SPDX-License-Identifier: GPL-2.0
# Sourced by the benchmarks that time programs under vmrun --icount.

# tmpfs_prog DIR PROG: copies PROG and the libraries it links to DIR/bin
# (on tmpfs) and prints the command that runs the copy. Under --icount
# the guest's clock jumps to its next timer whenever it waits for the
# host, as a 9p lookup or page-in of a program or library does, by up to
# seconds on a busy host: timed runs start programs that live in memory.
tmpfs_prog() {
	local bin=$1/bin exe lib loader= name
	exe=$(command -v "$2")
	name=${exe##*/}
	mkdir -p "$bin"
	cp "$exe" "$bin/$name"
	while read -r lib; do
		cp -L "$lib" "$bin/"
		case $lib in */ld-linux*) loader=$bin/${lib##*/} ;; esac
	done < <(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /ld-linux/ { print $1 }')
	if [ -n "$loader" ]; then
		echo "$loader --library-path $bin $bin/$name"
	else
		echo "$bin/$name"
	fi
}

# seconds PROG ARGS...: the seconds PROG ARGS takes on the guest's clock,
# read without starting a program; its output goes to $dir/out. PROG runs
# from its copy on tmpfs: the command in the array named PROG with '-' as
# '_' (cbtctl, qemu_img, dd... as tmpfs_prog made them).
seconds() {
	local t0 t1
	local -n __cmd=${1//-/_}
	[ ${#__cmd[@]} -gt 0 ] || { echo "bench: seconds: no tmpfs copy of $1" >&2; exit 1; }
	shift
	t0=$EPOCHREALTIME
	"${__cmd[@]}" "$@" >"$dir/out" 2>"$dir/stderr" || { cat "$dir/stderr" >&2; exit 1; }
	t1=$EPOCHREALTIME
	python3 -c "print(f'{$t1 - $t0:.3f}')"
}

# calc EXPR: EXPR (python) to three decimals.
calc() { python3 -c "print(f'{$1:.3f}')"; }
