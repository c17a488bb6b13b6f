#!/usr/bin/env python3
"""Which enabled device-tree nodes have registers QEMU's raspi4b does not map.

A maintenance aid for patch-dtb.sh, not run by any test: when the DTB or QEMU
changes, run

    tests/raspi4b/unmapped-nodes.py bcm2711-rpi-4-b.dtb

It reads the memory map of `qemu-system-aarch64 -M raspi4b` (`info mtree -f`
on the monitor of a stopped machine), walks every enabled node with a `reg`,
translates each register range through the parents' `ranges` to a CPU
address and prints the nodes whose registers are not, or only partly, backed
by a QEMU device. Any CPU access there is a synchronous external abort.
"unimp" marks QEMU's unimplemented-device stubs (reads 0, writes ignored).
--all prints every enabled node, mapped or not.
"""

import re
import struct
import subprocess
import sys


def parse_dtb(path):
    """The flattened device tree as nested dicts {name, props, children, parent}."""
    with open(path, "rb") as f:
        d = f.read()
    (magic, _total, off_struct, off_strings, _rsv, _ver, _lcv, _cpu, size_strings, _size_struct) = struct.unpack(">10I", d[:40])
    if magic != 0xD00DFEED:
        sys.exit(f"{path}: not a flattened device tree (bad magic)")
    strings = d[off_strings : off_strings + size_strings]
    i = off_struct
    root = None
    stack = []
    while True:
        (tok,) = struct.unpack(">I", d[i : i + 4])
        i += 4
        if tok == 1:  # FDT_BEGIN_NODE
            end = d.index(b"\0", i)
            node = {"name": d[i:end].decode(), "props": {}, "children": [], "parent": stack[-1] if stack else None}
            i = (end + 4) & ~3
            if stack:
                stack[-1]["children"].append(node)
            else:
                root = node
            stack.append(node)
        elif tok == 2:  # FDT_END_NODE
            stack.pop()
        elif tok == 3:  # FDT_PROP
            length, nameoff = struct.unpack(">II", d[i : i + 8])
            i += 8
            name = strings[nameoff : strings.index(b"\0", nameoff)].decode()
            stack[-1]["props"][name] = d[i : i + length]
            i = (i + length + 3) & ~3
        elif tok == 4:  # FDT_NOP
            continue
        elif tok == 9:  # FDT_END
            return root


def cells(raw):
    return list(struct.unpack(">%dI" % (len(raw) // 4), raw))


def number(cs):
    v = 0
    for c in cs:
        v = (v << 32) | c
    return v


def address_cells(node):
    return cells(node["props"]["#address-cells"])[0] if "#address-cells" in node["props"] else 2


def size_cells(node):
    return cells(node["props"]["#size-cells"])[0] if "#size-cells" in node["props"] else 1


def node_path(node):
    parts = []
    while node["parent"] is not None:
        parts.append(node["name"])
        node = node["parent"]
    return "/" + "/".join(reversed(parts))


def to_cpu_address(bus, addr):
    """Translate an address on bus's child bus up to the root, or None."""
    while bus["parent"] is not None:
        if "ranges" not in bus["props"]:
            return None
        r = cells(bus["props"]["ranges"])
        if r:
            ca, pa, sc = address_cells(bus), address_cells(bus["parent"]), size_cells(bus)
            step = ca + pa + sc
            for k in range(0, len(r), step):
                child = number(r[k : k + ca])
                parent = number(r[k + ca : k + ca + pa])
                size = number(r[k + ca + pa : k + step])
                if child <= addr < child + size:
                    addr = addr - child + parent
                    break
            else:
                return None
        bus = bus["parent"]
    return addr


def enabled_nodes(node, parent_enabled=True):
    status = node["props"].get("status", b"okay\0").rstrip(b"\0").decode()
    enabled = parent_enabled and status in ("okay", "ok")
    if enabled:
        yield node
    for child in node["children"]:
        yield from enabled_nodes(child, enabled)


def qemu_memory_map():
    """(start, end, priority, name) of every region in the system address space."""
    out = subprocess.run(
        ["qemu-system-aarch64", "-M", "raspi4b", "-S", "-display", "none", "-serial", "null", "-monitor", "stdio"],
        input="info mtree -f\nquit\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    regions = []
    inside = False
    for line in out.splitlines():
        if "Root memory region: system" in line:
            inside = True
            continue
        if inside and not line.strip():
            break
        m = re.match(r"\s*([0-9a-f]+)-([0-9a-f]+) \(prio (-?\d+), \S+\): (\S+)", line)
        if inside and m:
            regions.append((int(m[1], 16), int(m[2], 16), int(m[3]), m[4]))
    if not regions:
        sys.exit("no memory map from qemu-system-aarch64 -M raspi4b (is QEMU >= 9 installed?)")
    return regions


def main():
    args = [a for a in sys.argv[1:] if a != "--all"]
    if len(args) != 1:
        sys.exit("usage: unmapped-nodes.py [--all] DTB")
    show_all = "--all" in sys.argv
    root = parse_dtb(args[0])
    regions = qemu_memory_map()
    for node in enabled_nodes(root):
        bus = node["parent"]
        if bus is None or "reg" not in node["props"] or node["name"].startswith("memory"):
            continue
        ac, sc = address_cells(bus), size_cells(bus)
        if sc == 0:
            continue  # reg is an id on a bus (pci, mdio, i2c), not memory
        reg = cells(node["props"]["reg"])
        compatible = node["props"].get("compatible", b"").split(b"\0")[0].decode()
        for k in range(0, len(reg), ac + sc):
            start = to_cpu_address(bus, number(reg[k : k + ac]))
            size = number(reg[k + ac : k + ac + sc])
            if start is None:
                continue
            end = start + size - 1
            hits = [r for r in regions if r[0] <= end and r[1] >= start]
            covered = sum(min(r[1], end) - max(r[0], start) + 1 for r in hits if r[2] >= 0)
            stubs = [r[3] for r in hits if r[2] < 0]
            if not hits:
                verdict = "UNMAPPED"
            elif covered < size and not stubs:
                verdict = "PARTLY MAPPED (%s)" % ", ".join(r[3] for r in hits)
            elif stubs:
                verdict = "unimp stub (%s)" % ", ".join(stubs)
            else:
                verdict = "mapped (%s)" % ", ".join(r[3] for r in hits)
            if show_all or not verdict.startswith("mapped"):
                print("%-45s %-30s %#x+%#x  %s" % (node_path(node), compatible, start, size, verdict))


if __name__ == "__main__":
    main()
