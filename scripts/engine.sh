#!/usr/bin/env bash
# scripts/engine.sh SUITE [DIR]: unpacks the Docker engine of Debian's SUITE
# (trixie: docker.io 26.1 with containerd 1.7; forky: docker.io 28.5 with
# containerd 2.1), with its docker-cli, tini (docker-init) and
# docker-compose (Compose v2), into DIR (default build/engines/SUITE),
# beside the system's own engine, and prints the path of its dockerd.
# Nothing is installed: the .debs are fetched from Debian's archive with a
# private apt configuration (the system's sources, lists and caches are
# left alone) and unpacked with dpkg-deb -x. Idempotent: an already
# unpacked DIR is only reported.
#
# Run it with DIR/usr/bin:DIR/usr/sbin first in PATH (E2E_ENGINE_PATH for the
# e2e suite) so that this dockerd finds its own containerd, shims,
# docker-init and docker-proxy; runc is the system's (trixie's runc needs a
# newer glibc than bookworm's), so it is not unpacked. docker-compose runs
# standalone: DIR/usr/libexec/docker/cli-plugins/docker-compose.
#
# DEBIAN_MIRROR overrides the archive (default: the one the system's sources
# use for its own release, else http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:?usage: scripts/engine.sh SUITE [DIR] (SUITE: trixie or forky)}
dir=${2:-build/engines/$suite}
packages=(docker.io docker-cli containerd tini docker-compose)
# From forky on, docker-init links to tini-static, a package of its own.
[ "$suite" = trixie ] || packages+=(tini-static)

say() { echo "engine-$suite: $*" >&2; }
die() { say "$*"; exit 1; }

dir=$(mkdir -p "$(dirname "$dir")" && cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
if [ -f "$dir/.unpacked" ] && [ -x "$dir/usr/sbin/dockerd" ]; then
	say "already unpacked in $dir ($(tr '\n' ' ' <"$dir/.unpacked"))"
	echo "$dir/usr/sbin/dockerd"
	exit 0
fi

for tool in apt-get apt-config dpkg dpkg-deb; do
	command -v "$tool" >/dev/null || die "$tool not found: this script needs Debian's apt and dpkg"
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring not found: apt-get install debian-archive-keyring"
arch=$(dpkg --print-architecture)

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	# The archive the system's sources use for its own release (not -security
	# or -updates): a local mirror on CI machines.
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	if [ -n "$codename" ]; then
		mirror=$(apt-get indextargets --format '$(REPO_URI)' "Codename: $codename" 'Created-By: Packages' 2>/dev/null |
			grep -v -e security -e '^file:' -e '^cdrom:' | head -1 || true)
	fi
	mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}

work=$(mktemp -d "$dir.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{lists/partial,cache/archives/partial,etc/preferences.d,debs,root}
echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/etc/sources.list"
: >"$work/status"
# Only this file's sources, lists, caches and (empty) pins and dpkg status:
# the system's apt state is neither read nor written. Downloads run as root
# because the work directory may not be readable by apt's sandbox user.
apt=(apt-get -q
	-o "Dir::Etc::sourcelist=$work/etc/sources.list"
	-o "Dir::Etc::sourceparts=-"
	-o "Dir::Etc::preferences=$work/etc/preferences"
	-o "Dir::Etc::preferencesparts=$work/etc/preferences.d"
	-o "Dir::State::Lists=$work/lists"
	-o "Dir::State::status=$work/status"
	-o "Dir::State::extended_states=$work/extended_states"
	-o "Dir::Cache=$work/cache"
	-o "APT::Architecture=$arch"
	-o "APT::Architectures=$arch"
	-o "Acquire::Languages=none"
	-o "APT::Sandbox::User=root")

say "fetching the $suite package lists from $mirror"
start=$SECONDS
# apt-get update exits 0 when a mirror cannot be reached: look for the list.
if ! "${apt[@]}" update >"$work/update.log" 2>&1 || ! compgen -G "$work/lists/*_${suite}_main_binary-${arch}_Packages*" >/dev/null; then
	cat "$work/update.log" >&2
	die "could not fetch $suite's package list from $mirror (set DEBIAN_MIRROR to a reachable Debian mirror)"
fi
say "downloading ${packages[*]} ($suite)"
(cd "$work/debs" && "${apt[@]}" download "${packages[@]}") >"$work/download.log" 2>&1 ||
	{ cat "$work/download.log" >&2; die "apt-get download ${packages[*]} from $suite failed"; }

: >"$work/root/.unpacked"
for deb in "$work"/debs/*.deb; do
	dpkg-deb -x "$deb" "$work/root"
	dpkg-deb -W --showformat '${Package} ${Version}\n' "$deb" >>"$work/root/.unpacked"
done
[ -x "$work/root/usr/sbin/dockerd" ] || die "no usr/sbin/dockerd in the unpacked docker.io"
[ -x "$work/root/usr/bin/containerd" ] || die "no usr/bin/containerd in the unpacked containerd"
[ -x "$work/root/usr/bin/docker-init" ] || die "no usr/bin/docker-init (tini) in the unpacked engine"
[ -x "$work/root/usr/libexec/docker/cli-plugins/docker-compose" ] || die "no docker-compose in the unpacked docker-compose"

rm -rf "$dir"
mv "$work/root" "$dir"
say "unpacked $(tr '\n' ' ' <"$dir/.unpacked")in $dir ($((SECONDS - start)) s, $(du -sh "$dir" | cut -f1))"
echo "$dir/usr/sbin/dockerd"
