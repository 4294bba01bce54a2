"""Hand-written attention and encoder kernels (Triton for PyTorch, Pallas for JAX).

Import the framework front-ends explicitly: ``kernels.torch_ops`` (PyTorch) or
``kernels.jax_ops`` (JAX). Importing this package pulls neither framework in.
"""
