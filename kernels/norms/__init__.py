"""RMSNorm and LayerNorm (optionally fused with the residual add): reference, Triton and Pallas."""
