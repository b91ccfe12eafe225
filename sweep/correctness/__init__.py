"""Correctness: the task sets and their scorers, the prompts and strategies, the ATT&CK catalog,
the input guard's escaping, and the importers of published benchmarks."""
