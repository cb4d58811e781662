"""Tests for promptmoe/study_plan.py: passes, FLOPs, disk and time of an ablation study.

The paper's study is checked against hand computation with made-up per-model FLOPs (no counting
needed): 1725 MVTec AD and 2162 VisA images, 19 models per direction, 15 epochs.
"""
import math

import pytest

from promptmoe import ablation, cost
from promptmoe.cache import FeatureCache
from promptmoe.config import PromptMoEConfig
from promptmoe.model import count_trainable_parameters
from promptmoe.study import StudyError
from promptmoe.study_plan import hours_text, flops_text, make_plan, paper_study_plan

ENC, STEP, EVAL = 1000.0, 10.0, 5.0  # made-up FLOPs per image: tower, cached step, cached eval
MVTEC, VISA = 1725, 2162


def _paper_configs():
    base = PromptMoEConfig.paper()
    out = {}
    for t in ablation.ABLATION_TABLES:
        for ch in ablation.changes_for(t, base).values():
            c = base.replace(**ch)
            out[ablation.config_hash(c)] = c
    return out


@pytest.fixture(scope="module")
def plan():
    fake = {h: {"enc": ENC, "step": STEP, "eval": EVAL} for h in _paper_configs()}
    return paper_study_plan(flops=fake)


def test_paper_study_passes_per_image(plan):
    assert plan.images == {"mvtec": MVTEC, "visa": VISA}
    assert plan.models == {"mvtec -> visa": 19, "visa -> mvtec": 19} and plan.rows == 46
    assert plan.passes["after"] == {"mvtec": 1, "visa": 1}
    # model by model: 19 models train on a set in one direction and score it in the other
    assert plan.passes["before"] == {"mvtec": 38, "visa": 38}
    assert plan.passes["before_no_cache"] == {"mvtec": 19 * 15 + 19, "visa": 19 * 15 + 19}
    assert "tower passes per image: mvtec 1, visa 1 with shared features" in plan.describe()


def test_paper_study_flops_by_hand(plan):
    n = MVTEC + VISA
    trainings = 19 * (MVTEC + VISA) * 15 * STEP  # every model of both directions, every epoch
    evaluations = 19 * (VISA + MVTEC) * EVAL
    assert plan.flops["after"] == pytest.approx(n * ENC + trainings + evaluations, rel=1e-12)
    # model by model, each of the 38 models runs the tower once over its training and its
    # evaluation images: 38 passes over each set instead of one
    assert plan.flops["before"] - plan.flops["after"] == pytest.approx(37 * n * ENC, rel=1e-12)
    no_cache = 19 * (MVTEC + VISA) * 15 * (ENC + STEP) + 19 * n * (ENC + EVAL)
    assert plan.flops["before_no_cache"] == pytest.approx(no_cache, rel=1e-12)
    t = plan.projection()
    rate = cost.GPUS["T4"]["fp32"] * cost.EFFICIENCY["fp32"] * 1e12 * 3600
    assert t.loc[("T4", "fp32"), "shared features h"] == pytest.approx(plan.flops["after"] / rate)


def test_paper_study_disk(plan):
    gb = FeatureCache.estimate_gb(PromptMoEConfig.paper(), MVTEC, 37 * 37, 768, bytes_per=2)
    assert plan.cache_gb["mvtec"] == pytest.approx(gb) and round(gb, 1) == 15.0
    params = sum(count_trainable_parameters(c, 768, 768) for c in _paper_configs().values())
    assert plan.run_gb == pytest.approx(2 * (12 * params + 19 * 1e6) / 1e9)
    assert "disk: the study still writes" in plan.describe()


def test_check_refuses_what_does_not_fit(plan):
    plan.check()  # the paper's plan has no folder: nothing to check
    plan.free_disk_gb, plan.disk_need_gb, plan.folder = 30.0, 37.5, "/content/runs"
    with pytest.raises(StudyError, match=r"needs 37\.5 GB of disk .*mvtec 15\.0 GB, visa 18\.8 GB.*"
                                         r"only 30\.0 GB are free in /content/runs"):
        plan.check()
    plan.reclaim_gb = 20.0  # caches the study deletes first count as free: 0.8 x 50 >= 37.5
    plan.check()
    plan.where, plan.reason = "none", "the feature cache needs 33.8 GB ..."
    with pytest.raises(StudyError, match="cannot keep its feature caches"):
        plan.check()


def test_make_plan_with_one_direction_and_a_second_group():
    c = PromptMoEConfig.tiny(epochs=2)
    fake = {ablation.config_hash(c): {"enc": ENC, "step": STEP, "eval": EVAL}}
    p = make_plan("tiny", {"a -> b": ("a", ["b"])}, {"a": 10, "b": 20, "unused": 5}, {"a -> b": [c]},
                  groups=2, flops=fake, bytes_per=4)
    assert p.passes["after"] == {"a": 2, "b": 2, "unused": 0}  # one pass per set and group
    assert p.passes["before"] == {"a": 1, "b": 1, "unused": 0}
    assert set(p.cache_gb) == {"a", "b"}
    assert p.flops["after"] == pytest.approx(2 * 30 * ENC + 10 * 2 * STEP + 20 * EVAL)
    assert p.reads == 10 * 2 + 20


@pytest.mark.parametrize("value, text", [(5.28e16, "52.8 PFLOP"), (2.3e12, "2.3 TFLOP"),
                                         (4.5e9, "4.5 GFLOP"), (1.2e18, "1.2 EFLOP")])
def test_flops_text(value, text):
    assert flops_text(value) == text


@pytest.mark.parametrize("hours, text", [(4.02, "4.02 h"), (0.16, "9.6 min"), (0.001, "3.6 s")])
def test_hours_text(hours, text):
    assert hours_text(hours) == text
    assert not math.isnan(hours)
