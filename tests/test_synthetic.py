"""Tests for promptmoe/data/synthetic.py and promptmoe/data/_defects.py (offline, a few seconds)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptmoe.data import synthetic as syn
from promptmoe.data._defects import AREA_RANGE, CHANGE_THRESHOLD

SMALL = dict(size=64, n_train=2, n_test_good=2, n_test_bad=7, progress=False)


def _hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The default dataset: 12 categories x (4 + 8 + 10) images at 128 px."""
    root = tmp_path_factory.mktemp("synthetic")
    return root, syn.make_synthetic(root, seed=0, progress=False)


def test_category_sets_are_disjoint_and_complete():
    assert len(syn.SEEN_CATEGORIES) == 6 and len(syn.UNSEEN_CATEGORIES) == 6
    assert not set(syn.SEEN_CATEGORIES) & set(syn.UNSEEN_CATEGORIES)
    assert syn.CATEGORIES == syn.SEEN_CATEGORIES + syn.UNSEEN_CATEGORIES
    assert len(set(syn.CATEGORIES)) == 12
    assert syn.NAME == "synthetic" and "ground_truth" in syn.LAYOUT
    assert len(syn.DEFECT_TYPES) == 7


def test_counts_layout_and_masks(full):
    root, manifest = full
    assert json.loads((root / "manifest.json").read_text())["digest"] == manifest["digest"]
    assert (root / "README.txt").exists()
    lo, hi = AREA_RANGE
    for cat in syn.CATEGORIES:
        sub = "seen" if cat in syn.SEEN_CATEGORIES else "unseen"
        d = root / sub / cat
        assert not (root / ("unseen" if sub == "seen" else "seen") / cat).exists()
        assert len(list((d / "train/good").glob("*.png"))) == 4
        assert len(list((d / "test/good").glob("*.png"))) == 8
        assert not (d / "ground_truth/good").exists()  # normal images have no mask file
        bad = [p for p in (d / "test").glob("*/*.png") if p.parent.name != "good"]
        assert len(bad) == 10
        for img_path in bad:
            mask_path = d / "ground_truth" / img_path.parent.name / f"{img_path.stem}_mask.png"
            image, mask = _png(img_path), _png(mask_path)
            assert image.shape == (128, 128, 3) and image.dtype == np.uint8
            assert mask.shape == (128, 128) and set(np.unique(mask)) == {0, 255}
            assert lo <= (mask > 0).mean() <= hi, (mask_path, (mask > 0).mean())
        on_disk = {f"test/{p.name}": len(list(p.glob("*.png"))) for p in (d / "test").iterdir()}
        on_disk["train/good"] = 4
        assert manifest["counts"][cat] == on_disk


def test_every_defect_type_is_produced(full):
    root, _ = full
    kinds = {p.name for p in root.glob("*/*/test/*") if p.name != "good"}
    assert kinds == set(syn.DEFECT_TYPES)
    for cat_dir in root.glob("*/*"):  # the label must never be tied to the category
        folders = {p.name for p in (cat_dir / "test").iterdir()}
        assert "good" in folders and len(folders) > 1, cat_dir


def test_same_seed_same_bytes_different_seed_differs(tmp_path, full):
    cats = ["woven", "pill"]
    a = syn.make_synthetic(tmp_path / "a", seed=0, categories=cats, **SMALL)
    b = syn.make_synthetic(tmp_path / "b", seed=0, categories=cats, **SMALL)
    c = syn.make_synthetic(tmp_path / "c", seed=1, categories=cats, **SMALL)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb and a["digest"] == b["digest"]
    assert a["digest"] != c["digest"]
    images = [k for k in ha if k.endswith(".png")]
    assert sum(ha[k] != hc.get(k) for k in images) == len(images)  # every image changes
    # Each image has its own random stream: generating a subset reproduces the full run's files.
    root, _ = full
    sub = tmp_path / "subset"
    syn.make_synthetic(sub, seed=0, categories=["nut"], progress=False)
    assert _hashes(sub / "seen/nut") == _hashes(root / "seen/nut")


def test_normal_images_vary_within_category():
    for cat in syn.CATEGORIES:
        imgs = [syn.make_normal(cat, np.random.default_rng(i), 64).astype(int) for i in range(3)]
        assert all(np.abs(imgs[0] - x).mean() > 1.0 for x in imgs[1:]), cat


