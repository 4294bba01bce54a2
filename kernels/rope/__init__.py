"""Rotary position embeddings (1-D and 2-D, rotate-half): reference, Triton and Pallas."""
