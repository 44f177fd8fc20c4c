#!/bin/bash
# sizeof the module's per-connection ctx, compiled against the same nginx
# headers and configuration (build/nginx/objs) as the module itself.
# usage: bench/sizeof.sh BUILD_DIR OUT_BINARY
set -euo pipefail
build=$(cd "$1" && pwd)
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
incs=$(sed -n '/^ALL_INCS =/,/[^\\]$/p' "$build/nginx/objs/Makefile" \
       | sed 's/^ALL_INCS =//; s/\\$//' | tr -s ' \t\n' ' ')
cd "$build/nginx/src"
g++ -std=c++17 -O1 $incs "$root/bench/sizeof_ctx.cpp" -o "$out"
