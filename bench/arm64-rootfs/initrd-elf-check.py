#!/usr/bin/env python3
"""Lists the ELF machines inside an initramfs (newc cpio, optionally zstd/gzip
compressed, possibly several concatenated archives): every binary must be for
the image's architecture (183 = aarch64), which is how the native-interpreter
trick (native-tools.sh) is shown not to leak host binaries into the image."""
import collections, gzip, subprocess, sys

data = open(sys.argv[1], "rb").read()

def decompress(blob):
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    return blob

def members(buf):
    off = 0
    while off + 110 <= len(buf):
        if buf[off:off + 6] not in (b"070701", b"070702"):
            # padding between concatenated archives, or a compressed tail
            nxt = buf.find(b"0707", off)
            if nxt < 0:
                rest = buf[off:].lstrip(b"\0")
                if rest:
                    yield from members(decompress(rest))
                return
            if buf[off:nxt].strip(b"\0"):
                yield from members(decompress(buf[off:].lstrip(b"\0")))
                return
            off = nxt
            continue
        h = buf[off:off + 110]
        mode = int(h[14:22], 16)
        size = int(h[54:62], 16)
        nlen = int(h[94:102], 16)
        name = buf[off + 110:off + 110 + nlen - 1].decode(errors="replace")
        doff = (off + 110 + nlen + 3) & ~3
        body = buf[doff:doff + size]
        off = (doff + size + 3) & ~3
        if name == "TRAILER!!!":
            continue
        yield name, mode, body

machines = collections.Counter()
bad = []
for name, mode, body in members(decompress(data)):
    if (mode & 0o170000) == 0o100000 and body[:4] == b"\x7fELF":
        m = int.from_bytes(body[18:20], "little")
        machines[m] += 1
        if len(sys.argv) > 2 and m != int(sys.argv[2]):
            bad.append((name, m))
print("ELF files by e_machine:", dict(machines))
for name, m in bad:
    print("WRONG MACHINE", m, name)
sys.exit(1 if bad else 0)
