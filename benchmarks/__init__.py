"""Benchmarks: kernels and their peers side by side on the present hardware.

Entry point: ``python -m benchmarks.run`` (hydra; ``make bench`` runs the defaults).
"""
