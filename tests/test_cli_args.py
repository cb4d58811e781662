"""The command line's value checks, called directly (tests/test_bad_inputs_cli.py drives them
through ``promptmoe ...`` and its exit codes)."""
import argparse
import math

import pytest

from promptmoe.cli_args import (UsageError, add_label_options, add_mask_options, add_speed_flags,
                                check_fraction, check_out, config_from, config_overrides,
                                mask_options, same_kind)


@pytest.mark.parametrize("value, default, ok", [
    (2, 1, True), (2.5, 1, False), (True, 1, False),  # an int field takes no float or bool
    (1, 0.5, True), (0.25, 0.5, True), (math.inf, 0.5, False), (math.nan, 0.5, False),
    (True, False, True), (1, False, False),
    ([6, 12], [24], True), ([6, "x"], [24], False), ((1, 2), (3,), True), ("x", [24], False),
    ("static", "moe", True), (3, "moe", False), (None, 1, True), (5, None, True),
])
def test_same_kind(value, default, ok):
    assert same_kind(value, default) is ok


def test_config_overrides_parse_json_and_keep_plain_strings():
    assert config_overrides(["top_k=2", "prompt_mode=static", "layers=[6, 12]", "lr=0.002"]) == {
        "top_k": 2, "prompt_mode": "static", "layers": [6, 12], "lr": 0.002}
    assert config_overrides(None) == {}


@pytest.mark.parametrize("pair, message", [
    ("top_k", "write it as key=value"),
    ("topk=2", "unknown config key 'topk'"),
    ("top_k=2.5", "top_k takes an integer"),
    ("lr=NaN", "lr takes a finite number"),
    ("layers=24", "layers takes a list"),
])
def test_config_overrides_name_the_pair_at_fault(pair, message):
    with pytest.raises(UsageError, match=message) as err:
        config_overrides([pair])
    assert repr(pair) in str(err.value)


def test_config_from_names_the_values_of_an_invalid_combination():
    assert config_from("tiny", {"top_k": 1}).top_k == 1
    with pytest.raises(UsageError, match=r"config top_k=99: .*"):
        config_from("tiny", {"top_k": 99})


@pytest.mark.parametrize("value, ok", [(0.0, True), (0.5, True), (1.0, True), (-0.01, False),
                                       (1.01, False), (math.nan, False), (math.inf, False)])
def test_check_fraction(value, ok):
    if ok:
        assert check_fraction(value, "--threshold") == value
    else:
        with pytest.raises(UsageError, match=r"--threshold .*must be a number in \[0, 1\]"):
            check_fraction(value, "--threshold")


def test_check_out_creates_the_folder_and_refuses_a_file(tmp_path):
    made = check_out(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="--out .*f: is a file, not a folder"):
        check_out(tmp_path / "f")
    with pytest.raises(UsageError, match="--cache-dir .* cannot be written"):
        check_out(tmp_path / "f" / "below", "--cache-dir")  # a file as parent


def _parse(argv):
    p = argparse.ArgumentParser()
    add_mask_options(p)
    add_label_options(p)
    add_speed_flags(p)
    return p.parse_args(argv)


def test_mask_options_become_keywords_and_bad_ones_are_named(tmp_path):
    args = _parse(["--mask-threshold", "0", "--mask-dir", str(tmp_path), "--mask-suffix", ".png",
                   "--normal-dir", "MT_Free", "--normal-dir", "ok"])
    assert mask_options(args) == {"mask_threshold": 0.0, "mask_dir": tmp_path, "mask_suffix": ".png",
                                  "normal_dirs": ["MT_Free", "ok"]}
    assert mask_options(_parse([])) == {}
    assert _parse([]).precision == "auto" and _parse([]).workers is None
    with pytest.raises(UsageError, match="--mask-threshold 65535.0: must be a raw mask value"):
        mask_options(_parse(["--mask-threshold", "65535"]))
    with pytest.raises(UsageError, match="--mask-dir .*nowhere: no such folder"):
        mask_options(_parse(["--mask-dir", str(tmp_path / "nowhere")]))
