#!/bin/bash
# Installs what the build, the tests and the demo need, with apt; quiet and
# idempotent when everything is there. Run as root on Debian 12.
# With package names as arguments it installs those instead (bench/deps.sh).
set -euo pipefail

pkgs=(
    nginx              # the binary the tests and the demo run
    nginx-dev          # headers and build scripts the module compiles against
    libssl-dev         # RAND_bytes for the masking keys of upstream Pings
    g++ make
    catch2             # unit tests of src/
    clang-14 libclang-rt-14-dev   # libFuzzer targets (make fuzz)
    python3-pytest python3-websockets   # integration harness, backends, clients
    python3-h2         # an HTTP/2 client: h2 upgrades must be left alone
    python3-prometheus-client   # parses the status endpoint's exposition
    prometheus         # a real Prometheus scrapes the status endpoint; promtool
                       # checks the exposition and tests the example alert rules
    python3-jsonschema # validates the status JSON against docs/status.schema.json
    node-ws            # an independent client (Node.js ws)
    chromium           # a real browser client, headless over DevTools
    openssl            # test certificates
    iproute2           # ip netns + veth: the vanished-backend test's private link
    procps             # pgrep: worker pids (t/lib/nginx.py; drain, observability,
                       # deb and reliability tests)
    valgrind           # make reliability-valgrind (nginx under memcheck)
    debhelper          # make deb: dh and the nginx addon nginx-dev ships
    dpkg-dev           # make deb: dpkg-buildpackage
)
[ $# -gt 0 ] && pkgs=("$@")

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${missing[*]}; run as root (apt-get install)" >&2
    exit 1
fi

echo "deps: installing ${missing[*]}"

# Debian's nginx package starts a system nginx on port 80 unless told not
# to; the tests start their own. Block service starts for this install only.
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
echo "deps: done"
