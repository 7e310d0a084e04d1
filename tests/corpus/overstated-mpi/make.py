#!/usr/bin/env python3
"""Makes private-overstated-mpi.asc from the sylabs test key.

Keys made by Apptainer's OpenPGP library can carry self-signatures whose MPI
bit count is the byte length times eight, overstating the number's bit count
when its first byte has leading zero bits. gpg and Apptainer accept such
keys; a strict parser refuses the signatures. This takes
../sylabs-sif/test/keys/private.asc (RSA-2048, both self-signatures' MPIs
shorter than 2048 bits), sets each signature packet's MPI bit count to 8 x
its byte length, and re-armors the result. Only the 2-byte count fields
change: every signature still verifies with a lenient parser.

Usage: tests/corpus/overstated-mpi/make.py > private-overstated-mpi.asc
"""
import base64
import pathlib
import sys

SRC = pathlib.Path(__file__).parent / "../sylabs-sif/test/keys/private.asc"


def crc24(data):
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text):
    lines = text.strip().splitlines()
    body = lines[lines.index("") + 1 : -1]
    body = [l for l in body if not l.startswith("=")]
    return base64.b64decode("".join(body)), lines[0], lines[-1]


def packets(data):
    """(tag, header_len, body_len) of each old- or new-format packet."""
    at = 0
    while at < len(data):
        ctb = data[at]
        if ctb & 0x40:
            tag, first = ctb & 0x3F, data[at + 1]
            if first < 192:
                hlen, blen = 2, first
            elif first < 224:
                hlen, blen = 3, ((first - 192) << 8) + data[at + 2] + 192
            else:
                assert first == 255, "partial lengths do not occur in keys"
                hlen, blen = 6, int.from_bytes(data[at + 2 : at + 6], "big")
        else:
            tag, kind = (ctb >> 2) & 0xF, ctb & 3
            size = {0: 1, 1: 2, 2: 4}[kind]
            hlen, blen = 1 + size, int.from_bytes(data[at + 1 : at + 1 + size], "big")
        yield at, tag, hlen, blen
        at += hlen + blen


def overstate(data):
    data = bytearray(data)
    changed = 0
    for at, tag, hlen, blen in packets(bytes(data)):
        body = at + hlen
        if tag != 2 or data[body] != 4:
            continue
        hashed = int.from_bytes(data[body + 4 : body + 6], "big")
        unhashed_at = body + 6 + hashed
        unhashed = int.from_bytes(data[unhashed_at : unhashed_at + 2], "big")
        mpi = unhashed_at + 2 + unhashed + 2
        while mpi < body + blen:
            bits = int.from_bytes(data[mpi : mpi + 2], "big")
            nbytes = (bits + 7) // 8
            if bits != nbytes * 8:
                data[mpi : mpi + 2] = (nbytes * 8).to_bytes(2, "big")
                changed += 1
            mpi += 2 + nbytes
    assert changed, "no MPI to overstate"
    return bytes(data)


def armor(data, begin, end):
    b64 = base64.b64encode(data).decode()
    out = [begin, ""]
    out += [b64[i : i + 64] for i in range(0, len(b64), 64)]
    out += ["=" + base64.b64encode(crc24(data).to_bytes(3, "big")).decode(), end]
    return "\n".join(out) + "\n"


data, begin, end = dearmor(SRC.read_text())
sys.stdout.write(armor(overstate(data), begin, end))
