"""Bad-input matrix, data side (issue 9): a reader's own data gives the right numbers or a clear error.

Fixtures are as unkind as real data: JPEG masks (ringing), EXIF-rotated JPEGs, grayscale, RGBA,
palette, 16-bit PNGs, odd sizes (333x517), masks beside images, nested class folders. Every case
asserts the exact outcome: the error text names the file or value, or the right numbers (and the
warning). The CLI side of the matrix is tests/test_bad_inputs_cli.py.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from promptmoe.config import PromptMoEConfig
from promptmoe.data import (
    DataSpec, DatasetError, load_dataset, load_image, load_mask, parse_data_spec, validate_data_specs,
)
from promptmoe.evaluate import Predictions, check_finite, evaluate, summarise
from promptmoe import metrics as M
from promptmoe.predict import collect_inputs, score_images


def save(path, array=None, mode="RGB", size=(16, 16), color=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if array is not None else Image.new(mode, size, color if color is not None else 0)
    img.save(path, **kw)
    return path


def block(h=16, w=16, value=255, dtype=np.uint8, box=(4, 8, 4, 8)):
    m = np.zeros((h, w), dtype)
    m[box[0]:box[1], box[2]:box[3]] = value
    return m


def names(records):
    return {r.image_path.split("/")[-1]: (r.gt_label, r.mask_path.split("/")[-1] if r.mask_path else None)
            for r in records}


# ---------------------------------------------------------------- data specs
@pytest.fixture()
def root(tmp_path):
    (tmp_path / "data").mkdir()
    save(tmp_path / "data" / "a.png")
    return tmp_path / "data"


@pytest.mark.parametrize("spec,expected", [
    ("mvtec={root}", ("mvtec", "mvtec", "")),
    ("mine=folder:{root}", ("mine", "folder", "")),
    ("mtd=meta_json:{root}", ("mtd", "meta_json", "")),
    ("folder={root}/odd:name", ("folder", "folder", "/odd:name")),  # ':' in a root is kept
])
def test_parse_data_spec_forms(root, spec, expected):
    (root / "odd:name").mkdir()
    got = parse_data_spec(spec.format(root=root))
    assert got == DataSpec(expected[0], expected[1], type(root)(f"{root}{expected[2]}"))


@pytest.mark.parametrize("spec,message", [
    ("mine={root}", r"'mine' is not a dataset format.*mine=FORMAT:ROOT"),
    ("mine=nosuch:{root}", r"'mine' is not a dataset format"),
    ("no-equals-sign", r"'no-equals-sign' must be NAME=ROOT or LABEL=FORMAT:ROOT"),
    ("mvtec={root}/missing", r"root .*missing does not exist"),
    ("a/b=folder:{root}", r"label 'a/b' must be letters"),
    ("mine=folder:", r"has no root folder"),
])
def test_parse_data_spec_errors_name_the_spec(root, spec, message):
    spec = spec.format(root=root)
    with pytest.raises(DatasetError, match=message) as e:
        parse_data_spec(spec)
    assert repr(spec) in str(e.value)


def test_same_format_twice_keeps_both_duplicate_label_refused(root):
    both = validate_data_specs([f"a=folder:{root}", f"b=folder:{root}"])
    assert [(s.label, s.format) for s in both] == [("a", "folder"), ("b", "folder")]
    with pytest.raises(DatasetError, match=r"'a=folder:.*' and 'a=mvtec:.*' both use the label 'a'"):
        validate_data_specs([f"a=folder:{root}", f"a=mvtec:{root}"])


def test_load_dataset_defaults_to_paper_size_and_refuses_folder_options(root):
    assert load_dataset("folder", root, verbose=False).image_size == PromptMoEConfig.paper().image_size == 518
    with pytest.raises(DatasetError, match="mvtec: mask_dir only apply to the folder format"):
        load_dataset("mvtec", root, 8, mask_dir=root)
    with pytest.raises(DatasetError, match="mask_threshold must be in"):
        load_dataset("folder", root, 8, mask_threshold=-1)


# ---------------------------------------------------------------- folder layouts
def _layout(root, kind):
    save(root / "good" / "g.png")
    if kind == "beside":
        save(root / "bad" / "b.png"), save(root / "bad" / "b_mask.png", block())
        return {"g.png": (0, None), "b.png": (1, "b_mask.png")}, {}
    if kind == "mask_dir":
        save(root / "bad" / "b.png"), save(root.parent / "elsewhere" / "b.png", block())
        return {"g.png": (0, None), "b.png": (1, "b.png")}, {"mask_dir": root.parent / "elsewhere"}
    if kind == "masks_subfolder":
        save(root / "crack" / "b.png"), save(root / "masks" / "crack" / "b_mask.png", block())
        return {"g.png": (0, None), "b.png": (1, "b_mask.png")}, {}
    if kind == "nested":
        save(root / "good" / "batch1" / "g2.png"), save(root / "bad" / "crack" / "c.png")
        save(root / "bad" / "crack" / "c_mask.png", block())
        return {"g.png": (0, None), "g2.png": (0, None), "c.png": (1, "c_mask.png")}, {}
    if kind == "suffix":
        save(root / "bad" / "b.png"), save(root / "bad" / "b_gt.png", block())
        return {"g.png": (0, None), "b.png": (1, "b_gt.png")}, {"mask_suffix": "_gt"}
    if kind == "test_split":  # an MVTec-like single category: test/ is stepped into
        for p in list(root.rglob("*.png")):
            p.unlink()
        save(root / "test" / "good" / "g.png"), save(root / "test" / "hole" / "h.png")
        save(root / "ground_truth" / "hole" / "h_mask.png", block())
        return {"g.png": (0, None), "h.png": (1, "h_mask.png")}, {}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["beside", "mask_dir", "masks_subfolder", "nested", "suffix", "test_split"])
def test_folder_layouts_pair_masks(tmp_path, kind):
    expected, opts = _layout(tmp_path / "parts", kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every anomalous image has its mask: no warning
        ds = load_dataset("folder", tmp_path / "parts", 16, verbose=False, **opts)
    assert names(ds.records) == expected and ds.categories == ["parts"]
    assert ds[[r.gt_label for r in ds.records].index(1)]["gt_mask"].sum() == 16  # the 4x4 block


def test_folder_several_categories_each_with_good(tmp_path):
    for cat in ("bottle", "cable"):
        save(tmp_path / "r" / cat / "good" / "g.png")
        save(tmp_path / "r" / cat / "crack" / "c.png"), save(tmp_path / "r" / cat / "crack" / "c_mask.png", block())
    ds = load_dataset("folder", tmp_path / "r", 16, verbose=False)
    assert ds.counts() == {c: {"normal": 1, "anomalous": 1, "with_mask": 1} for c in ("bottle", "cable")}


def test_magnetic_tile_layout_masks_share_the_stem(tmp_path):
    root = tmp_path / "MT_Blowhole" / "Imgs"
    save(tmp_path / "good" / "f.jpg")  # the real MT_Free/ is named with normal_dirs: tests/test_folder_names.py
    for stem, (w, h) in (("exp1_num_1", (217, 191)), ("exp1_num_2", (333, 517))):
        save(root / f"{stem}.jpg", size=(w, h)), save(root / f"{stem}.png", block(h, w))
    with pytest.raises(DatasetError, match=r"exp1_num_1.jpg and .*exp1_num_1.png share a stem; .*--mask-suffix .png"):
        load_dataset("folder", tmp_path, 16, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("folder", tmp_path, 16, verbose=False, mask_suffix=".png")
    assert names(ds.records) == {"f.jpg": (0, None), "exp1_num_1.jpg": (1, "exp1_num_1.png"),
                                 "exp1_num_2.jpg": (1, "exp1_num_2.png")}
    assert ds.check() == 3  # every mask matches its image's odd size


# ---------------------------------------------------------------- anomalous images without masks
@pytest.mark.parametrize("case", ["folder_missing", "mvtec_no_ground_truth", "mvtec_other_stem"])
def test_missing_mask_is_named_in_a_warning(tmp_path, case):
    if case == "folder_missing":
        save(tmp_path / "r" / "good" / "g.png"), save(tmp_path / "r" / "bad" / "lonely.png")
        fmt, where = "folder", "looked beside each image as <stem>_mask.*"
    else:
        cat = tmp_path / "r" / "bottle"
        save(cat / "test" / "good" / "000.png"), save(cat / "test" / "broken" / "lonely.png")
        if case == "mvtec_other_stem":
            save(cat / "ground_truth" / "broken" / "other_mask.png", block())
        fmt, where = "mvtec", "ground_truth/broken_large/000_mask.png"
    with pytest.warns(UserWarning, match=r"1 of 1 anomalous images have no mask \(.*lonely.png\)") as rec:
        ds = load_dataset(fmt, tmp_path / "r", 16, verbose=False, label="mine")
    assert str(rec[0].message).startswith("mine: ") and where in str(rec[0].message)
    assert ds.missing_masks() == [str(next((tmp_path / "r").rglob("lonely.png")))]


# ---------------------------------------------------------------- meta.json
def _meta(tmp_path, content):
    save(tmp_path / "img" / "a.png")
    (tmp_path / "meta.json").write_text(json.dumps(content))
    return tmp_path / "meta.json"


def test_meta_json_accepts_the_file_itself(tmp_path):
    entry = {"img_path": "img/a.png", "mask_path": "", "cls_name": "x", "specie_name": "good", "anomaly": 0}
    path = _meta(tmp_path, {"test": {"x": [entry]}})
    with pytest.warns(UserWarning, match=r"meta_json: 0 anomalous images \(1 labelled\)"):
        ds = load_dataset("meta_json", path, 8, verbose=False)
    assert [r.image_path for r in ds.records] == [str(tmp_path / "img/a.png")]


@pytest.mark.parametrize("content,message", [
    ([1, 2], r"top level must be an object .* got a JSON list"),
    ({"test": [1]}, r"'test' must map class names to lists of entries, got a JSON list"),
    ({"test": {"x": {"img_path": "img/a.png"}}}, r"class 'x' must hold a list of entries, got a JSON dict"),
    ({"test": {"x": ["img/a.png"]}}, r"entry 0 of 'x' needs img_path and anomaly"),
    ({"test": {"x": [{"img_path": "img/a.png", "anomaly": 2}]}}, r"entry 0 of 'x' needs img_path and anomaly \(0/1\)"),
])
def test_meta_json_wrong_shape_names_the_file(tmp_path, content, message):
    path = _meta(tmp_path, content)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset("meta_json", tmp_path, 8, verbose=False)
    assert str(path) in str(e.value)


def test_meta_json_missing_file_says_where(tmp_path):
    save(tmp_path / "x.png")
    with pytest.raises(DatasetError, match=f"no meta.json in {tmp_path}"):
        load_dataset("meta_json", tmp_path, 8, verbose=False)


# ---------------------------------------------------------------- mask values
def _disc(h=64, w=64):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - 30) ** 2 + (xx - 34) ** 2 <= 14 ** 2)


def test_jpeg_mask_ringing_does_not_grow_the_foreground(tmp_path):
    drawn = _disc()
    rgb = np.stack([drawn * 255, drawn * 128, drawn * 85], -1).astype(np.uint8)  # a Kvasir-like RGB mask
    path = save(tmp_path / "m.jpg", rgb, quality=75)
    auto, peers = load_mask(path), load_mask(path, threshold=0)
    assert (auto == drawn).mean() >= 0.995  # the rule: > 127 for 8-bit masks
    assert peers.sum() >= 1.3 * drawn.sum()  # > 0 keeps the ringing


@pytest.mark.parametrize("array,threshold,expected", [
    (block(value=255), None, block(value=1).astype(bool)),
    (block(value=100), None, np.zeros((16, 16), bool)),  # faint (anti-aliased) values: background
    (block(value=100), 50, block(value=1).astype(bool)),  # a reader's mask_threshold override
    (block(value=65535, dtype=np.uint16), None, block(value=1).astype(bool)),  # 16-bit: > 32767
    (block(value=3) + block(value=1, box=(10, 12, 10, 12)), None,
     block(value=1).astype(bool) | block(value=1, box=(10, 12, 10, 12)).astype(bool)),  # class ids 1, 3
])
def test_mask_rule_table(tmp_path, array, threshold, expected):
    np.testing.assert_array_equal(load_mask(save(tmp_path / "m.png", array), threshold=threshold), expected)


def test_palette_mask_uses_colours_so_dark_classes_count(tmp_path):
    img = Image.fromarray(block(value=1)).convert("P")
    img.putpalette([0, 0, 0, 64, 0, 0] + [0] * 762)  # VOC-style dark red class
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), block(value=1).astype(bool))


def test_dataset_passes_mask_threshold_through(tmp_path):
    save(tmp_path / "r" / "good" / "g.png"), save(tmp_path / "r" / "bad" / "b.png")
    save(tmp_path / "r" / "bad" / "b_mask.png", block(value=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under threshold 50 the mask is not empty: no hint
        ds = load_dataset("folder", tmp_path / "r", 16, verbose=False, mask_threshold=50)
    assert [r.gt_label for r in ds.records] == [1, 0] and ds[0]["gt_mask"].sum() == 16
    assert ds.subset("r")[0]["gt_mask"].sum() == 16  # a category subset keeps the threshold
    with pytest.warns(UserWarning, match=r"all 1 masks in bad/ are empty"):  # the > 127 rule: empty
        assert load_dataset("folder", tmp_path / "r", 16, verbose=False)[0]["gt_mask"].sum() == 0


# ---------------------------------------------------------------- images
@pytest.mark.parametrize("mode,value,expected", [
    ("L", 90, [90, 90, 90]), ("LA", (90, 0), [90, 90, 90]), ("RGBA", (10, 20, 30, 0), [10, 20, 30]),
    ("P", 0, [0, 0, 0]), ("1", 1, [255, 255, 255]), ("I;16", 257 * 40, [40, 40, 40]),
])
def test_odd_size_modes_load_as_rgb(tmp_path, mode, value, expected):
    path = save(tmp_path / "odd.png", mode=mode, size=(333, 517), color=value)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (333, 517) and np.asarray(img)[516, 332].tolist() == expected


def test_sixteen_bit_scaled_by_bit_depth_not_max(tmp_path):
    dark = np.array([[0, 200], [100, 257]], np.uint16)  # a dark 16-bit image: every value <= 257
    img = load_image(save(tmp_path / "dark.png", dark))
    np.testing.assert_array_equal(np.asarray(img)[..., 0], [[0, 1], [0, 1]])  # /257, not read as 8-bit


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # W 40 x H 20: left half red, right half blue
    stored[:, :20, 0], stored[:, 20:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path / "phone.jpg", stored, exif=exif, quality=95)
    img = np.asarray(load_image(path))
    assert img.shape == (40, 20, 3)  # upright: H 40 x W 20
    assert img[5, 10, 0] > 200 > img[5, 10, 2] and img[35, 10, 2] > 200 > img[35, 10, 0]  # red on top


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    big = save(tmp_path / "bomb.png", mode="1", size=(10_000, 10_000))  # 100 Mpx > PIL's 89.5 Mpx
    with pytest.raises(DatasetError, match=r"bomb.png is 10000x10000 = 100,000,000 pixels, above the limit of 89,478,485"):
        load_image(big)
    small = save(tmp_path / "small.png", mode="L", size=(40, 40))
    monkeypatch.setenv("PROMPTMOE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DatasetError, match="small.png is 40x40 = 1,600 pixels, above the limit of 1,000"):
        load_image(small)
    monkeypatch.setenv("PROMPTMOE_MAX_IMAGE_PIXELS", "0")  # the documented opt-in: no limit
    assert load_image(small).size == (40, 40)
    monkeypatch.setenv("PROMPTMOE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DatasetError, match="PROMPTMOE_MAX_IMAGE_PIXELS must be a pixel count.*'lots'"):
        load_image(small)


# ---------------------------------------------------------------- report semantics
def test_mean_over_categories_says_how_many_were_defined():
    per_cat = pd.DataFrame({
        "dataset": ["mine"] * 3, "format": ["folder"] * 3, "category": ["a", "b", "c"], "n_no_mask": [0, 2, 1],
        "image_auroc": [0.5, 0.7, 0.9], "image_ap": [0.6, 0.6, 0.6],
        "pixel_auroc": [0.8, np.nan, 0.6], "au_pro": [np.nan] * 3, "pro_compat": [0.1, np.nan, np.nan],
    })
    row = summarise(per_cat).iloc[0]
    assert row.image_auroc == pytest.approx(0.7) and row.pixel_auroc == pytest.approx(0.7)
    assert np.isnan(row.au_pro) and row.n_categories == 3 and row.n_no_mask == 3 and row.format == "folder"
    assert row.note == ("pixel_auroc: mean of 2 of 3 categories; au_pro: undefined in all 3 categories; "
                        "pro_compat: mean of 1 of 3 categories")


def test_all_zero_mask_on_anomalous_image_warned_by_check(tmp_path):
    save(tmp_path / "r" / "good" / "g.png"), save(tmp_path / "r" / "bad" / "b.png")
    save(tmp_path / "r" / "bad" / "b_mask.png", block(value=100))  # faint: empty under the > 127 rule
    with pytest.warns(UserWarning, match=r"r: all 1 masks in bad/ are empty, .*pass --normal-dir good --normal-dir bad"):
        ds = load_dataset("folder", tmp_path / "r", 16, verbose=False, label="r")
    with pytest.warns(UserWarning, match=r"r: 1 anomalous image\(s\) have an all-zero mask .*b_mask.png"):
        assert ds.check() == 2


def test_undefined_metric_prints_as_dash_in_markdown():
    from promptmoe.evaluate import _markdown

    df = pd.DataFrame({"pixel_auroc": [0.5, np.nan], "n_images": [3, 4]}, index=["a", "b"])
    rows = [ln.replace(" ", "") for ln in _markdown(df, "t", {}).splitlines() if ln.startswith("|")]
    assert rows[-2:] == ["|a|0.5|3|", "|b|-|4|"]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_map_names_the_image(bad):
    maps = np.zeros((2, 4, 4), np.float32)
    maps[1, 2, 2] = bad
    pred = Predictions(np.zeros(2), np.array([0, 1]), maps, np.zeros((2, 4, 4), bool), np.ones(2, bool),
                       ["c", "c"], ["ok.png", "hot.png"], {})
    with pytest.raises(ValueError, match=r"mine/c: 1 image\(s\) got a non-finite .*\['hot.png'\]"):
        check_finite(pred, "mine/c: ")
    with pytest.raises(ValueError, match=r"maps\[1\] contains (inf|NaN)"):
        M.pixel_auroc(np.ones((2, 4, 4), bool) & (np.arange(16).reshape(4, 4) < 4), maps)


# ---------------------------------------------------------------- own data end to end (tiny model)
@pytest.fixture(scope="module")
def model():
    from promptmoe.model import build_model

    return build_model(PromptMoEConfig.tiny()).eval()


def _mixed_folder(root):
    """good/ and crack/ images of mixed sizes and modes; masks beside, in masks/, empty, missing."""
    sizes = [(333, 517), (64, 48), (100, 100), (517, 333), (90, 60), (70, 70)]
    modes = ["L", "RGBA", "P", "RGB", "I;16", "RGB"]
    rng = np.random.default_rng(0)
    for i, ((w, h), mode) in enumerate(zip(sizes, modes)):
        folder = "good" if i < 3 else "crack"
        arr = rng.integers(0, 255, (h, w), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 257)
        (root / folder).mkdir(parents=True, exist_ok=True)
        img.save(root / folder / f"im{i}.png")
    save(root / "crack" / "im3_mask.png", block(333, 517, box=(100, 200, 100, 200)))  # beside (H 333 x W 517)
    save(root / "masks" / "im4.png", np.zeros((60, 90), np.uint8))  # empty mask: warned at evaluation
    return sizes  # im5 has no mask: warned at load


def test_own_folder_eval_and_predict(tmp_path, model):
    sizes = _mixed_folder(tmp_path / "mixed")
    with pytest.warns(UserWarning, match=r"mine: 1 of 3 anomalous images have no mask \(.*im5.png\)"):
        ds = load_dataset("folder", tmp_path / "mixed", model.config.image_size, verbose=False, label="mine")
    with pytest.warns(UserWarning, match=r"mine/mixed: 1 anomalous image\(s\) have an empty mask .*im4.png"):
        rep = evaluate(model, {"mine": ds}, out_dir=tmp_path / "eval", progress=False)
    row = rep.per_category.iloc[0]
    assert (row.dataset, row.format, row.n_images, row.n_anomalous, row.n_no_mask, row.n_empty_mask) == \
        ("mine", "folder", 6, 3, 1, 1)
    assert rep.summary.loc[0, "n_categories"] == 1 and rep.summary.loc[0, "n_no_mask"] == 1
    assert "mine" in (tmp_path / "eval" / "summary.md").read_text()

    pattern = str(tmp_path / "mixed" / "good" / "im1.*")
    inputs = [str(tmp_path / "mixed" / "good" / "im0.png"), str(tmp_path / "mixed"), pattern]
    assert len(collect_inputs(inputs)) == 6  # im0/im1 named twice: each image once
    table = score_images(model, inputs, tmp_path / "pred", progress=False, save_maps=True)
    assert table.input.tolist() == [inputs[0]] + [inputs[1]] * 5
    by_name = {p.split("/")[-1]: r for p, r in zip(table.image_path, table.itertuples())}
    for i, (w, h) in enumerate(sizes):
        r = by_name[f"im{i}.png"]
        assert Image.open(tmp_path / "pred" / r.overlay).size == (w, h) == (r.width, r.height)
        assert np.load(tmp_path / "pred" / r.map).shape == (h, w)
    assert pd.read_csv(tmp_path / "pred" / "scores.csv").input.tolist() == table.input.tolist()


@pytest.mark.parametrize("given,message", [
    ("{t}/nowhere.png", r"input .*nowhere.png does not exist"),
    ("{t}/notes.txt", r"input .*notes.txt: not an image file"),
    ("{t}/empty", r"input .*empty: no images found in this folder"),
    ("{t}/*.jpeg", r"input .*\*.jpeg: the pattern matches no image file"),
])
def test_collect_inputs_errors_name_the_input(tmp_path, given, message):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=message):
        collect_inputs([given.format(t=tmp_path)])


def test_overlay_of_a_file_in_the_current_folder_has_no_leading_underscore(tmp_path, monkeypatch):
    from promptmoe.predict import _unique_name

    assert _unique_name(Path("a.png"), 0, set()) == "a"  # not "_a"
    assert _unique_name(Path("good") / "a.png", 0, set()) == "good_a"
    taken = {"good_a"}
    assert _unique_name(Path("good") / "a.png", 3, taken) == "good_a_3"


def test_overlay_names_skip_folders_that_only_hold_images():
    from promptmoe.predict import _unique_name

    # MTD: MT_Blowhole/Imgs/exp1_num_4.jpg and MT_Free/Imgs/exp1_num_4.jpg share the stem
    taken = set()
    assert _unique_name(Path("MTD") / "MT_Blowhole" / "Imgs" / "exp1_num_4.jpg", 0, taken) == "MT_Blowhole_exp1_num_4"
    assert _unique_name(Path("MTD") / "MT_Free" / "Imgs" / "exp1_num_4.jpg", 1, taken) == "MT_Free_exp1_num_4"
    assert _unique_name(Path("/data/voc/JPEGImages/x.jpg"), 2, taken) == "voc_x"
    assert _unique_name(Path("images") / "x.jpg", 3, taken) == "x"  # nothing above: the stem
    # "<base>_<i>" already taken by another file: the next free number
    taken = {"good_a", "good_a_3"}
    assert _unique_name(Path("good") / "a.png", 3, taken) == "good_a_4"
