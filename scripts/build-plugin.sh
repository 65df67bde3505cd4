#!/usr/bin/env bash
# Builds the managed plugin's directory, build/plugin/{config.json,rootfs/},
# with no registry: a static ournet binary plus this host's own iptables
# binaries, their libraries and extension modules, so that the plugin's
# iptables uses the same backend (nft or legacy) as the host's dockerd.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/plugin}
root=$out/rootfs

command -v iptables >/dev/null || { echo "iptables is not installed: apt-get install iptables" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$root"/{usr/sbin,etc,run,tmp,var/lib/ournet,run/docker/plugins,run/docker/host-plugins}
chmod 1777 "$root/tmp"

CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$root/ournet" ./plugin
cp config.json "$out/config.json"

# copy_with_libs FILE: FILE and every shared library it loads, at the same paths.
copy_with_libs() {
	local f=$1
	mkdir -p "$root$(dirname "$f")"
	cp -L "$f" "$root$f"
	ldd "$f" 2>/dev/null | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r lib; do
		[ -n "$lib" ] && [ -e "$lib" ] || continue
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

multi=$(readlink -f "$(command -v iptables)") # xtables-nft-multi or xtables-legacy-multi
copy_with_libs "$multi"
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	ln -sf "$(basename "$multi")" "$root/usr/sbin/$tool"
done
# Extension modules (matches, targets), at the path compiled into libxtables.
found=
for xtdir in /usr/lib/"$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)"/xtables /usr/lib/x86_64-linux-gnu/xtables /usr/lib64/xtables /usr/lib/xtables; do
	[ -d "$xtdir" ] || continue
	for so in "$xtdir"/*.so; do copy_with_libs "$so"; done
	found=1
	break
done
[ -n "$found" ] || { echo "iptables extension modules not found" >&2; exit 1; }
for f in /etc/protocols /etc/services /etc/ethertypes; do
	[ -e "$f" ] && cp -L "$f" "$root$f"
done
echo "built $out ($(du -sh "$root" | cut -f1), iptables backend: $(basename "$multi"))"
