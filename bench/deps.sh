#!/bin/bash
# Installs what `make bench` needs: what `make deps` installs (t/deps.sh:
# the build, nginx, valgrind, pgrep, ip), then the packages only the
# benchmark needs, with apt; quiet and idempotent when everything is there.
# Run as root on Debian 12. Kept apart from t/deps.sh so that `make test`
# stays lean.
set -euo pipefail

pkgs=(
    libnginx-mod-http-lua        # the Lua frame-by-frame proxy (ngx_lua)
    lua-nginx-websocket          # resty.websocket.{server,client} for it
    gnuplot-nox                  # the plot in docs/benchmarks.md
    linux-perf                   # perf, where the machine has counters
)

deps="$(dirname "$0")/../t/deps.sh"
"$deps"
exec "$deps" "${pkgs[@]}"
