#!/bin/bash
# The module for the nginx that is installed: `make for-installed`.
#
#   build-aux/for-installed.sh [--flags]
#
# NGINX_BIN      the installed nginx (default: nginx on PATH)
# NGINX_TARBALL  its release source, nginx-<version>.tar.gz, or
# NGINX_SRC      its source tree; with neither, the release tarball of the
#                version `nginx -V` prints is downloaded (curl or wget) from
#                NGINX_DOWNLOAD_URL (default below)
# BUILD          output directory (default: build); the module lands in
#                $BUILD/for-installed/ngx_ws_heartbeat_module.so
#
# A dynamic module loads only into an nginx of the same version whose
# binary compatibility signature matches: the source of exactly that
# version, configured with that binary's configure arguments (which
# include --with-compat on Debian's, Ubuntu's, nginx.org's packages and the
# official Docker image). Of these arguments it leaves out what names other
# modules and their libraries (--with-*=dynamic, --add-module=,
# --add-dynamic-module=: they do not change the signature of a
# --with-compat build, and their libraries are seldom installed) and the
# source paths that do not exist here (--with-openssl=, --with-pcre=,
# --with-zlib=, ... of a build machine). It builds only the modules
# (`make modules`), then proves the result with `nginx -t` against a
# configuration that loads it. Nothing is written outside $BUILD.
#
# --flags: print the configure arguments it would use, one per line, and
# stop.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NGINX_BIN="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
BUILD="${BUILD:-build}"
NGINX_DOWNLOAD_URL="${NGINX_DOWNLOAD_URL:-https://nginx.org/download/nginx-%s.tar.gz}"
MAKE="${MAKE:-make}"

die() { echo "for-installed: $*" >&2; exit 1; }

[ -x "$NGINX_BIN" ] || die "no nginx at $NGINX_BIN (NGINX_BIN=)"
nginx_v="$("$NGINX_BIN" -V 2>&1)" || die "$NGINX_BIN -V failed: $nginx_v"
version="$(sed -n 's|^nginx version: [^/]*/\([0-9.]*\).*|\1|p' <<<"$nginx_v")"
[ -n "$version" ] || die "no version in $NGINX_BIN -V"
args="$(sed -n 's/^configure arguments: //p' <<<"$nginx_v")"

# the arguments as the shell quoted them when configure ran ('--with-cc-opt=
# -g -O2 ...'): xargs undoes the quoting without evaluating anything
mapfile -t given < <(printf '%s' "$args" | xargs -r -n1 printf '%s\n')

# compiler options naming files of the build machine (-specs=<file>) stay
# behind when the file is not here
filter_opts() {
    local o words kept=()
    read -ra words <<<"$1"
    for o in "${words[@]}"; do
        case "$o" in
        -specs=*) [ -e "${o#-specs=}" ] || continue ;;
        esac
        kept+=("$o")
    done
    echo "${kept[*]}"
}

flags=()
compat=no
for a in "${given[@]}"; do
    case "$a" in
    --with-compat) compat=yes ;;
    --with-*=dynamic | --add-module=* | --add-dynamic-module=*) continue ;;
    --with-openssl=* | --with-pcre=* | --with-zlib=* | --with-libatomic=* \
    | --with-perl=*)
        [ -e "${a#*=}" ] || continue ;;
    --with-cc-opt=*) a="--with-cc-opt=$(filter_opts "${a#*=}")" ;;
    --with-ld-opt=*) a="--with-ld-opt=$(filter_opts "${a#*=}")" ;;
    esac
    flags+=("$a")
done
if [ "$compat" = no ]; then
    # without --with-compat the signature depends on every option: the
    # same arguments give the same one, adding --with-compat would not
    echo "for-installed: warning: $NGINX_BIN was built without" \
         "--with-compat; building with its exact arguments" >&2
fi

if [ "${1:-}" = --flags ]; then
    printf '%s\n' "${flags[@]}"
    exit 0
fi

# --- the source of that version --------------------------------------------

out="$(cd "$ROOT" && mkdir -p "$BUILD" && cd "$BUILD" && pwd)/for-installed"
rm -rf "$out"
mkdir -p "$out/src"
if [ -n "${NGINX_SRC:-}" ]; then
    [ -d "$NGINX_SRC/src/core" ] || die "$NGINX_SRC is no nginx source tree"
    cp -a "$NGINX_SRC/." "$out/src/"
else
    tarball="${NGINX_TARBALL:-}"
    if [ -z "$tarball" ]; then
        # shellcheck disable=SC2059
        url="$(printf "$NGINX_DOWNLOAD_URL" "$version")"
        tarball="$out/nginx-$version.tar.gz"
        echo "for-installed: downloading $url"
        if command -v curl >/dev/null; then
            curl -fsSL -o "$tarball" "$url"
        elif command -v wget >/dev/null; then
            wget -q -O "$tarball" "$url"
        else
            die "neither curl nor wget: give NGINX_TARBALL=<nginx-$version.tar.gz>"
        fi
    fi
    [ -f "$tarball" ] || die "no tarball $tarball"
    tar -xf "$tarball" -C "$out/src" --strip-components=1
fi
src_version="$(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' \
               "$out/src/src/core/nginx.h" 2>/dev/null || true)"
[ "$src_version" = "$version" ] \
    || die "the source is nginx ${src_version:-?}, $NGINX_BIN is $version:" \
           "a module loads only into the version it was built against"

# --- configure, build the module -------------------------------------------

if [ -x "$out/src/configure" ]; then conf=./configure; else conf=auto/configure; fi
echo "for-installed: nginx $version ($NGINX_BIN), configure" \
     "${#flags[@]} of its ${#given[@]} arguments + the module"
(cd "$out/src" && $conf "${flags[@]}" --add-dynamic-module="$ROOT" \
    --builddir="$out/objs") >"$out/configure.log" 2>&1 \
|| { tail -20 "$out/configure.log" >&2; die "configure failed ($out/configure.log)"; }
"$MAKE" -j"$(nproc 2>/dev/null || echo 1)" -f "$out/objs/Makefile" \
    -C "$out/src" modules >"$out/make.log" 2>&1 \
|| { tail -30 "$out/make.log" >&2; die "build failed ($out/make.log)"; }
so="$out/ngx_ws_heartbeat_module.so"
cp "$out/objs/ngx_ws_heartbeat_module.so" "$so"

# --- nginx -t with it loaded -----------------------------------------------

t="$out/t"
mkdir -p "$t/logs"
user=""
if [ "$(id -u)" = 0 ]; then
    user="user nobody $(id -gn nobody);"
fi
cat >"$t/nginx.conf" <<EOF
load_module $so;
$user
pid $t/nginx.pid;
error_log $t/logs/error.log;
events {}
http {
    access_log off;
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
        }
    }
}
EOF
# -e (nginx >= 1.19.5): not even the first error log line goes to the
# binary's compiled-in path
elog=()
IFS=. read -r v1 v2 v3 <<<"$version"
if [ $((v1 * 1000000 + v2 * 1000 + v3)) -ge 1019005 ]; then
    elog=(-e "$t/logs/error.log")
fi
"$NGINX_BIN" -p "$t/" "${elog[@]}" -c "$t/nginx.conf" -t \
    >"$t/nginx-t.log" 2>&1 \
|| { cat "$t/nginx-t.log" >&2; die "nginx -t with the module failed"; }
echo "for-installed: $so loads into $NGINX_BIN (nginx -t ok)"
