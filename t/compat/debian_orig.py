#!/usr/bin/python3
"""The upstream source tarball of a Debian release's nginx, from Debian's
archive, through apt, without touching the system's apt configuration.

    t/compat/debian_orig.py --suite trixie --dir build/compat/apt

prints the path of the verified nginx_<version>.orig.tar.gz on stdout, or
"skipped: <reason>" with exit status 3 when the archive cannot serve it.

The archive is the one the system's own apt uses for bookworm main
(/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list): no host name
is written here. A deb-src entry of our own for --suite goes under --dir,
with apt's lists and cache next to it; apt-get runs with
Dir::Etc::sourcelist / sourceparts / State::Lists / Cache pointed there.
`apt-get source --download-only` fetches the .dsc and its files. Where the
archive refuses the .dsc, the tarball's path and SHA-256 come from the
suite's Sources index and apt-helper fetches just it (apt's transport,
checksum checked by apt); its SHA-256 is checked here again either way."""

import argparse
import glob
import hashlib
import os
import re
import subprocess
import sys

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Skip(Exception):
    pass


def deb822_stanzas(text):
    for block in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields:
            yield fields


def system_archive(base_suite="bookworm"):
    """(URI, keyring) of the system's apt entry for base_suite main."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as f:
            for s in deb822_stanzas(f.read()):
                if s.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" in s.get("types", "").split() and \
                        base_suite in s.get("suites", "").split() and \
                        "main" in s.get("components", "").split():
                    key = s.get("signed-by", "")
                    return (s["uris"].split()[0],
                            key if key.startswith("/") else KEYRING)
    lists = ["/etc/apt/sources.list"] + \
        sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in lists:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0])
            w = line.split()
            if len(w) >= 4 and w[0] == "deb" and w[2] == base_suite \
                    and "main" in w[3:]:
                return w[1], KEYRING
    raise Skip("no apt entry for %s main in /etc/apt" % base_suite)


class Apt:
    def __init__(self, top, uri, keyring, suite):
        self.top = os.path.abspath(top)
        self.lists = os.path.join(self.top, "lists")
        self.cache = os.path.join(self.top, "cache")
        for d in (os.path.join(self.lists, "partial"),
                  os.path.join(self.cache, "archives", "partial")):
            os.makedirs(d, exist_ok=True)
        self.sourcelist = os.path.join(self.top, "sources.list")
        with open(self.sourcelist, "w") as f:
            f.write("deb-src [signed-by=%s] %s %s main\n"
                    % (keyring, uri, suite))
        self.opts = [
            "-o", "Dir::Etc::sourcelist=" + self.sourcelist,
            "-o", "Dir::Etc::sourceparts=-",
            "-o", "Dir::State::Lists=" + self.lists,
            "-o", "Dir::Cache=" + self.cache,
            "-o", "APT::Sandbox::User=root",   # build/ is ours, not _apt's
            "-o", "Acquire::Languages=none",
        ]

    def run(self, *args, cwd=None, timeout=600):
        return subprocess.run(list(args[:1]) + self.opts + list(args[1:]),
                              cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)

    def sources_stanza(self, package):
        """The package's stanza of the suite's Sources index."""
        for path in glob.glob(os.path.join(self.lists, "*_Sources*")):
            r = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path],
                               stdout=subprocess.PIPE, text=True)
            for s in deb822_stanzas(r.stdout):
                if s.get("package") == package:
                    return s
        raise Skip("no %s in the Sources index" % package)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(args):
    uri, keyring = system_archive()
    apt = Apt(args.dir, uri, keyring, args.suite)
    r = apt.run("apt-get", "update")
    if r.returncode != 0 or \
            not glob.glob(os.path.join(apt.lists, "*_Sources*")):
        # apt-get update may exit 0 with nothing fetched: its
        # first W: or E: line says why
        why = [l for l in r.stdout.splitlines()
               if l.startswith(("E:", "W:"))][:1]
        raise Skip("apt-get update of the %s deb-src entry failed: %s"
                   % (args.suite, why[0] if why else r.stdout.strip()))
    s = apt.sources_stanza(args.package)
    orig = [l.split() for l in s.get("checksums-sha256", "").splitlines()
            if re.search(r"\.orig\.tar\.[a-z0-9]+$", l.strip())]
    if not orig:
        raise Skip("no orig tarball in the %s stanza" % args.package)
    digest, _, name = orig[0]
    print("%s %s: %s %s" % (args.suite, args.package, s.get("version"), name),
          file=sys.stderr)
    src = os.path.join(apt.top, "source")
    os.makedirs(src, exist_ok=True)
    dest = os.path.join(src, name)
    if not (os.path.exists(dest) and sha256(dest) == digest):
        r = apt.run("apt-get", "source", "--download-only",
                    "%s=%s" % (args.package, s["version"]), cwd=src)
        if r.returncode != 0 or not os.path.exists(dest):
            # the archive may refuse the .dsc and serve the tarball alone
            print("apt-get source: %s; the tarball alone"
                  % (r.stdout.strip().splitlines()[-1:] or "?"),
                  file=sys.stderr)
            url = "%s/%s/%s" % (uri.rstrip("/"), s["directory"], name)
            r = subprocess.run(["/usr/lib/apt/apt-helper", "download-file",
                                url, dest, "SHA256:" + digest],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               timeout=600)
            if r.returncode != 0:
                raise Skip("the archive serves neither the .dsc nor %s: %s"
                           % (name, r.stdout.strip().splitlines()[-1:]))
    if sha256(dest) != digest:
        sys.exit("%s: SHA-256 differs from the Sources index" % dest)
    return dest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="trixie")
    p.add_argument("--package", default="nginx")
    p.add_argument("--dir", required=True)
    args = p.parse_args()
    try:
        print(fetch(args))
    except (Skip, subprocess.TimeoutExpired, OSError) as e:
        print("skipped: %s" % e)
        sys.exit(3)


if __name__ == "__main__":
    main()
