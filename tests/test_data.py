"""Tests for promptmoe/data: image/mask reading, AnomalyDataset, and every on-disk format on tiny trees."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from promptmoe.data import (
    CLIP_MEAN, CLIP_STD, DATASETS, DISPLAY_NAMES, PAPER_DATASETS, AnomalyDataset, DatasetError,
    SampleRecord, load_dataset, load_image, load_mask, pair_by_stem,
)


def save(path, color=None, size=(16, 16), mode="RGB", array=None):
    """Write a tiny image (constant colour, or ``array``) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (128,) * len(mode) if color is None else color
    img = Image.fromarray(array) if array is not None else Image.new(mode, size, color)
    img.save(path)
    return path


def block_mask(value=255, dtype=np.uint8, size=16):
    m = np.zeros((size, size), dtype)
    m[4:8, 4:8] = value
    return m


def mvtec_tree(root, cat="bottle", normal="good", defects=("broken",), n_normal=2, mask_ext=".png", suffix="_mask"):
    """MVTec-style category whose defect images are 9.png / 10.png (sorted pairing would swap masks)."""
    for i in range(n_normal):
        save(root / cat / "test" / normal / f"{i:03d}.png")
    for d in defects:
        for stem in ("9", "10"):
            save(root / cat / "test" / d / f"{stem}.png")
            save(root / cat / "ground_truth" / d / f"{stem}{suffix}{mask_ext}", array=block_mask())
    save(root / cat / "train" / normal / "000.png")
    return root


# ---------------------------------------------------------------- images and masks
@pytest.mark.parametrize("name,mode,color", [
    ("gray.png", "L", 90), ("rgba.png", "RGBA", (10, 20, 30, 0)), ("pal.png", "P", 3), ("cmyk.tif", "CMYK", (0, 0, 0, 0)),
    ("img.bmp", "RGB", (1, 2, 3)), ("img.TIF", "RGB", (1, 2, 3)), ("UP.PNG", "RGB", (1, 2, 3)), ("up.JPG", "RGB", (1, 2, 3)),
])
def test_load_image_modes_become_rgb(tmp_path, name, mode, color):
    img = load_image(save(tmp_path / name, color, mode=mode))
    assert img.mode == "RGB" and img.size == (16, 16)
    if mode == "L":
        assert np.asarray(img)[0, 0].tolist() == [90, 90, 90]
    if mode == "RGBA":
        assert np.asarray(img)[0, 0].tolist() == [10, 20, 30]  # alpha dropped, colour kept
    if mode == "CMYK":
        assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]


