"""GELU and gated GELU (GeGLU): reference, Triton and Pallas."""
