"""Throwaway TLS material for tests."""

import subprocess


def self_signed(directory, cn, crt="cert.pem", key="key.pem"):
    """A self-signed RSA certificate for cn, valid two days, and its key,
    written to directory (a pathlib.Path); returns their paths (str)."""
    crt, key = directory / crt, directory / key
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", "/CN=" + cn],
                   check=True, capture_output=True)
    return str(crt), str(key)
