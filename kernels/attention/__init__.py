"""Flash attention with MQA/GQA: reference, Triton and Pallas kernels side by side."""
