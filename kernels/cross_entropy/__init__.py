"""Linear cross-entropy (the tied head and its loss, fused): reference and Triton."""
