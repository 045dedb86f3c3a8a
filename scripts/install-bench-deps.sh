#!/bin/sh
# Installs the Debian 12 packages `make bench` needs: the proxies sallyport is
# compared with (HAProxy, nginx with its mail module, sniproxy) and what the
# benchmark programs in bench/ build with. Never part of `make check`.
# Fast when everything is present; uses apt-get only when root and something
# is missing; otherwise prints the command to run.
set -eu

PACKAGES="build-essential gcc pkg-config make libssl-dev libev-dev openssl python3 \
haproxy nginx libnginx-mod-mail sniproxy"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "sallyport bench: missing packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi

echo "sallyport bench: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# Package scripts must not start system-wide services on a build machine:
# the benchmark starts its own nginx, haproxy and sniproxy on loopback ports.
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
apt-get update -qq || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
[ -n "$created_policy" ] && rm -f "$policy"
exit 0
