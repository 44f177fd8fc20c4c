#!/usr/bin/python3
"""Writes the seed corpora for fuzz_scanner and fuzz_outbound.

Run from anywhere: /usr/bin/python3 t/fuzz/make_corpus.py
Deterministic (fixed seed), so re-running gives the same files.
"""
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from lib.wsproto import encode_frame  # noqa: E402

rng = random.Random(6455)


def frame(b0, payload, mask=None, form=None, declared=None):
    """The frame whose first byte is b0, masked with the key mask unless
    it is None (lib.wsproto.encode_frame)."""
    return encode_frame(b0 & 0x0F, payload, fin=bool(b0 & 0x80),
                        mask=mask is not None, rsv=(b0 >> 4) & 7, key=mask,
                        form=form, declared=declared)


def header(b0, n, mask=None, form=None):
    """Only the header (and key) of a frame declaring n payload bytes."""
    return frame(b0, b'', mask, form, n)


def key():
    return bytes(rng.randrange(256) for _ in range(4))


def our_pong(seq, mask):
    payload = b'wshb' + seq.to_bytes(4, 'big') + (123456).to_bytes(8, 'big')
    return frame(0x8a, payload, mask)


def streams(client):
    """(name, bytes) pairs of valid and invalid streams for a role."""
    k = key if client else (lambda: None)
    out = [
        ('text', frame(0x81, b'Hello', k())),
        ('frag', frame(0x01, b'Hel', k()) + frame(0x89, b'p', k())
         + frame(0x80, b'lo', k())),
        ('len16', frame(0x82, bytes(300), k())),
        # 64-bit length: whole for the server, cut short for the client
        # (the payload is skipped anyway; small seeds keep the fuzzer fast)
        ('len64', frame(0x82, bytes(65536), k())[:None if not client
                                                  else 300]),
        ('empty', frame(0x82, b'', k()) + frame(0x8a, b'', k())),
        ('close', frame(0x88, b'\x03\xe8bye', k())),
        ('ourpong', our_pong(0, k()) + frame(0x81, b'x', k())),
        ('foreignpong', frame(0x8a, bytes(range(16)), k())
         + our_pong(7, k())),
        ('pong17', frame(0x8a, bytes(17), k()) + our_pong(1, k())),
        ('mixed', frame(0x02, bytes(200), k()) + our_pong(2, k())
         + frame(0x89, b'ping', k()) + frame(0x00, bytes(10), k())
         + frame(0x8a, b'abcd', k()) + frame(0x80, b'', k())),
        ('rsv1', frame(0xc1, b'z', k()) + frame(0x80 | 0x00, b'', k())),
        # rejections
        ('bad_opcode', frame(0x83, b'', k())),
        ('bad_rsv2', frame(0xa1, b'', k())),
        ('bad_ctl_size', header(0x89, 126, k())),
        ('bad_ctl_frag', frame(0x09, b'', k())),
        ('bad_size16', header(0x82, 5, k(), '16')),
        ('bad_size64', header(0x82, 5, k(), '64')),
        ('bad_top_bit', header(0x82, 1 << 63, k())),
        ('bad_mask', frame(0x81, b'm', None if client else key())),
        ('bad_cont', frame(0x80, b'', k())),
        ('bad_data', frame(0x01, b'', k()) + frame(0x81, b'', k())),
        ('truncated', frame(0x82, bytes(100), k())[:50]),
        ('pong_tail', our_pong(3, k())[:9]),
    ]
    return out


def write(dirname, name, data):
    d = os.path.join(HERE, 'corpus', dirname)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def main():
    for client in (False, True):
        role = 'client' if client else 'server'
        for name, s in streams(client):
            for rsv1 in (0, 1):
                if rsv1 and not name.startswith('rsv1'):
                    continue
                b0 = (1 if client else 0) | (rsv1 << 1) | (rng.randrange(64)
                                                           << 2)
                write('scanner', '%s_%s' % (role, name), bytes([b0]) + s)

            # outbound: keep seeds small so the fuzzer runs fast
            if len(s) > 4000:
                continue
            for io in [(0, 3, 7)[len(name) % 3]]:
                cf = (1 if client else 0) | 2 | (io << 3) | (2 << 6)
                if name.startswith('rsv1'):
                    cf |= 4
                choices = bytes(rng.randrange(256) for _ in range(64))
                data = bytes([cf]) + len(s).to_bytes(2, 'little') + s
                write('outbound', '%s_%s_io%d' % (role, name, io),
                      data + choices)


if __name__ == '__main__':
    main()
