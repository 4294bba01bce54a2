"""Decode attention (one new query token per row against a KV cache): split-KV flash-decoding."""
