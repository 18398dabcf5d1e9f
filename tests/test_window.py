"""DATM's difficulty alignment as a rule (raydd/distill/window.py): hand-computed windows, and DATM's own table."""

from __future__ import annotations

import pytest

from raydd.config import compose, validate
from raydd.distill.window import Window, difficulty_window, with_difficulty_window
from raydd.specs import ConfigError

# NUS-HPC-AI-Lab/DATM configs/*/ConvIN/IPC*.yaml: (ipc, real images per class, min_start, max_start), experts of 100 epochs
DATM_CONFIGS = [(1, 5000, 0, 4), (10, 5000, 0, 20), (50, 5000, 0, 40), (500, 5000, 40, 60), (1000, 5000, 40, 60),
                (1, 500, 0, 20), (10, 500, 0, 50), (50, 500, 20, 70), (100, 500, 30, 70),
                (1, 500, 0, 20), (10, 500, 10, 50), (50, 500, 40, 70)]


@pytest.mark.parametrize("ipc, per_class, epochs, expert_epochs, expected", [
    # r = 10/6000: upper 0.04 + 0.22·log10(8.33) = 0.243 → 8·0.243 = 1.94 → 2; lower clipped to 0; grows from 2/2 = 1
    (10, 6000, 8, 1, Window(0, 2, 1)),
    # r = 0.05: upper 0.04 + 0.22·log10(250) = 0.568 → 4.54 → 5; lower 0.33·log10(5) = 0.231 → 1.85 → 2; fixed
    (300, 6000, 8, 1, Window(2, 5, None)),
    # r = 1/6000: upper clipped to 0.04 → 0.32 → at least 1 start; no growth below E/10
    (1, 6000, 8, 1, Window(0, 1, None)),
    # CIFAR-10 IPC 50 (r = 0.01): upper 0.414 → 41, grows from round(20.5) = 20 (DATM: [0, 40) from 20)
    (50, 5000, 100, 2, Window(0, 41, 20)),
    # the whole data (r = 1): upper 0.70 → 5.6 → 6, lower 0.40 → 3.2 → 3; 6 + 2 epochs fit 8
    (6000, 6000, 8, 2, Window(3, 6, None)),
    # a short store clips the upper end so that the last start's segment fits: 8 − 4 + 1 = 5
    (6000, 6000, 8, 4, Window(3, 5, None)),
])
def test_hand_computed_windows(ipc, per_class, epochs, expert_epochs, expected):
    assert difficulty_window(ipc, per_class, epochs, expert_epochs) == expected


def test_float_starts_reach_the_upper_end_so_it_stops_a_segment_earlier():
    # integer starts: the last is 4, 4 + 4 = 8; float starts reach 4 itself: upper end 8 − 4 = 4
    assert difficulty_window(6000, 6000, 8, 4, continuous=True) == Window(3, 4, None)


@pytest.mark.parametrize("ipc, per_class, lo, hi", DATM_CONFIGS)
def test_rule_lies_within_13_epochs_of_datms_table(ipc, per_class, lo, hi):
    w = difficulty_window(ipc, per_class, 100, 2)
    assert abs(w.min_start - lo) <= 13 and abs(w.max_start - hi) <= 13, (w, lo, hi)


def test_window_moves_later_as_ipc_grows():
    windows = [difficulty_window(ipc, 6000, 50, 2) for ipc in (1, 10, 50, 100, 300, 1000)]
    assert [w.max_start for w in windows] == sorted(w.max_start for w in windows)
    assert [w.min_start for w in windows] == sorted(w.min_start for w in windows)
    assert windows[0].max_start < windows[-1].min_start


def test_method_datm_resolves_its_window_and_other_methods_keep_theirs():
    cfg = compose(["method=datm", "ipc=300", "experts.epochs=8"])
    assert cfg["distill"]["window"] == "difficulty"
    resolved = with_difficulty_window(cfg, epochs=8, per_class=6000)
    d = resolved["distill"]
    assert (d["window"], d["min_start_epoch"], d["max_start_epoch"], d["max_start_epoch_init"]) == ("fixed", 2, 5, None)
    assert cfg["distill"]["window"] == "difficulty"  # the input is not modified
    mtt = compose(["method=mtt", "ipc=300"])
    assert with_difficulty_window(mtt, epochs=8, per_class=6000) is mtt


def test_config_checks():
    with pytest.raises(ConfigError, match="unknown distill.window 'late'"):
        validate(compose(["distill.window=late"]), "distill")
    with pytest.raises(ConfigError, match="leaves no start epoch"):
        validate(compose(["method=datm", "experts.epochs=2", "distill.expert_epochs=2"]), "distill")
    # a fixed window beyond the experts is an error; the rule fits any store
    with pytest.raises(ConfigError, match="must lie within experts.epochs"):
        validate(compose(["distill.max_start_epoch=9"]), "distill")
    validate(compose(["method=datm", "distill.max_start_epoch=9"]), "distill")


@pytest.mark.parametrize("ipc", [1, 10, 50, 100, 300])
def test_fmnist_datm_recipes_follow_their_stated_rule(ipc):
    cfg = compose([f"experiment=fmnist_datm_ipc{ipc}"])
    d, e = cfg["distill"], cfg["experts"]
    # experts that end above random real at the IPC: the authors' lr up to IPC 10, 10x it from IPC 50
    assert (e["lr"], e["epochs"]) == ((0.01, 8) if ipc <= 10 else (0.1, 12)) and d["lr_init"] == e["lr"]
    assert d["window"] == "difficulty" and d["syn_steps"] == 24 and d["expert_epochs"] == 1 and not d["soft_labels"]
    assert d["threshold_patience"] == 5 and d["loss_threshold"] == 1.0
    assert d["init"] == ("kmeans_medoid" if ipc == 300 else "correct")  # representatives where images move least
    assert d["batch_syn"] == (50 if ipc == 10 else min(10 * ipc, 100))
    assert d["iterations"] == max(200, 4 * ipc)