def test_load_image_16bit_rescales_instead_of_clipping(tmp_path):
    arr = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    img = load_image(save(tmp_path / "ct.png", array=arr))
    assert Image.open(tmp_path / "ct.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(img)[..., 0], [[0, 100], [255, 7]])


def test_corrupt_or_truncated_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="broken.png"):
        load_image(bad)
    (tmp_path / "cut.jpg").write_bytes(save(tmp_path / "full.jpg").read_bytes()[:40])
    with pytest.raises(DatasetError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("array", [
    block_mask(255), block_mask(1), block_mask(2), block_mask(3),  # 0/255, VisA class ids
    block_mask(65535, np.uint16), block_mask(20, np.uint16), block_mask(200), np.stack([np.zeros((16, 16), np.uint8), block_mask(7), np.zeros((16, 16), np.uint8)], -1),
])
def test_load_mask_binarises_by_the_documented_rule(tmp_path, array):
    mask = load_mask(save(tmp_path / "m.png", array=array))
    assert mask.dtype == bool and mask.shape == (16, 16)
    np.testing.assert_array_equal(mask, block_mask(1).astype(bool))


def test_load_mask_resize_thresholds_bilinear_at_half(tmp_path):
    arr = np.zeros((16, 16), np.uint8)
    arr[:, :8] = 255
    mask = load_mask(save(tmp_path / "half.png", array=arr), size=8)
    expected = np.zeros((8, 8), bool)
    expected[:, :4] = True
    np.testing.assert_array_equal(mask, expected)


def test_pair_by_stem_never_uses_sorted_index(tmp_path):
    images = [save(tmp_path / "img" / n) for n in ("10.png", "2.png", "b.png", "c.JPG")]
    for n in ("2_mask.png", "10_mask.png", "c.png"):
        save(tmp_path / "gt" / n, array=block_mask())
    got = pair_by_stem(images, tmp_path / "gt")
    assert got == [str(tmp_path / "gt/10_mask.png"), str(tmp_path / "gt/2_mask.png"), None, str(tmp_path / "gt/c.png")]
    assert pair_by_stem(images, tmp_path / "missing") == [None] * 4
    save(tmp_path / "gt" / "2_mask.bmp", array=block_mask())  # two candidates for one image: refuse to guess
    with pytest.raises(DatasetError, match="several masks"):
        pair_by_stem(images, tmp_path / "gt")


# ---------------------------------------------------------------- AnomalyDataset
def rec(path, mask=None, label=0, cat="a"):
    return SampleRecord(str(path), str(mask) if mask else None, label, cat, "toy")


def test_constant_image_normalises_exactly(tmp_path):
    c = (200, 100, 50)
    ds = AnomalyDataset([rec(save(tmp_path / "c.png", c, size=(20, 12)))], image_size=8, original_size=True)
    item = ds[0]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    for ch in range(3):
        expected = torch.full((8, 8), (c[ch] / 255 - CLIP_MEAN[ch]) / CLIP_STD[ch])
        torch.testing.assert_close(item["image"][ch], expected, atol=1e-6, rtol=0)
    assert item["original_size"].tolist() == [12, 20]  # (H, W)
    assert item["gt_mask"].shape == (8, 8) and item["gt_mask"].sum() == 0 and not item["has_mask"]
    assert item["mask_path"] == "" and item["gt_label"].dtype == torch.int64
    assert ds.display_image(0).shape == (8, 8, 3) and ds.display_image(0)[0, 0].tolist() == list(c)


def test_dataset_items_counts_summary_subset(tmp_path):
    m = save(tmp_path / "m.png", array=block_mask(1))
    recs = [rec(save(tmp_path / "n.png")), rec(save(tmp_path / "a.png"), m, 1), rec(tmp_path / "n.png", cat="b"),
            rec(tmp_path / "a.png", None, 1, cat="b")]
    ds = AnomalyDataset(recs, image_size=8, name="toy")
    item = ds[1]
    assert item["has_mask"] and item["gt_label"] == 1 and item["mask_path"] == str(m)
    assert set(item["gt_mask"].unique().tolist()) == {0.0, 1.0} and item["gt_mask"].sum() == 4  # 4x4 block at 16 -> 2x2 at 8
    assert ds.categories == ["a", "b"] and ds.has_masks
    assert ds.counts() == {"a": {"normal": 1, "anomalous": 1, "with_mask": 1}, "b": {"normal": 1, "anomalous": 1, "with_mask": 0}}
    summary = ds.summary()
    assert "total" in summary and summary.splitlines()[-1].split()[1:] == ["2", "2", "1", "4"]
    sub = ds.subset(["b"])
    assert len(sub) == 2 and sub.categories == ["b"] and not sub.has_masks
    with pytest.raises(DatasetError, match=r"\['a', 'b'\]"):
        ds.subset("zzz")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["gt_label"].tolist() == [0, 1, 0, 1]
    assert "images=4" in repr(ds) and "anomalous=2" in repr(ds)


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError):
        AnomalyDataset([], image_size=8)
    img = save(tmp_path / "img.png", size=(16, 16))
    mask = save(tmp_path / "mask.png", array=np.zeros((10, 12), np.uint8))
    ds = AnomalyDataset([rec(img, mask, 1)], image_size=8)
    with pytest.raises(DatasetError) as e:
        ds[0]
    assert all(s in str(e.value) for s in ("img.png", "mask.png", "16x16", "12x10"))
    (tmp_path / "bad1.png").write_bytes(b"x")
    (tmp_path / "bad2.jpg").write_bytes(b"y")
    ds = AnomalyDataset([rec(img), rec(tmp_path / "bad1.png"), rec(tmp_path / "bad2.jpg")], image_size=8)
    with pytest.raises(DatasetError, match="bad1.png") as e:
        ds.check()
    assert "bad2.jpg" in str(e.value) and "2 bad file" in str(e.value)
    with pytest.raises(DatasetError, match="bad1.png"):
        ds[1]
    assert AnomalyDataset([rec(img)], 8).check() == 1


