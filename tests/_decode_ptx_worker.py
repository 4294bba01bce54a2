"""Helper process for tests/test_decode.py (not collected): the Triton decode split kernel's PTX.

    TRITON_INTERPRET=0 python tests/_decode_ptx_worker.py OUT.json

Compiles ``_decode_split_kernel`` ahead of time for sm_90 (bf16, head_dim 128, a 131072-position
cache; contiguous and paged with 64-position pages) and, as a negative control for the test's
PTX reading, ``_offset32_control`` below, whose row offset is a 32-bit product. Writes
{variant: {"ptx": text, "params": [names of the non-constexpr arguments, in PTX param order]}}.
A fresh process with TRITON_INTERPRET=0, as ``tests/aot.py`` explains.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from kernels._aot import aot_kernel, compile_aot  # noqa: E402
from kernels.decode import triton_decode  # noqa: E402


@triton.jit
def _offset32_control(K, O, stride_ks, n, BLOCK: tl.constexpr):
    """K[pos * stride_ks] with the product in int32 (what the decode kernel must not do)."""
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(K + pos * stride_ks, mask=pos < n, other=0.0)
    tl.store(O + pos, x, mask=pos < n)


def _entry(kernel):
    compiled = compile_aot(kernel, GPUTarget("cuda", 90, 32))
    return dict(ptx=compiled.asm["ptx"],
                params=[n for n, t in kernel.signature.items() if t != "constexpr"])


if __name__ == "__main__":
    out = {}
    for variant, page in (("contiguous", None), ("paged", 64)):
        kernels = triton_decode.aot_kernels(128, torch.bfloat16, max_len=131072, capability=(9, 0),
                                            page_size=page)
        out[variant] = _entry(kernels["_decode_split_kernel"])
    out["control32"] = _entry(aot_kernel(_offset32_control, pointers=dict(K="*bf16", O="*bf16"),
                                         constexprs=dict(BLOCK=128), num_warps=4,
                                         divisible_strides=False))
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
