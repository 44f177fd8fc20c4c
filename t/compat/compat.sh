#!/bin/bash
# make compat: one nginx version, two builds of it, one module.
#
#   t/compat/compat.sh (NGINX_SRC=<tree> | NGINX_TARBALL=<nginx-x.y.z.tar.gz>)
#
# Builds that nginx twice, both --with-compat:
#   debian    the configure flags of Debian's nginx (nginx-dev's conf_flags)
#   nginxorg  the configure flags of nginx.org's packages (below)
# builds the module once, against a pristine copy of the tree, configured
# only --with-compat (Makefile: `make module NGINX_SRC=`), loads it into
# both builds (nginx -t), runs the integration suite against each
# (NGINX_BIN=), and prints one row per build. Everything goes to
# $COMPAT_DIR/<version>/ (build/compat/ from the Makefile). Exit status 1
# when a build, a load or a suite failed.
#
# COMPAT_PYTEST_ARGS  more pytest arguments (e.g. -k, -x)
# COMPAT_SUITE=0      builds and nginx -t only
# COMPAT_JOBS         make -j (default: the number of CPUs)
# DEBIAN_CONF_FLAGS   the file that holds Debian's flags
#                     (default /usr/share/nginx/src/conf_flags)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
COMPAT_DIR="${COMPAT_DIR:-$ROOT/build/compat}"
PYTHON="${PYTHON:-/usr/bin/python3}"
JOBS="${COMPAT_JOBS:-$(nproc)}"
DEBIAN_CONF_FLAGS="${DEBIAN_CONF_FLAGS:-/usr/share/nginx/src/conf_flags}"
MAKE="${MAKE:-make}"

# nginx.org's packages (nginx.org/packages, and the official Docker image,
# which installs them): the configure arguments their `nginx -V` prints,
# the same for stable and mainline since 1.25 (--with-http_v3_module came
# with 1.25.0), without -ffile-prefix-map, which only names their build
# directory.
NGINXORG_FLAGS=(
    --prefix=/etc/nginx --sbin-path=/usr/sbin/nginx
    --modules-path=/usr/lib/nginx/modules
    --conf-path=/etc/nginx/nginx.conf
    --error-log-path=/var/log/nginx/error.log
    --http-log-path=/var/log/nginx/access.log
    --pid-path=/var/run/nginx.pid --lock-path=/var/run/nginx.lock
    --http-client-body-temp-path=/var/cache/nginx/client_temp
    --http-proxy-temp-path=/var/cache/nginx/proxy_temp
    --http-fastcgi-temp-path=/var/cache/nginx/fastcgi_temp
    --http-uwsgi-temp-path=/var/cache/nginx/uwsgi_temp
    --http-scgi-temp-path=/var/cache/nginx/scgi_temp
    --user=nginx --group=nginx
    --with-compat --with-file-aio --with-threads
    --with-http_addition_module --with-http_auth_request_module
    --with-http_dav_module --with-http_flv_module
    --with-http_gunzip_module --with-http_gzip_static_module
    --with-http_mp4_module --with-http_random_index_module
    --with-http_realip_module --with-http_secure_link_module
    --with-http_slice_module --with-http_ssl_module
    --with-http_stub_status_module --with-http_sub_module
    --with-http_v2_module --with-http_v3_module
    --with-mail --with-mail_ssl_module
    --with-stream --with-stream_realip_module --with-stream_ssl_module
    --with-stream_ssl_preread_module
    "--with-cc-opt=-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -fPIC"
    "--with-ld-opt=-Wl,-z,relro -Wl,-z,now -Wl,--as-needed -pie"
)

# Debian's: conf_flags (what nginx-dev ships for modules built against
# Debian's nginx) and the compiler flags Debian 12's `nginx -V` prints.
# conf_flags needs only PCRE2, OpenSSL and zlib, which the module's own
# build needs too: nothing is dropped. It has --with-debug, nginx.org's
# flags have not: the suite runs on both kinds.
DEBIAN_EXTRA_FLAGS=(
    "--with-cc-opt=-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC -Wdate-time -D_FORTIFY_SOURCE=2"
    "--with-ld-opt=-Wl,-z,relro -Wl,-z,now -fPIC"
)