# ---------------------------------------------------------------- formats
def counts_of(ds):
    return {c: (v["normal"], v["anomalous"], v["with_mask"]) for c, v in ds.counts().items()}


@pytest.mark.filterwarnings("ignore:.*anomalous images have no mask")  # asserted in test_bad_inputs_data
def test_mvtec_layout_counts_pairing_and_messages(tmp_path, capsys):
    root = mvtec_tree(tmp_path / "mvtec", "bottle", defects=("broken", "crack"), n_normal=3)
    mvtec_tree(root, "cable", defects=("bent",), n_normal=1)
    save(root / "cable" / "test" / "bent" / "7.png")  # an anomalous image without a mask is kept
    ds = load_dataset("mvtec", root, 8)
    assert counts_of(ds) == {"bottle": (3, 4, 4), "cable": (1, 3, 2)}
    for r in ds.records:
        if r.mask_path:
            assert r.mask_path.endswith(f"ground_truth/{r.image_path.split('/')[-2]}/{r.image_path.split('/')[-1][:-4]}_mask.png")
    out = capsys.readouterr().out
    assert "bottle" in out and "expected 1725 (1258)" in out and "differs" in out
    assert len(load_dataset("mvtec", root, 8, categories=["cable"], verbose=False)) == 4
    assert {r.gt_label for r in load_dataset("mvtec", root, 8, split="train", verbose=False).records} == {0}
    with pytest.raises(DatasetError, match=r"Available: \['bottle', 'cable'\]"):
        load_dataset("mvtec", root, 8, categories=["nope"])
    assert len(load_dataset("mvtec", root / "bottle", 8, verbose=False)) == 7  # root = one category
    assert len(load_dataset("mvtec", tmp_path, 8, verbose=False)) == 11  # one wrapper folder above


@pytest.mark.parametrize("name,cat,normal,defect,ext,suffix", [
    ("mpdd", "tubes", "good", "anomalous", ".png", "_mask"), ("dtd", "Woven_001", "good", "bad", ".png", "_mask"),
    ("btad", "03", "ok", "ko", ".bmp", ""), ("sdd", "electrical commutators", "good", "defect", ".png", ""),
    ("headct", "brain", "good", "hemorrhage", ".png", "_mask"),
])
def test_mvtec_style_formats(tmp_path, name, cat, normal, defect, ext, suffix):
    root = mvtec_tree(tmp_path, cat, normal, (defect,), 3, ext, suffix)
    ds = load_dataset(name, root, 8, verbose=False)
    first_anomalous = [r.gt_label for r in ds.records].index(1)
    assert counts_of(ds) == {cat: (3, 2, 2)} and ds[first_anomalous]["gt_mask"].sum() == 4


