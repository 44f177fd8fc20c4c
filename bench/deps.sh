#!/bin/bash
# Installs what `make bench` needs beyond `make deps` (t/deps.sh), with apt;
# quiet and idempotent when everything is there. Run as root on Debian 12.
# Kept apart from t/deps.sh so that `make test` stays lean.
set -euo pipefail

pkgs=(
    g++ make libssl-dev          # the load generator / echo backend
    nginx nginx-dev              # the binary under test, module headers
    libnginx-mod-http-lua        # the Lua frame-by-frame proxy (ngx_lua)
    lua-nginx-websocket          # resty.websocket.{server,client} for it
    gnuplot-nox                  # the plot in docs/benchmarks.md
    valgrind                     # callgrind profile of the relay hot path
    linux-perf                   # perf, where the machine has counters
    iproute2                     # ip netns + veth: mass dead-peer detection
    procps                       # uptime, pgrep
)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "bench deps: missing ${missing[*]}; run as root (apt-get install)" >&2
    exit 1
fi

echo "bench deps: installing ${missing[*]}"

# Debian's nginx packages start a system nginx on port 80 unless told not
# to; the benchmark starts its own. Block service starts for this install.
guard=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=1
fi
trap '[ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "bench deps: done"
