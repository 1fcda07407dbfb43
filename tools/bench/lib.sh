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
