"""Which benchmark entries run first, and each suite's share of the run's deadline.

A GPU run has one device call of a few minutes, so the rows that the issues' GPU goals are
judged on must not wait behind the sweep. ``bench.first`` names them per suite, as filters
over the entry's case fields plus ``framework`` and ``impl``::

    first:
      attention: {kv_heads: [1], causal: [true], impl: [triton, sdpa-flash]}
      model: {mode: [train_step], framework: [torch]}

An entry is first when every key of its suite's filter lists its value. The runner runs
every suite's first entries (in suite order), then the first entries that a suite's share
ran out on (with all the time left: a slow suite's goal rows must not lose to another
suite's sweep), then the rest; in the first and last phases each suite gets the time left in
proportion to its entries, each counted ``bench.weights[suite]`` times (``share_end``). A key no case of the suite has is
refused before anything runs, and so is a value no entry has.
"""
from __future__ import annotations

import dataclasses


def _fields(case, framework: str, impl: str) -> dict:
    return {**{f.name: getattr(case, f.name) for f in dataclasses.fields(case)},
            "framework": framework, "impl": impl}


def check_filters(first: dict, suites: dict) -> None:
    """``first`` {suite name: {field: [values]}} against ``suites`` {name: entries list}."""
    for name, filt in first.items():
        if name not in suites:
            raise ValueError(f"bench.first: unknown suite {name!r}; the suites are {sorted(suites)}")
        entries = suites[name]
        if not entries:
            continue
        fields = [_fields(*e) for e in entries]  # a suite may mix case types (patch / mel)
        known = set().union(*fields)
        for key, values in filt.items():
            if key not in known:
                raise ValueError(f"bench.first.{name}: unknown key {key!r}; its entries have "
                                 f"{sorted(known)}")
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise ValueError(f"bench.first.{name}.{key}: a list of values expected, got {values!r}")
            seen = {f[key] for f in fields if key in f}
            missing = [v for v in values if v not in seen]
            if missing:  # a value no entry has selects nothing: a renamed impl, a dropped length
                raise ValueError(f"bench.first.{name}.{key}: no entry has {missing}; its entries have "
                                 f"{sorted(seen, key=str)}")


def is_first(entry, filt: dict | None) -> bool:
    if not filt:
        return False
    fields = _fields(*entry)  # an entry without one of the filter's keys is not first
    return all(key in fields and fields[key] in list(values) for key, values in filt.items())


def phases(entries: list, filt: dict | None) -> tuple[list[int], list[int]]:
    """Indices of one suite's entries: (first, rest), each in the suite's order."""
    first = [i for i, e in enumerate(entries) if is_first(e, filt)]
    chosen = set(first)
    return first, [i for i in range(len(entries)) if i not in chosen]


def share_end(now: float, deadline: float | None, sizes: list[float], i: int) -> float | None:
    """When suite i (of the suites still to run in this phase, sizes[i:]) must stop starting
    entries: the time left, split in proportion to entry counts (times ``bench.weights``)."""
    if deadline is None:
        return None
    return now + (deadline - now) * sizes[i] / max(1, sum(sizes[i:]))
