#!/bin/sh
# Installs the Debian 12 packages sallyport needs to build and test, or the
# packages named on the command line instead (install-bench-deps.sh).
# Fast when everything is present; uses apt-get only when root and something
# is missing; otherwise prints the command to run.
set -eu

PACKAGES="build-essential gcc clang pkg-config make \
libssl-dev libev-dev libinih-dev libcrypt-dev libcmocka-dev libcurl4-openssl-dev libjansson-dev \
openssl curl swaks libnet-ssleay-perl libio-socket-ssl-perl postfix python3 python3-pytest python3-pytest-xdist \
dovecot-imapd dovecot-pop3d dovecot-managesieved clang-format testssl.sh valgrind \
haproxy systemd procps prometheus pebble"
WHAT="sallyport"
if [ $# -gt 0 ]; then
    PACKAGES="$*"
    WHAT="${INSTALL_WHAT:-sallyport}"
fi

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
    echo "$WHAT: missing packages:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
fi

echo "$WHAT: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# postfix asks questions at install time; answer them up front.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Package scripts must not start system-wide services on a build machine.
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
