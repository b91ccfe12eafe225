"""Measurement: the sampler (monitor), the foreground workloads (probe, foreground), the host's
identity and class (host), and the figures, computed by pure functions (metrics, outcome)."""
