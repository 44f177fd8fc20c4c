"""make for-installed (build-aux/for-installed.sh): the module for the nginx
that is installed, from the source of its version and its `nginx -V`
configure arguments, proven with nginx -t.

The build runs against NGINX_BIN with Debian's nginx-dev tree made into a
release-style tarball (nginx-<version>/...) under tmp_path: it is skipped
when that tree is not NGINX_BIN's version (make compat's builds of other
versions), and it writes nothing outside tmp_path. The argument filter
runs against fake `nginx -V` outputs of Debian's and nginx.org's builds."""

import os
import re
import shlex
import stat
import subprocess
import tarfile

import pytest

from lib import nginx as nginx_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "build-aux", "for-installed.sh")
DEBIAN_TREE = "/usr/share/nginx/src"


def tree_version(tree):
    try:
        with open(os.path.join(tree, "src", "core", "nginx.h")) as f:
            m = re.search(r'#define NGINX_VERSION\s+"([0-9.]+)"', f.read())
    except FileNotFoundError:
        return None
    return m and m.group(1)


def run(args, env_extra, timeout=900):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "NGINX_SRC",
                        "NGINX_TARBALL", "BUILD")}
    env.update(env_extra)
    return subprocess.run(args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def fake_nginx(path, version, arguments):
    """An executable that prints what `nginx -V` prints (on stderr, as
    nginx does)."""
    path.write_text("#!/bin/sh\ncat >&2 <<'EOF'\n"
                    "nginx version: nginx/%s\n"
                    "built by gcc 12.2.0 (Debian 12.2.0-14)\n"
                    "TLS SNI support enabled\n"
                    "configure arguments: %s\nEOF\n" % (version, arguments))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def flags(bin_path):
    r = run([SCRIPT, "--flags"], {"NGINX_BIN": bin_path}, timeout=30)
    assert r.returncode == 0, r.stdout
    return r.stdout.splitlines()


# the official image's nginx (nginx.org's package), as `nginx -V` prints it
NGINXORG_V = (
    "--prefix=/etc/nginx --sbin-path=/usr/sbin/nginx "
    "--modules-path=/usr/lib/nginx/modules --conf-path=/etc/nginx/nginx.conf "
    "--user=nginx --group=nginx --with-compat --with-file-aio --with-threads "
    "--with-http_v2_module --with-http_v3_module --with-stream "
    "--with-cc-opt='-g -O2 -ffile-prefix-map=/data/builder/debuild/"
    "nginx-1.27.5/debian/debuild-base/nginx-1.27.5=. -fstack-protector-strong "
    "-Wformat -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -fPIC' "
    "--with-ld-opt='-Wl,-z,relro -Wl,-z,now -Wl,--as-needed -pie'")

# Debian's and Ubuntu's: modules of their own built =dynamic, sources of
# a build machine, a -specs= file of an older Ubuntu
DISTRO_V = (
    "--with-cc-opt='-g -O2 -specs=/nonexistent/no-pie-compile.specs -fPIC' "
    "--with-ld-opt='-Wl,-z,relro' --prefix=/usr/share/nginx --with-compat "
    "--with-debug --with-http_geoip_module=dynamic "
    "--with-http_perl_module=dynamic --with-mail=dynamic "
    "--with-stream=dynamic --with-stream_ssl_module "
    "--add-dynamic-module=/build/nginx/debian/modules/http-echo "
    "--add-module=/build/nginx/debian/modules/http-auth-pam "
    "--with-openssl=/build/openssl-3.0.2 --with-pcre=%s" % ROOT)


def test_nginxorg_arguments_are_kept_whole(tmp_path):
    """All of the official image's arguments, each quoted option one
    argument."""
    got = flags(fake_nginx(tmp_path / "nginx", "1.27.5", NGINXORG_V))
    assert got[0] == "--prefix=/etc/nginx"
    assert "--with-compat" in got and "--with-http_v3_module" in got
    cc = [a for a in got if a.startswith("--with-cc-opt=")]
    assert cc == ["--with-cc-opt=-g -O2 -ffile-prefix-map=/data/builder/"
                  "debuild/nginx-1.27.5/debian/debuild-base/nginx-1.27.5=. "
                  "-fstack-protector-strong -Wformat "
                  "-Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 -fPIC"]
    assert got == shlex.split(NGINXORG_V)


def test_distro_modules_and_missing_paths_are_left_out(tmp_path):
    got = flags(fake_nginx(tmp_path / "nginx", "1.24.0", DISTRO_V))
    assert got == [
        "--with-cc-opt=-g -O2 -fPIC", "--with-ld-opt=-Wl,-z,relro",
        "--prefix=/usr/share/nginx", "--with-compat", "--with-debug",
        "--with-stream_ssl_module", "--with-pcre=" + ROOT]


def test_other_version_of_the_source_is_refused(tmp_path):
    """A tarball of another version than the binary's: a message naming
    both, before anything is configured."""
    if not tree_version(DEBIAN_TREE):
        pytest.skip("no nginx-dev tree in " + DEBIAN_TREE)
    bin_path = fake_nginx(tmp_path / "nginx", "1.99.0", NGINXORG_V)
    r = run([SCRIPT], {"NGINX_BIN": bin_path, "NGINX_SRC": DEBIAN_TREE,
                       "BUILD": str(tmp_path / "build")}, timeout=120)
    assert r.returncode != 0
    assert "the source is nginx %s, %s is 1.99.0" \
        % (tree_version(DEBIAN_TREE), bin_path) in r.stdout, r.stdout
    assert not os.path.exists(tmp_path / "build" / "for-installed" / "objs")


@pytest.fixture(scope="module")
def debian_tarball(tmp_path_factory):
    """Debian's nginx-dev tree as a release tarball, nginx-<version>/."""
    version = tree_version(DEBIAN_TREE)
    if version is None:
        pytest.skip("no nginx-dev tree in " + DEBIAN_TREE)
    if version != "%d.%d.%d" % nginx_lib.nginx_version():
        pytest.skip("%s is nginx %s, NGINX_BIN %s is %d.%d.%d" % (
            (DEBIAN_TREE, version, nginx_lib.NGINX_BIN)
            + nginx_lib.nginx_version()))
    path = tmp_path_factory.mktemp("src") / ("nginx-%s.tar.gz" % version)
    with tarfile.open(path, "w:gz") as t:
        t.add(DEBIAN_TREE, arcname="nginx-" + version)
    return str(path)


def test_builds_for_installed_nginx_and_loads(debian_tarball, tmp_path):
    """make for-installed against NGINX_BIN and its version's tarball: the
    module it leaves passes nginx -t in NGINX_BIN, and it was configured
    with that binary's arguments (less the =dynamic ones)."""
    build = tmp_path / "build"
    r = run(["make", "-s", "for-installed",
             "NGINX_BIN=" + nginx_lib.NGINX_BIN,
             "NGINX_TARBALL=" + debian_tarball, "BUILD=" + str(build)], {})
    assert r.returncode == 0, r.stdout
    assert "(nginx -t ok)" in r.stdout, r.stdout
    so = build / "for-installed" / "ngx_ws_heartbeat_module.so"
    assert so.is_file()

    # the same again by hand: a fresh prefix, the module and a location
    # that uses it
    n = nginx_lib.Nginx(tmp_path / "t", """
        server {
            listen 127.0.0.1:%d;
            location / { proxy_pass http://127.0.0.1:1; ws_heartbeat on; }
        }""" % nginx_lib.free_port(), load_module=False,
        main="load_module %s;" % so)
    rc, out = n.test_config()
    assert rc == 0, out

    with open(build / "for-installed" / "objs" / "ngx_auto_config.h") as f:
        configured = f.read()
    assert "--with-compat" in configured
    assert "=dynamic" not in configured
