"""The benchmark runner: compose a run from Hydra configs, train, evaluate, record (DESIGN.md).

``from runner import load_run`` loads a finished run's model (runner/loading.py), imported on first use so that
``python -m runner --help`` never imports torch.
"""


def __getattr__(name: str):
    if name == "load_run":
        from runner.loading import load_run

        return load_run
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
