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


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").split(".")[-1].replace("'>", "")