die() { echo "compat: $*" >&2; exit 2; }

# --- the source ------------------------------------------------------------

[ -n "${NGINX_SRC:-}" ] || [ -n "${NGINX_TARBALL:-}" ] \
    || die "give NGINX_SRC=<nginx source tree> or NGINX_TARBALL=<tarball>"

stage="$COMPAT_DIR/.stage.$$"
rm -rf "$stage"
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
if [ -n "${NGINX_TARBALL:-}" ]; then
    [ -f "$NGINX_TARBALL" ] || die "no tarball $NGINX_TARBALL"
    tar -xf "$NGINX_TARBALL" -C "$stage" --strip-components=1
else
    [ -d "$NGINX_SRC/src/core" ] || die "$NGINX_SRC is no nginx source tree"
    cp -a "$NGINX_SRC/." "$stage/"
fi
# nginx-dev's tree (/usr/share/nginx/src) has the headers only: enough
# for a module, not for an nginx
[ -f "$stage/src/core/nginx.c" ] \
    || { rm -rf "$stage"; die "no src/core/nginx.c: a tree of headers only" \
         "(Debian's nginx-dev?); give the full source or a release tarball"; }
version="$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' \
           "$stage/src/core/nginx.h")"
[ -n "$version" ] || die "no NGINX_VERSION in src/core/nginx.h"

out="$COMPAT_DIR/$version"
rm -rf "$out"
mkdir -p "$out"
mv "$stage" "$out/src"           # the pristine tree, never configured
trap - EXIT

# an nginx release tarball has ./configure, a git tree auto/configure
configure_in() {
    if [ -x "$1/configure" ]; then echo ./configure; else echo auto/configure; fi
}

# numeric version: 1.26.3 -> 1026003
vnum() { local a b c; IFS=. read -r a b c <<<"$1"; echo $(( a * 1000000 + b * 1000 + c )); }

flags_for() {
    case "$1" in
    debian)
        # shellcheck disable=SC1090
        . "$DEBIAN_CONF_FLAGS"
        printf '%s\n' "${NGX_CONF_FLAGS[@]}" "${DEBIAN_EXTRA_FLAGS[@]}"
        ;;
    nginxorg)
        for f in "${NGINXORG_FLAGS[@]}"; do
            # HTTP/3 exists from 1.25.0 on; the packages of 1.24 lack it
            if [ "$f" = --with-http_v3_module ] \
               && [ "$(vnum "$version")" -lt "$(vnum 1.25.0)" ]; then
                continue
            fi
            printf '%s\n' "$f"
        done
        ;;
    esac
}

# --- nginx, twice ----------------------------------------------------------

build_nginx() {   # flavor -> $out/<flavor>/objs/nginx
    local flavor="$1" dir="$out/$1" flags conf
    mkdir -p "$dir"
    cp -a "$out/src/." "$dir/src"
    mapfile -t flags < <(flags_for "$flavor")
    printf '%s\n' "${flags[@]}" >"$dir/flags"
    conf="$(configure_in "$dir/src")"
    (cd "$dir/src" && $conf "${flags[@]}" --builddir="$dir/objs") \
        >"$dir/configure.log" 2>&1 \
    || { tail -20 "$dir/configure.log" >&2; return 1; }
    nice "$MAKE" -j"$JOBS" -f "$dir/objs/Makefile" -C "$dir/src" \
        >"$dir/make.log" 2>&1 \
    || { { grep -E "error:|\*\*\*" "$dir/make.log" || tail -20 "$dir/make.log"; } \
             | head -20 >&2; return 1; }
    "$dir/objs/nginx" -V >"$dir/nginx-V.txt" 2>&1
}

# --- the module, once ------------------------------------------------------

build_module() {
    nice "$MAKE" --no-print-directory -C "$ROOT" module \
        NGINX_SRC="$out/src" BUILD="$out/module" >"$out/module.log" 2>&1 \
    || { tail -30 "$out/module.log" >&2; return 1; }
    # a warning counts: the module builds without one on every version
    if grep -E "warning:" "$out/module.log" >&2; then
        return 1
    fi
}

