#!/usr/bin/env bash
# make demo: on a fresh Debian machine, start a Docker engine if none answers
# at $DOCKER_HOST, build and install the plugin, create an ournet network, run
# two containers and show them talking by IP and by name. The plugin and the
# engine stay; the demo's containers and network are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if ! docker version >/dev/null 2>&1; then
	case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
	unix:///var/run/docker.sock | unix:///run/docker.sock)
		say "no Docker engine answers: starting dockerd (log: /var/log/ournet-demo-dockerd.log)"
		setsid dockerd >/var/log/ournet-demo-dockerd.log 2>&1 </dev/null &
		for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
		docker version >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/ournet-demo-dockerd.log" >&2; exit 1; }
		;;
	*)
		echo "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST" >&2
		exit 1
		;;
	esac
fi
echo "engine: Docker $(docker version --format '{{.Server.Version}}')"

say "building and installing the plugin"
scripts/build-plugin.sh build/plugin
scripts/install-plugin.sh build/plugin
docker plugin ls

image=ournet-demo:busybox
if ! docker image inspect "$image" >/dev/null 2>&1; then
	say "importing a busybox image offline (from Debian's busybox-static)"
	tmp=$(mktemp -d)
	mkdir -p "$tmp"/{bin,tmp,etc,proc,sys,dev}
	chmod 1777 "$tmp/tmp"
	cp "$(command -v busybox)" "$tmp/bin/busybox"
	for a in sh ip ping nc wget httpd sleep true cat echo hostname timeout mkdir; do ln -s busybox "$tmp/bin/$a"; done
	tar -C "$tmp" -c . | docker import -c 'ENV PATH=/bin' - "$image" >/dev/null
	rm -rf "$tmp"
fi

cleanup() { docker rm -f demo-a demo-b >/dev/null 2>&1 || true; docker network rm ournet-demo >/dev/null 2>&1 || true; }
cleanup
trap cleanup EXIT

say "docker network create -d ournet --ipam-driver ournet ournet-demo"
docker network create -d ournet --ipam-driver ournet ournet-demo
docker network inspect -f 'subnet {{(index .IPAM.Config 0).Subnet}}, gateway {{(index .IPAM.Config 0).Gateway}}' ournet-demo

say "two containers on it"
docker run -d --name demo-a --network ournet-demo "$image" sleep 300 >/dev/null
docker run -d --name demo-b --network ournet-demo "$image" sleep 300 >/dev/null
ip_b=$(docker inspect -f '{{(index .NetworkSettings.Networks "ournet-demo").IPAddress}}' demo-b)
docker exec demo-a ip -4 addr show eth0 | sed -n 's/^ *inet /demo-a: /p'
echo "demo-b: $ip_b"

say "demo-a pings demo-b by IP"
docker exec demo-a ping -c 2 -W 2 "$ip_b"
say "demo-a pings demo-b by name"
docker exec demo-a ping -c 2 -W 2 demo-b
say "demo-b fetches a page that demo-a serves"
docker exec -d demo-a sh -c 'mkdir -p /tmp/www && echo "hello from demo-a over ournet" > /tmp/www/index.html && httpd -f -p 8080 -h /tmp/www'
sleep 0.5
docker exec demo-b timeout 5 wget -q -O - http://demo-a:8080/

say "it works: containers on an ournet network talk to each other"
echo "bridge: $(ip -br link show | awk '/^ournet-/ {print $1}' | head -1) (ournet-<network id>)"
echo "the demo's containers and network are removed now; the plugin stays installed ('docker plugin ls')"