def visa_tree(root):
    rows = ["object,split,label,image,mask"]
    for split, n in (("train", 2), ("test", 3)):
        for i in range(n):
            p = f"candle/Data/Images/Normal/{split}{i:02d}.JPG"
            save(root / p)
            rows.append(f"candle,{split},normal,{p},")
    for i, cid in enumerate((1, 2)):  # VisA masks hold class ids: they look black
        p, m = f"candle/Data/Images/Anomaly/{i:03d}.JPG", f"candle/Data/Masks/Anomaly/{i:03d}.png"
        save(root / p)
        save(root / m, array=block_mask(cid))
        rows.append(f"candle,test,anomaly,{p},{m}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_csv_and_raw_fallback(tmp_path):
    root = visa_tree(tmp_path / "visa")
    ds = load_dataset("visa", root, 8, verbose=False)
    assert counts_of(ds) == {"candle": (3, 2, 2)}
    assert ds[3]["gt_mask"].sum() == 4 and ds[4]["gt_mask"].sum() == 4
    assert counts_of(load_dataset("visa", root, 8, split="train", verbose=False)) == {"candle": (2, 0, 0)}
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.warns(UserWarning, match="1cls.csv"):
        assert counts_of(load_dataset("visa", root, 8, verbose=False)) == {"candle": (5, 2, 2)}


def test_dagm_label_file_means_anomalous(tmp_path):
    for cls in ("Class1", "Class10"):
        for i in range(1, 5):
            save(tmp_path / cls / "Test" / f"{i:04d}.PNG", i * 10, mode="L")
        save(tmp_path / cls / "Test" / "Label" / "0002_label.PNG", array=block_mask())
        (tmp_path / cls / "Test" / "Label" / "Labels.txt").write_text("1\n")
        save(tmp_path / cls / "Train" / "0001.PNG", mode="L")
    ds = load_dataset("dagm", tmp_path, 8, verbose=False)
    assert counts_of(ds) == {"Class1": (3, 1, 1), "Class10": (3, 1, 1)}
    assert [r.gt_label for r in ds.records[:4]] == [0, 1, 0, 0]


def test_headct_labels_csv(tmp_path):
    for i in range(4):
        save(tmp_path / "head_ct" / "head_ct" / f"{i:03d}.png", mode="L")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n3,0\n")
    ds = load_dataset("headct", tmp_path, 8, verbose=False)
    assert counts_of(ds) == {"brain": (2, 2, 0)} and ds.records[0].image_path.endswith("000.png")


@pytest.mark.parametrize("name", ["brainmri", "br35h"])
def test_yes_no_formats(tmp_path, name):
    for d, n in (("yes", 3), ("no", 2), ("pred", 4)):
        for i in range(n):
            save(tmp_path / d / f"{d}{i}.jpg")
            save(tmp_path / "brain_tumor_dataset" / d / f"{d}{i}.jpg")  # Kaggle's duplicate copy
    assert counts_of(load_dataset(name, tmp_path, 8, verbose=False)) == {"brain": (2, 3, 0)}


@pytest.mark.filterwarnings("ignore:.*anomalous images have no mask")  # asserted in test_bad_inputs_data
def test_isic_all_anomalous_with_segmentation_masks(tmp_path):
    for i in (3, 12, 7):
        save(tmp_path / "ISBI2016_ISIC_Part1_Test_Data" / f"ISIC_{i:07d}.jpg")
        save(tmp_path / "ISBI2016_ISIC_Part1_Training_Data" / f"ISIC_{i + 100:07d}.jpg")
        save(tmp_path / "ISBI2016_ISIC_Part1_Training_GroundTruth" / f"ISIC_{i + 100:07d}_Segmentation.png", array=block_mask())
        if i != 7:
            save(tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth" / f"ISIC_{i:07d}_Segmentation.png", array=block_mask())
    ds = load_dataset("isic", tmp_path, 8, verbose=False)
    assert counts_of(ds) == {"skin": (0, 3, 2)}
    assert all(r.mask_path is None or r.mask_path.endswith(r.image_path.split("/")[-1][:-4] + "_Segmentation.png") for r in ds.records)
    assert counts_of(load_dataset("isic", tmp_path, 8, split="train", verbose=False)) == {"skin": (0, 3, 3)}


@pytest.mark.parametrize("name,layout", [
    ("kvasir", ("Kvasir-SEG/images", "Kvasir-SEG/masks", ".jpg", ".jpg")),
    ("clinicdb", ("Original", "Ground Truth", ".tif", ".tif")),
    ("colondb", ("images", "masks", ".png", ".png")), ("endo", ("images", "masks", ".jpg", ".png")),
])
def test_polyp_formats(tmp_path, name, layout):
    img_dir, mask_dir, iext, mext = layout
    for stem in ("10", "9", "100"):
        save(tmp_path / img_dir / f"{stem}{iext}")
        save(tmp_path / mask_dir / f"{stem}{mext}", array=block_mask())
    ds = load_dataset(name, tmp_path, 8, verbose=False)
    assert counts_of(ds) == {"colon": (0, 3, 3)} and ds.records[0].dataset == name
    assert all(r.mask_path.split("/")[-1].split(".")[0] == r.image_path.split("/")[-1].split(".")[0] for r in ds.records)
    # JPEG masks ring around edges: the peers' "> 0" rule keeps that noise (exact for lossless masks)
    assert ds[0]["gt_mask"].sum() == 4 if mext != ".jpg" else ds[0]["gt_mask"].sum() >= 4


def test_meta_json_relative_absolute_and_test_key(tmp_path):
    rel_img = save(tmp_path / "bottle" / "test" / "good" / "000.png")
    abs_img = save(tmp_path / "elsewhere" / "x.png")
    abs_mask = save(tmp_path / "elsewhere" / "x_mask.png", array=block_mask())
    entries = [
        {"img_path": "bottle/test/good/000.png", "mask_path": "", "cls_name": "bottle", "specie_name": "good", "anomaly": 0},
        {"img_path": str(abs_img), "mask_path": str(abs_mask), "cls_name": "bottle", "specie_name": "broken", "anomaly": 1},
    ]
    (tmp_path / "meta.json").write_text(json.dumps({"Test": {"bottle": entries}, "train": {}}))
    ds = load_dataset("meta_json", tmp_path, 8, verbose=False)
    assert counts_of(ds) == {"bottle": (1, 1, 1)} and ds.records[0].image_path == str(rel_img)
    with pytest.raises(DatasetError, match="valid"):
        (tmp_path / "meta.json").write_text("{")
        load_dataset("meta_json", tmp_path, 8)
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"bottle": [dict(entries[0], img_path="no/such.png")]}}))
    with pytest.raises(DatasetError, match="such.png"):
        load_dataset("meta_json", tmp_path, 8)
    with pytest.raises(DatasetError, match=r"\['test'\]"):
        load_dataset("meta_json", tmp_path, 8, split="train")