@pytest.mark.parametrize("kind", syn.DEFECT_TYPES)
def test_make_defect_changes_exactly_the_mask(kind):
    lo, hi = AREA_RANGE
    for cat in ("brick", "nut", "pill", "tissue"):
        for seed in range(3):
            image = syn.make_normal(cat, np.random.default_rng(seed), 96)
            before = image.copy()
            out, mask = syn.make_defect(image, np.random.default_rng(seed), kind)
            np.testing.assert_array_equal(image, before)  # input untouched
            assert out.shape == image.shape and out.dtype == np.uint8 and mask.dtype == bool
            np.testing.assert_array_equal(out[~mask], image[~mask])  # outside: bit-identical
            diff = np.abs(out.astype(int) - image.astype(int)).max(axis=2)
            assert (diff[mask] > CHANGE_THRESHOLD).all()  # inside: every pixel visibly changed
            assert lo <= mask.mean() <= hi, (cat, seed, mask.mean())
            again, mask2 = syn.make_defect(image, np.random.default_rng(seed), kind)
            np.testing.assert_array_equal(again, out)
            np.testing.assert_array_equal(mask2, mask)


def test_make_defect_respects_where_and_rejects_bad_input():
    image = syn.make_normal("gravel", np.random.default_rng(0), 64)
    where = np.zeros((64, 64), bool)
    where[8:12, 8:12] = True  # defect centres only in the top-left corner
    _, mask = syn.make_defect(image, np.random.default_rng(0), "hole", where=where)
    ys, xs = np.nonzero(mask)
    assert ys.mean() < 24 and xs.mean() < 24
    with pytest.raises(ValueError, match="unknown defect kind"):
        syn.make_defect(image, np.random.default_rng(0), "dent")
    with pytest.raises(ValueError, match="uint8"):
        syn.make_defect(image.astype(float), np.random.default_rng(0), "hole")


def test_rerun_returns_without_rewriting(tmp_path):
    root = tmp_path / "d"
    first = syn.make_synthetic(root, categories=["grass"], **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = syn.make_synthetic(root, categories=["grass"], **SMALL)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_parameter_mismatch_and_interrupted_runs_raise(tmp_path):
    root = tmp_path / "d"
    first = syn.make_synthetic(root, seed=0, categories=["grass"], **SMALL)
    with pytest.raises(ValueError, match=r"manifest\.json.*seed"):
        syn.make_synthetic(root, seed=1, categories=["grass"], **SMALL)
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        syn.make_synthetic(tmp_path / "e", categories=["wood"], **SMALL)
    second = syn.make_synthetic(root, seed=1, categories=["grass"], overwrite=True, **SMALL)
    assert second["seed"] == 1 and second["digest"] != first["digest"]
    (root / "manifest.json").unlink()  # what an interrupted run leaves behind
    with pytest.raises(RuntimeError, match=str(root).replace("\\", "\\\\")):
        syn.make_synthetic(root, seed=1, categories=["grass"], **SMALL)
    third = syn.make_synthetic(root, seed=1, categories=["grass"], overwrite=True, **SMALL)
    assert third["digest"] == second["digest"]
    # overwrite removes only what the generator wrote
    (tmp_path / "d" / "notes.txt").write_text("mine")
    syn.make_synthetic(root, seed=2, categories=["grass"], overwrite=True, **SMALL)
    assert (root / "notes.txt").read_text() == "mine"


def test_find_samples_lists_the_tree(full):
    root, _ = full
    records = syn.find_samples(root)
    assert len(records) == 12 * 18
    assert {r.category for r in records} == set(syn.CATEGORIES)
    assert all(r.dataset == "synthetic" for r in records)
    for r in records:
        assert (r.mask_path is not None) == (r.gt_label == 1), r
        if r.mask_path:
            assert Path(r.mask_path).stem == Path(r.image_path).stem + "_mask"
            assert Path(r.mask_path).parent.name == Path(r.image_path).parent.name
    train = syn.find_samples(root, categories=["nut"], split="train")
    assert len(train) == 4 and all(r.gt_label == 0 for r in train)


def test_loads_as_mvtec_and_as_synthetic(full):
    from promptmoe.data import load_dataset

    root, _ = full
    ds = load_dataset("mvtec", root / "seen", image_size=64, verbose=False)
    assert len(ds) == 6 * 18 and set(ds.categories) == set(syn.SEEN_CATEGORIES)
    bad = next(i for i, r in enumerate(ds.records) if r.gt_label == 1)
    item = ds[bad]
    assert tuple(item["image"].shape) == (3, 64, 64) and item["gt_mask"].sum() > 0
    both = load_dataset("synthetic", root, image_size=32, verbose=False)
    assert len(both) == 12 * 18 and both.has_masks
    unseen = load_dataset("synthetic", root, image_size=32, categories=syn.UNSEEN_CATEGORIES,
                          verbose=False)
    assert set(unseen.categories) == set(syn.UNSEEN_CATEGORIES)
