"""TPU chip generations from JAX device kinds: the one alias table every per-chip table uses.

``jax.devices()[0].device_kind`` names one chip differently across runtimes and JAX versions:
v5e is "TPU v5 lite" or "TPU v5e", v5p is "TPU v5p" or plain "TPU v5" (the name JAX's own
``tuned_block_sizes`` tables key v5p by), v6e is "TPU v6 lite" or "TPU v6e". Per-chip tables
(``kernels/attention/pallas_tpu.py`` TPU_BLOCKS, ``kernels/decode/pallas_tpu_decode.py``
TPU_DECODE_BLOCKS) are keyed by generation ("v4", "v5e", "v5p", "v6e") and looked up through
``chip_entry``, so every alias of a chip gets the same tiles.

The aliases are those of jax 0.10.2's ``chip_version_from_device_kind``
(``jax._src.pallas.mosaic.tpu_info``: private, not exported by ``jax.experimental.pallas.tpu``,
so copied here; tests/test_attention_pallas_tpu.py checks the two agree on every kind).

Unknown kinds: a device kind that starts with "TPU" but is not in ``CHIP_ALIASES``, or a known
generation with no entry in the table, gets the table's default AND a ``RuntimeWarning`` naming
the kind, once per (table, kind) -- a new chip is reported, never silently given small tiles.
Non-TPU kinds ("cpu", GPU names: TPU interpret mode) get the default without a warning.
"""
from __future__ import annotations

import warnings
from typing import TypeVar

T = TypeVar("T")

# device_kind (as jax reports it) -> generation
CHIP_ALIASES = {
    "TPU v2": "v2",
    "TPU v3": "v3",
    "TPU v4": "v4",
    "TPU v4 lite": "v4i",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
    "TPU7": "7",
    "TPU7x": "7x",
    "TPU8i": "8i",
}

_WARNED: set[tuple[str, str]] = set()


def chip_generation(device_kind: str) -> str | None:
    """The generation ("v5p", ...) of a JAX device kind; None for unknown and non-TPU kinds."""
    return CHIP_ALIASES.get(device_kind.strip())


def is_tpu_kind(device_kind: str) -> bool:
    """Whether the kind names a TPU (known or not): JAX's TPU kinds all start with "TPU"."""
    return device_kind.strip().upper().startswith("TPU")


def current_device_kind() -> str:
    import jax

    return jax.devices()[0].device_kind


def chip_entry(table: dict[str, T], device_kind: str | None, default: T, what: str) -> T:
    """``table[generation]`` for ``device_kind`` (None: the first JAX device's), else ``default``.

    A TPU kind without an entry warns once per (``what``, kind) (see the module docstring).
    """
    kind = current_device_kind() if device_kind is None else device_kind
    gen = chip_generation(kind)
    if gen is not None and gen in table:
        return table[gen]
    if is_tpu_kind(kind) and (what, kind) not in _WARNED:
        _WARNED.add((what, kind))
        why = (f"unknown TPU device kind {kind!r} (known: {sorted(CHIP_ALIASES)})" if gen is None
               else f"no {what} entry for TPU generation {gen!r} (device kind {kind!r}; "
                    f"entries: {sorted(table)})")
        warnings.warn(f"{why}: using the default {what} {default!r}; add the chip to the table "
                      "(kernels/_tpu_chips.py for a new alias)", RuntimeWarning, stacklevel=3)
    return default
