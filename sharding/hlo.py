"""Count the collectives in compiled HLO text (``jit(f).lower(...).compile().as_text()``).

Each collective instruction is counted once under its kind (all-gather, all-reduce,
reduce-scatter, all-to-all, collective-permute; async ``-start`` forms count, ``-done``
does not) with the bytes of its full logical buffer: the gathered result of an all-gather,
the unreduced operand of a reduce-scatter (result x group size), the result of the others
(a tuple-shaped, combined collective sums its elements). Instructions inside loop bodies
are counted once per appearance in the text, not per trip.
"""
from __future__ import annotations

import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "c64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2,
          "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1, "c128": 16}
_INSTR = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[[^\]]*\]\s*\{([^}]*)\}")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")


def _array_bytes(text: str) -> list[int]:
    out = []
    for dtype, dims in _ARRAY.findall(text):
        if dtype not in _BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        out.append(n * _BYTES[dtype])
    return out


def _group_size(line: str, mesh_sizes: dict | None) -> int | None:
    m = _GROUPS_LIST.search(line)
    if m:
        return len(m.group(1).split(","))
    m = _GROUPS_IOTA.search(line)
    if m:
        return int(m.group(2))
    m = _GROUPS_MESH.search(line)
    if m:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", line.split("replica_groups=mesh[", 1)[1].split("]")[0]))
        n = 1
        for axis in re.findall(r"'(\w+)'", m.group(1)):
            n *= int(sizes[axis])
        return n
    return None


def collectives(hlo_text: str) -> dict[str, dict]:
    """kind -> {"count": instructions, "bytes": full-buffer bytes} (kinds absent: not listed)."""
    out: dict[str, dict] = {}
    for line in hlo_text.splitlines():
        m = _INSTR.search(line)
        if not m:
            continue
        kind = m.group("kind")
        sizes = _array_bytes(m.group("shape"))
        if m.group("start"):
            # async start: the result tuple holds (operands..., results...) -> the results half
            sizes = sizes[len(sizes) // 2:] if len(sizes) > 1 else sizes
        nbytes = sum(sizes)
        if kind == "reduce-scatter":
            n = _group_size(line, None)
            if n is None:
                raise ValueError(f"cannot read the replica group size of: {line.strip()[:200]}")
            nbytes *= n
        row = out.setdefault(kind, {"count": 0, "bytes": 0})
        row["count"] += 1
        row["bytes"] += nbytes
    return out
