#!/usr/bin/env bash
# Installs build/plugin as the managed plugin on the engine at $DOCKER_HOST
# (default: the local socket), replacing an older install, and enables it.
#
# The managed plugin is named ournet/ournet; the driver's name is plain
# "ournet" (-d ournet, --ipam-driver ournet), served on the legacy socket
# /run/docker/plugins/ournet.sock. A managed plugin named just "ournet"
# would be registered as "ournet:latest" and shadow that socket: the engine
# then answers "-d ournet" with "could not resolve driver ournet in registry".
#
# OURNET_SETTINGS="KEY=VALUE ..." are applied with `docker plugin set` before
# the plugin is enabled (e.g. LOG_LEVEL=debug DEFAULT_POOLS=base=10.99.0.0/16,size=24).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/plugin}
name=${PLUGIN_NAME:-ournet/ournet}

[ -f "$dir/config.json" ] || { echo "no $dir/config.json: run 'make plugin' first" >&2; exit 1; }

# The plugin bind-mounts these host paths; on a local engine make sure they
# exist (the iptables lock file exists only once a legacy iptables ran).
local_engine=
case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
unix://*)
	local_engine=1
	mkdir -p /run/docker/plugins
	[ -e /run/xtables.lock ] || touch /run/xtables.lock
	;;
esac

# ournet's state (networks, endpoints, addresses) lives in the plugin's
# propagatedMount, which `docker plugin rm` deletes. Without a registry there
# is no `docker plugin upgrade`, so an upgrade here is rm + create: carry the
# state across, with the old plugin stopped so that the copy is consistent.
state=
if old_id=$(docker plugin inspect -f '{{.Id}}' "$name" 2>/dev/null); then
	docker plugin disable -f "$name" >/dev/null 2>&1 || true
	root=$(docker info -f '{{.DockerRootDir}}')
	if [ -n "$local_engine" ] && [ -d "$root/plugins/$old_id/propagated-mount" ]; then
		state=$(mktemp -d)
		cp -a "$root/plugins/$old_id/propagated-mount/." "$state/"
	elif docker network ls -q --filter driver=ournet | grep -q .; then
		echo "warning: the engine is not local, so ournet's state cannot be carried over; its networks will need to be recreated" >&2
	fi
	docker plugin rm -f "$name" >/dev/null
fi
docker plugin create "$name" "$dir" >/dev/null
if [ -n "$state" ]; then
	new_id=$(docker plugin inspect -f '{{.Id}}' "$name")
	mkdir -p "$root/plugins/$new_id/propagated-mount"
	cp -a "$state/." "$root/plugins/$new_id/propagated-mount/"
	rm -rf "$state"
	echo "carried ournet's state over to the new plugin"
fi
if [ -n "${OURNET_SETTINGS:-}" ]; then
	# shellcheck disable=SC2086 # one word per setting
	docker plugin set "$name" $OURNET_SETTINGS
fi
docker plugin enable "$name" >/dev/null
echo "plugin $name installed and enabled"
