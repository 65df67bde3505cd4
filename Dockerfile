# Builds the plugin's rootfs for users who have a registry:
#
#   docker build -t ournet-rootfs .
#   id=$(docker create ournet-rootfs true)
#   mkdir -p build/plugin/rootfs && docker export "$id" | tar -x -C build/plugin/rootfs
#   docker rm "$id" && cp config.json build/plugin/
#   docker plugin create ournet/ournet build/plugin && docker plugin enable ournet/ournet
#
# Pick the Debian release whose iptables backend (nft or legacy) matches your
# host's: the plugin's rules must land in the same tables as dockerd's.
# Without a registry, `make plugin` builds the same tree from this host's own
# binaries instead.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o /ournet ./plugin

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/docker/plugins /run/docker/host-plugins /var/lib/ournet
COPY --from=build /ournet /ournet
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/ournet"]
