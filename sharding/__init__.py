"""Data, FSDP, tensor and context-parallel strategies (the sharding issue)."""
