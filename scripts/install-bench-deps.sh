#!/bin/sh
# Installs the Debian 12 packages `make bench` needs: the proxies sallyport is
# compared with (HAProxy, nginx with its mail module, sniproxy) and what the
# benchmark programs in bench/ build with. Never part of `make check`. The
# package scripts never start the proxies as system services (see
# install-deps.sh): the benchmark starts its own on loopback ports.
set -eu
INSTALL_WHAT="sallyport bench" exec sh "$(dirname "$0")/install-deps.sh" \
    build-essential gcc pkg-config make libssl-dev libev-dev openssl python3 \
    haproxy nginx libnginx-mod-mail sniproxy