# --- nginx -t with the module loaded ---------------------------------------

load_module() {   # flavor
    local dir="$out/$1" t="$out/$1/t" user=""
    mkdir -p "$t/logs"
    if [ "$(id -u)" = 0 ]; then
        user="user nobody $(id -gn nobody);"
    fi
    cat >"$t/nginx.conf" <<EOF
load_module $out/module/ngx_ws_heartbeat_module.so;
$user
pid $t/nginx.pid;
error_log $t/logs/error.log;
events {}
http {
    access_log $t/logs/access.log;
    client_body_temp_path $t/body;
    proxy_temp_path $t/proxy;
    fastcgi_temp_path $t/fastcgi;
    uwsgi_temp_path $t/uwsgi;
    scgi_temp_path $t/scgi;
    server {
        listen 127.0.0.1:1;
        location /ws {
            proxy_pass http://127.0.0.1:2;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection upgrade;
            ws_heartbeat on;
            ws_heartbeat_interval 5s;
        }
    }
}
EOF
    "$dir/objs/nginx" -p "$t/" -e "$t/logs/error.log" -c "$t/nginx.conf" -t \
        >"$t/nginx-t.log" 2>&1 \
    || { cat "$t/nginx-t.log" >&2; return 1; }
}

# --- the suite -------------------------------------------------------------

run_suite() {   # flavor -> "passed failed skipped" in $out/<flavor>/suite
    local dir="$out/$1" rc=0
    # shellcheck disable=SC2086
    (cd "$ROOT" && env -u NGINX_SRC -u NGINX_TARBALL \
        NGINX_BIN="$dir/objs/nginx" \
        NGX_WS_HEARTBEAT_MODULE="$out/module/ngx_ws_heartbeat_module.so" \
        nice "$PYTHON" -m pytest -p no:cacheprovider -q -rfE t \
            --junitxml="$dir/suite.xml" ${COMPAT_PYTEST_ARGS:-}) \
        >"$dir/suite.log" 2>&1 || rc=$?
    "$PYTHON" - "$dir/suite.xml" >"$dir/suite" <<'EOF' || echo "? ? ?" >"$dir/suite"
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
s = root if root.tag == "testsuite" else root.find("testsuite")
total, failed = int(s.get("tests")), int(s.get("failures")) + int(s.get("errors"))
skipped = int(s.get("skipped"))
print(total - failed - skipped, failed, skipped)
EOF
    if [ "$rc" != 0 ]; then
        grep -E "^(FAILED|ERROR) " "$dir/suite.log" >&2 || tail -30 "$dir/suite.log" >&2
    fi
    return "$rc"
}

# --- all of it -------------------------------------------------------------

status=0
module=failed
echo "compat $version: module (--with-compat, pristine tree)"
if build_module; then module=ok; else status=1; fi

rows=()
for flavor in debian nginxorg; do
    build=failed load=- suite=- t0=$SECONDS
    echo "compat $version: nginx, $flavor flags"
    if build_nginx "$flavor"; then
        build=ok
        if [ "$module" = ok ]; then
            if load_module "$flavor"; then
                load=ok
                if [ "${COMPAT_SUITE:-1}" != 0 ]; then
                    echo "compat $version: suite against the $flavor build"
                    run_suite "$flavor" || status=1
                    read -r p f s <"$out/$flavor/suite"
                    suite="$p passed, $f failed, $s skipped"
                else
                    suite="not run"
                fi
            else
                load=failed status=1
            fi
        fi
    else
        status=1
    fi
    rows+=("$(printf '%-8s %-9s %-9s %-9s %-10s %s (%ds)' "$version" "$flavor" \
        "$module" "$build" "$load" "$suite" $((SECONDS - t0)))")
done

{
    printf '%-8s %-9s %-9s %-9s %-10s %s\n' version flavor module \
        "nginx" "nginx -t" suite
    printf '%s\n' "${rows[@]}"
} | tee "$out/summary"
exit "$status"