@pytest.mark.filterwarnings("ignore:.*anomalous images have no mask")  # asserted in test_bad_inputs_data
def test_folder_labels_from_subfolders_and_unknown_flat(tmp_path):
    root = tmp_path / "parts"
    save(root / "loose.png")
    save(root / "good" / "g.png")
    save(root / "scratch" / "s2.png")
    save(root / "scratch" / "s1.png")
    save(root / "masks" / "s1_mask.png", array=block_mask())
    ds = load_dataset("folder", root, 8, verbose=False)
    assert ds.counts() == {"parts": {"normal": 1, "anomalous": 2, "with_mask": 1, "unknown": 1}}
    labels = {r.image_path.split("/")[-1]: (r.gt_label, r.mask_path) for r in ds.records}
    assert labels["loose.png"] == (-1, None) and labels["s1.png"][1].endswith("s1_mask.png") and labels["s2.png"][1] is None
    assert ds[0]["gt_label"] == -1 and "unknown" in ds.summary()


# ---------------------------------------------------------------- registry and load_dataset errors
def test_registry_complete():
    expected = set(PAPER_DATASETS) | {"meta_json", "folder", "synthetic"}
    assert set(DATASETS) == expected and len(PAPER_DATASETS) == 15 and set(DISPLAY_NAMES) == set(PAPER_DATASETS)
    for key, fmt in DATASETS.items():
        if key == "synthetic":
            pytest.importorskip("promptmoe.data.synthetic")  # imported lazily, on first use
        assert fmt.NAME == key and isinstance(fmt.CATEGORIES, tuple) and "\n" in fmt.LAYOUT and callable(fmt.find_samples)
        if key in PAPER_DATASETS:
            assert fmt.CATEGORIES and fmt.EXPECTED_COUNTS["total"] >= fmt.EXPECTED_COUNTS["anomalous"] > 0
    assert len(DATASETS["mvtec"].CATEGORIES) == 15 and len(DATASETS["visa"].CATEGORIES) == 12


def test_load_dataset_root_errors_show_layout(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mvtec", tmp_path / "nowhere", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty") as e:
        load_dataset("visa", tmp_path / "empty", 8)
    assert "split_csv/1cls.csv" in str(e.value)
    save(tmp_path / "stray" / "readme.png")
    with pytest.raises(DatasetError, match="no test images") as e:
        load_dataset("mvtec", tmp_path / "stray", 8)
    assert "ground_truth/broken_large" in str(e.value)
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("mvtec", tmp_path / "stray" / "readme.png", 8)
    with pytest.raises(DatasetError, match="Known"):
        load_dataset("imagenet", tmp_path, 8)
