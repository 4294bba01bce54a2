"""The reference Gemini-style decoder (PyTorch and JAX). Built in the model issue; the
attention it calls is ``kernels.torch_ops.attention`` / ``kernels.jax_ops.attention``."""
