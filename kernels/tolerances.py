"""The one tolerance table, shared by tests and benchmark correctness checks.

Error floors per dtype, relative to max(1, max|reference|). Tests add them to 2x the
error of the framework doing the same math in the same precision (FlashAttention's
rule); benchmarks, which run at sizes where a float64 reference is too costly, compare
a kernel against the fp32 reference with ``BENCH_RTOL`` of max|reference|.
A change here is a decision: give the reason in the commit message.
"""
ATOL_FLOOR = {
    "float32": 2e-5,
    "float16": 2e-3,
    "bfloat16": 1.6e-2,
}
ERROR_RATIO = 2.0

# Benchmarks: max |kernel - fp32 reference| / max(1, max|reference|), per input dtype.
BENCH_RTOL = {
    "float32": 1e-4,
    "float16": 1e-2,
    "bfloat16": 5e-2,
}

# Float64 against float64: a reference run at float64 vs the brute-force oracle of
# tests/attention_oracle.py, max |diff| / max(1, max|oracle|). Both are exact up to float64
# rounding (~1e-16 x head_dim x keys, far below 1e-12); a semantic slip (a wrong scale, a mask
# edge off by one, softcap) moves results by 1e-3 or more, so 1e-10 separates the two.
FLOAT64_RTOL = 1e-10


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").split(".")[-1].replace("'>", "")
