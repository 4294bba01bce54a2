"""int4 weight-only quantization: group-wise RTN, packed layout, dequantizing matmul (reference, Triton, Pallas)."""
