"""The built-in Shapes set: deterministic files, the ImageNet layout, classes that differ, atomic caching."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

import vizattn.data
from vizattn.data import CLASSES, render, resolve_data_dir, shapes_dir, write_shapes


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_layout_and_byte_identical_rewrites(tmp_path):
    a = write_shapes(tmp_path / "a", size=32, train_per_class=2, val_per_class=1, seed=5)
    b = write_shapes(tmp_path / "b", size=32, train_per_class=2, val_per_class=1, seed=5)
    da, db = _digests(a), _digests(b)
    assert da == db and len(da) == 3 * len(CLASSES)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(CLASSES)
    assert sorted(p.name for p in (a / "val").iterdir()) == sorted(CLASSES)
    with Image.open(a / "val" / "ring" / "ring_00000.png") as img:
        assert (img.mode, img.size) == ("RGB", (32, 32))
    c = write_shapes(tmp_path / "c", size=32, train_per_class=2, val_per_class=1, seed=6)
    assert len(set(_digests(c).values()) & set(da.values())) == 0  # another seed draws other images


def test_classes_differ_and_images_vary():
    # Two draws of one class differ (colour, place, size), and the mean image does not give the class away.
    images = np.stack([[render(c, np.random.default_rng([0, c, i]), 32) for i in range(16)]
                       for c in range(len(CLASSES))]).astype(np.float32)
    assert images.shape == (len(CLASSES), 16, 32, 32, 3)
    assert all(np.abs(images[c, 0] - images[c, 1]).mean() > 10 for c in range(len(CLASSES)))
    class_means = images.mean(axis=(1, 2, 3, 4))
    assert class_means.std() < 20


def test_cache_and_builtin_name(tmp_path, monkeypatch):
    root = shapes_dir(tmp_path, size=16, train_per_class=1, val_per_class=1)
    stamp = (root / "val" / "dots" / "dots_00000.png").stat().st_mtime_ns
    assert shapes_dir(tmp_path, size=16, train_per_class=1, val_per_class=1) == root  # found, not rewritten
    assert (root / "val" / "dots" / "dots_00000.png").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind

    monkeypatch.setenv("VIZATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(vizattn.data.BUILTIN, "shapes", lambda: shapes_dir(size=16, train_per_class=1, val_per_class=1))
    assert resolve_data_dir("builtin:shapes").parent == tmp_path / "cache" / "data"
    assert resolve_data_dir("some/folder").as_posix() == "some/folder"
    with pytest.raises(ValueError, match="Unknown built-in dataset 'builtin:cifar'; built-in sets: builtin:shapes"):
        resolve_data_dir("builtin:cifar")


def test_synthetic_imagenet_folder(tmp_path):
    from vizattn.data.synthetic import write_synthetic_imagenet

    root = write_synthetic_imagenet(tmp_path / "a", classes=2, train_per_class=2, val_per_class=1, processes=1)
    again = write_synthetic_imagenet(tmp_path / "b", classes=2, train_per_class=2, val_per_class=1, processes=1)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.JPEG"))
    assert files == ["train/n00000000/0000_00000.JPEG", "train/n00000000/0000_00001.JPEG",
                     "train/n00000001/0001_00000.JPEG", "train/n00000001/0001_00001.JPEG",
                     "val/n00000000/0000_00000.JPEG", "val/n00000001/0001_00000.JPEG"]
    for name in files:
        assert (root / name).read_bytes() == (again / name).read_bytes()
        with Image.open(root / name) as img:
            assert img.mode == "RGB" and 300 <= img.height < 450 and 400 <= img.width < 550
