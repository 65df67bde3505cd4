#!/usr/bin/env bash
# Installs what ournet's build, tests and demo need on Debian, only where it
# is missing: Debian's docker.io (engine), iptables, busybox-static (the
# offline test image), iproute2, etcd-server (the cluster store's tests),
# and the Go modules.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v containerd >/dev/null || need+=(containerd)
command -v iptables >/dev/null || need+=(iptables)
command -v busybox >/dev/null || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v findmnt >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v nft >/dev/null || need+=(nftables)
command -v etcd >/dev/null || need+=(etcd-server) # the cluster store's tests run a real etcd cluster
for extra in "$@"; do command -v "${extra%%=*}" >/dev/null || need+=("${extra#*=}"); done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing: ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "installing: ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v docker >/dev/null || { echo "no docker CLI after installing docker.io" >&2; exit 1; }
command -v go >/dev/null || { echo "Go is not installed (https://go.dev/doc/install)" >&2; exit 1; }
go mod download
