#!/usr/bin/env bash
# Measures what anti-spoofing costs: TCP throughput container -> container
# with iperf3, on an ournet network with the checks on and on one with
# ournet.anti_spoofing=false, interleaved, RUNS times each, SECONDS each run.
# Prints every run and the medians. Needs the engine at $DOCKER_HOST with
# ournet installed, this host's iperf3 (apt-get install iperf3) and an image
# with a shell (default busybox:latest; IMAGE=...). It copies iperf3 and its
# libraries into the containers, so the image needs no libc.
#
#   scripts/bench-antispoof.sh [RUNS] [SECONDS]
#
# Subnets: 198.18.96.0/24 and 198.18.97.0/24 (override with SUBNET_ON/OFF).
set -euo pipefail
runs=${1:-5}
secs=${2:-5}
image=${IMAGE:-busybox:latest}
on_net=${SUBNET_ON:-198.18.96.0/24}
off_net=${SUBNET_OFF:-198.18.97.0/24}
command -v iperf3 >/dev/null || { echo "iperf3 is not installed: apt-get install iperf3" >&2; exit 1; }

bundle=$(mktemp -d)
trap 'rm -rf "$bundle"; docker rm -f spb-on-s spb-on-c spb-off-s spb-off-c >/dev/null 2>&1 || true;
      docker network rm spb-on spb-off >/dev/null 2>&1 || true' EXIT
# iperf3, its libraries and the loader, at their own paths.
bin=$(readlink -f "$(command -v iperf3)")
mkdir -p "$bundle/$(dirname "$bin")"
cp -L "$bin" "$bundle/usr/bin/iperf3"
ldd "$bin" | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r lib; do
	[ -e "$lib" ] || continue
	mkdir -p "$bundle$(dirname "$lib")"
	cp -L "$lib" "$bundle$lib"
done

setup() { # NAME SUBNET [OPTS...]
	local name=$1 subnet=$2
	shift 2
	docker network create -d ournet --subnet "$subnet" "$@" "$name" >/dev/null
	for role in s c; do
		docker run -d --name "$name-$role" --network "$name" "$image" sleep 3600 >/dev/null
		tar -C "$bundle" -c . | docker cp - "$name-$role:/"
	done
	docker exec -d "$name-s" /usr/bin/iperf3 -s
}
setup spb-on "$on_net"
setup spb-off "$off_net" -o ournet.anti_spoofing=false
sleep 1

# run NAME: one run's receiver throughput in Gbit/s.
run() {
	local ip
	ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$1\").IPAddress}}" "$1-s")
	docker exec "$1-c" /usr/bin/iperf3 -c "$ip" -t "$secs" -f g |
		awk '/receiver/ {for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i}'
}
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

on=() off=()
for i in $(seq 1 "$runs"); do
	# Alternate which goes first, so that drift in the machine's load and
	# any warm-up hit both alike.
	if [ $((i % 2)) = 1 ]; then
		on+=("$(run spb-on)")
		off+=("$(run spb-off)")
	else
		off+=("$(run spb-off)")
		on+=("$(run spb-on)")
	fi
	echo "run $i: checks on ${on[-1]} Gbit/s, off ${off[-1]} Gbit/s"
done
echo "median of $runs runs of ${secs}s: checks on $(printf '%s\n' "${on[@]}" | median) Gbit/s," \
	"off $(printf '%s\n' "${off[@]}" | median) Gbit/s"
