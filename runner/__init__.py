"""The benchmark runner: compose a run from Hydra configs, train, evaluate, record (DESIGN.md)."""
