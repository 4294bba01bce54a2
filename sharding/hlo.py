"""Count the collectives in compiled HLO text (``jit(f).lower(...).compile().as_text()``).

Each collective instruction is counted once under its kind (all-gather, all-reduce,
reduce-scatter, all-to-all, collective-permute; async ``-start`` forms count, ``-done``
does not) with the bytes of its full logical buffer: the gathered result of an all-gather,
the unreduced operand of a reduce-scatter (result x group size), the result of the others
(a tuple-shaped, combined collective sums its elements). Instructions inside a while loop's
body count once per trip (``known_trip_count`` in its backend_config; nested loops
multiply; a loop without one counts once); collectives over singleton replica groups
(e.g. a psum over a mesh axis of size 1) move nothing and are not counted.
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
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(")
_WHILE = re.compile(r"\bwhile\(.*?body=%?([\w.\-]+)")
_TRIPS = re.compile(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_CALLS = re.compile(r"(?:calls|to_apply|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


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


def _split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """name -> instruction lines of each computation, and the ENTRY computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = _COMP.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                entry = current if line.startswith("ENTRY") else entry
                continue
        if current is not None:
            comps[current].append(line)
    return comps, entry


def _multipliers(comps: dict[str, list[str]], entry: str | None) -> dict[str, int]:
    """How many times each computation runs per call of ENTRY (while bodies: x trip count)."""
    if entry is None:
        return {name: 1 for name in comps}
    edges: dict[str, list[tuple[str, int]]] = {}
    for name, lines in comps.items():
        for line in lines:
            w = _WHILE.search(line)
            trips = _TRIPS.search(line)
            if w:
                edges.setdefault(name, []).append((w.group(1), int(trips.group(1)) if trips else 1))
            for callee in _CALLS.findall(line):
                edges.setdefault(name, []).append((callee, 1))
            for group in _BRANCHES.findall(line):
                for callee in re.findall(r"%?([\w.\-]+)", group):
                    edges.setdefault(name, []).append((callee, 1))
    mult: dict[str, int] = {}

    def visit(name, factor):
        mult[name] = mult.get(name, 0) + factor
        for callee, n in edges.get(name, ()):
            if callee in comps:
                visit(callee, factor * n)

    visit(entry, 1)
    return mult


def collectives(hlo_text: str) -> dict[str, dict]:
    """kind -> {"count": executions, "bytes": full-buffer bytes} (kinds absent: not listed)."""
    out: dict[str, dict] = {}
    comps, entry = _split_computations(hlo_text)
    if not comps:  # a bare list of instructions: each once
        comps, entry = {"": hlo_text.splitlines()}, None
    mult = _multipliers(comps, entry)
    for name, lines in comps.items():
        for line in lines:
            _count(line, mult.get(name, 0), out)
    return out


def _count(line: str, times: int, out: dict) -> None:
    """Add one collective instruction line, executed ``times`` times per step, to ``out``."""
    m = _INSTR.search(line)
    if not m or not times:
        return
    kind = m.group("kind")
    group = _group_size(line, None)
    if group == 1:  # singleton replica groups: nothing moves
        return
    shape = m.group("shape")
    if m.group("start"):
        # async start: the result tuple holds (operands..., results..., [u32[] contexts of a
        # collective-permute-start]) -> the results half of the arrays
        shape = re.sub(r"\b[us]32\[\](\{[^}]*\})?", "", shape)
        sizes = _array_bytes(shape)
        sizes = sizes[len(sizes) // 2:] if len(sizes) > 1 else sizes
    else:
        sizes = _array_bytes(shape)
    nbytes = sum(sizes)
    if kind == "reduce-scatter":
        if group is None:
            raise ValueError(f"cannot read the replica group size of: {line.strip()[:200]}")
        nbytes *= group
    row = out.setdefault(kind, {"count": 0, "bytes": 0})
    row["count"] += times
    row["bytes"] += times * nbytes
