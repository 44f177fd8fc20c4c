#!/bin/bash
# CI's second nginx: `make compat` against Debian 13's nginx 1.26.3, from
# the upstream tarball (nginx_1.26.3.orig.tar.gz) of Debian's archive
# (t/compat/debian_orig.py: a trixie deb-src entry of our own under
# build/, the system's apt configuration untouched). When the archive
# cannot serve it, one line says why and this passes:
#   compat 1.26.3: skipped: <reason>
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD="${BUILD:-build}"
LABEL="compat 1.26.3"      # Debian 13 (trixie)'s nginx

start=$SECONDS
rc=0
out="$(t/compat/debian_orig.py --suite trixie --dir "$BUILD/compat/apt")" \
    || rc=$?
if [ "$rc" = 3 ]; then
    echo "$LABEL: ${out}"
    exit 0
fi
[ "$rc" = 0 ] || { echo "$LABEL: fetching the tarball failed"; exit 1; }
case "$(basename "$out")" in
nginx_1.26.3.orig.tar.*) ;;
*) echo "$LABEL: note: trixie's nginx is now $(basename "$out")" ;;
esac
rc=0
make --no-print-directory compat BUILD="$BUILD" NGINX_TARBALL="$out" || rc=$?
echo "$LABEL: make compat took $((SECONDS - start))s, exit status $rc"
exit "$rc"
