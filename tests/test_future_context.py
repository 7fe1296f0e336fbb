"""RQ3's future-context task: data, region metrics, training, the trained-weights probe, the
paired bootstrap and the verdict rules, and the report section."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from sf_mamba.future_context import stats
from sf_mamba.future_context.data import GRID, INK_THRESHOLD, NUM_CLASSES, build_task, label_map, region_masks
from sf_mamba.future_context.metrics import per_image_confusion, region_scores, scores


# ---------------------------------------------------------------------------------- data
def test_task_shapes_labels_and_fixed_split():
    from sklearn.datasets import load_digits

    train, test, info = build_task(img_size=128)
    assert train.images.shape == (1437, 3, 128, 128) and test.images.shape == (360, 3, 128, 128)
    assert train.labels.shape == (1437, GRID, GRID) and train.labels.dtype == torch.int64
    assert not set(train.indices) & set(test.indices) and len(train) + len(test) == 1797
    digits = load_digits()
    for part in (train, test):
        for j in (0, len(part) - 1):
            i = part.indices[j]
            ink = digits.images[i] > INK_THRESHOLD
            expected = np.where(ink, digits.target[i] + 1, 0)
            assert (part.labels[j].numpy() == expected).all()
            assert part.digits[j] == digits.target[i]
    # every foreground cell carries its image's digit class, and the images are the upsampled digits
    fg = train.labels > 0
    assert (train.labels[fg] == (train.digits.view(-1, 1, 1).expand_as(train.labels)[fg] + 1)).all()
    assert float(train.images.min()) >= -1 - 1e-6 and float(train.images.max()) <= 1 + 1e-6
    again_train, again_test, again = build_task(img_size=128)
    assert again["sha256"] == info["sha256"] and (again_test.indices == test.indices).all()
    # stratified: each digit is ~20% test
    counts = np.bincount(test.digits.numpy(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    assert info["num_classes"] == NUM_CLASSES == 11


def test_label_map_and_regions_by_hand():
    img = np.zeros((8, 8))
    img[1, 2] = 16
    img[6, 5] = INK_THRESHOLD          # not above the threshold: background
    img[7, 0] = INK_THRESHOLD + 0.5
    lab = label_map(img, 3)
    assert lab[1, 2] == 4 and lab[6, 5] == 0 and lab[7, 0] == 4 and lab.sum() == 8
    masks = region_masks(8, 8)
    assert masks["top"][:4].all() and not masks["top"][4:].any() and (masks["bottom"] == ~masks["top"]).all()


@pytest.mark.parametrize("size", [7, 100])
def test_bad_img_size_is_rejected(size):
    with pytest.raises(ValueError, match="img_size must be a positive multiple of 8"):
        build_task(img_size=size)


# ---------------------------------------------------------------------------------- metrics
def test_region_metrics_match_a_hand_computation():
    # one 4x4 image (rows 0-1 = top, 2-3 = bottom), 3 classes
    label = torch.tensor([[[0, 1, 1, 0], [0, 1, 0, 0], [2, 2, 0, 0], [0, 2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 2, 0], [1, 1, 0, 0], [2, 2, 0, 0], [0, 1, 2, 0]]])
    conf = per_image_confusion(pred, label, num_classes=3)
    assert conf.shape == (1, 2, 3, 3) and conf.sum() == 16
    top, bottom = conf[0, 0], conf[0, 1]
    # top: label 0 cells (5): 4 right, 1 predicted 1; label 1 cells (3): 2 right, 1 predicted 2
    assert top.tolist() == [[4, 1, 0], [0, 2, 1], [0, 0, 0]]
    # bottom: label 0 (4) right; label 2 (4): 3 right, 1 predicted 1
    assert bottom.tolist() == [[4, 0, 0], [0, 0, 0], [0, 1, 3]]
    got = region_scores(conf)
    # top: IoU0 = 4/(5+4-4)=0.8, IoU1 = 2/(3+3-2)=0.5, IoU2 = 0/(0+1-0)=0 -> mean 0.4333
    assert got["top"]["miou"] == pytest.approx(100 * (0.8 + 0.5 + 0.0) / 3)
    assert got["top"]["pixel_acc"] == pytest.approx(100 * 6 / 8)
    assert got["top"]["fg_acc"] == pytest.approx(100 * 2 / 3)
    # bottom: class 1 only predicted: IoU1 = 0/1; IoU0 = 1; IoU2 = 3/4
    assert got["bottom"]["miou"] == pytest.approx(100 * (1 + 0 + 0.75) / 3)
    assert got["bottom"]["fg_acc"] == pytest.approx(100 * 3 / 4)
    assert got["overall"]["pixel_acc"] == pytest.approx(100 * 13 / 16)
    assert got["overall"]["fg_acc"] == pytest.approx(100 * 5 / 7)
    assert scores(np.zeros((3, 3)))["fg_acc"] != scores(np.zeros((3, 3)))["fg_acc"]   # NaN, not 0


# ---------------------------------------------------------------------------------- training + probe
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from sf_mamba.future_context.train import run

    torch.set_num_threads(1)
    out = {}
    for scan in ("uni", "swap"):
        d = tmp_path_factory.mktemp(scan)
        metrics = run("sf_mamba_micro2", {"scan": scan, "attention": False}, img_size=64, epochs=3,
                      batch_size=16, lr=3e-3, seed=0, limit=96, probe_images=4, out_dir=d, log=lambda m: None)
        out[scan] = (d, metrics)
    return out


def test_training_improves_over_initialisation(tiny_runs):
    _, m = tiny_runs["uni"]
    assert m["train"]["final_loss"] < m["train"]["first_epoch_loss"]
    assert m["overall"]["pixel_acc"] > m["init"]["overall"]["pixel_acc"] + 5
    assert m["overall"]["miou"] > m["init"]["overall"]["miou"]
    assert set(m) >= {"overall", "top", "bottom", "init", "probe", "params", "train", "data"}


def test_outputs_and_checkpoint_reload(tiny_runs):
    from sf_mamba.future_context.train import load_checkpoint, predict

    d, m = tiny_runs["swap"]
    for name in ("metrics.json", "meta.json", "per_image.npz", "last.pth", "probe.json", "erf.png"):
        assert (d / name).is_file(), name
    assert json.loads((d / "metrics.json").read_text())["overall"] == pytest.approx(m["overall"])
    conf = np.load(d / "per_image.npz")["confusion"]
    assert conf.shape == (96, 2, NUM_CLASSES, NUM_CLASSES)
    assert region_scores(conf)["top"] == pytest.approx(m["top"])
    # the checkpoint reproduces the evaluated predictions
    _, test, _ = build_task(img_size=64, limit=96)
    model = load_checkpoint(d / "last.pth")
    again = per_image_confusion(predict(model, test.images), test.labels)
    assert (again == conf).all()


def test_probe_on_the_trained_checkpoint(tiny_runs):
    uni, swap = tiny_runs["uni"][1]["probe"], tiny_runs["swap"][1]["probe"]
    # the uni scan cannot route anything more than one row ahead, trained or not
    assert uni["init"]["far_future_mass_ratio_mean"] == 0 and uni["trained"]["far_future_mass_ratio_mean"] == 0
    assert swap["trained"]["far_future_mass_ratio_mean"] > 0
    # trained weights differ from the initial ones, so the probe does too
    assert swap["trained"]["future_mass_ratio_mean"] != swap["init"]["future_mass_ratio_mean"]
    entries = json.loads((tiny_runs["swap"][0] / "probe.json").read_text())["entries"]
    assert [e["label"].split(": ")[1] for e in entries] == ["init", "trained"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sf_mamba", "fc-train", "--model-kwargs", "[1]",
                           "--out-dir", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sf_mamba fc-train: error: --model-kwargs")
    assert not (tmp_path / "x" / "metrics.json").exists()


# ---------------------------------------------------------------------------------- statistics
def _confusions(correct_top: float, correct_bottom: float, n: int = 40, seed: int = 0) -> np.ndarray:
    """Per-image confusions (n, 2, 3, 3): 4 ink cells of class 1 per region, a share right."""
    rng = np.random.default_rng(seed)
    conf = np.zeros((n, 2, 3, 3), dtype=np.int64)
    for r, p in enumerate((correct_top, correct_bottom)):
        right = rng.binomial(4, p, size=n)
        conf[:, r, 1, 1] = right
        conf[:, r, 1, 2] = 4 - right
        conf[:, r, 0, 0] = 4
    return conf


def test_paired_contrast_detects_a_real_difference_and_not_a_null_one():
    good = {s: _confusions(0.9, 0.9, seed=s) for s in range(3)}
    bad = {s: _confusions(0.5, 0.9, seed=10 + s) for s in range(3)}
    same = {s: _confusions(0.9, 0.9, seed=20 + s) for s in range(3)}
    top = stats.contrast([(1.0, good), (-1.0, bad)], "fg_acc", "top", n_boot=300)
    assert top["n_seeds"] == 3 and top["n_images"] == 40
    assert 30 < top["mean"] < 50 and top["lo"] > 0
    bottom = stats.contrast([(1.0, good), (-1.0, bad)], "fg_acc", "bottom", n_boot=300)
    assert bottom["lo"] < 0 < bottom["hi"]
    # the point estimate is the mean over seeds of the per-seed difference
    by_seed = [region_scores(good[s])["top"]["fg_acc"] - region_scores(bad[s])["top"]["fg_acc"] for s in range(3)]
    assert top["mean"] == pytest.approx(np.mean(by_seed))
    assert stats.directional(top) == stats.SUPPORTED
    assert stats.directional(stats.contrast([(1.0, bad), (-1.0, good)], "fg_acc", "top", n_boot=300)) == stats.NOT_SUPPORTED
    null = stats.contrast([(1.0, good), (-1.0, same)], "fg_acc", "top", n_boot=300)
    assert null["lo"] < 0.5 and null["hi"] > -0.5
    # only shared seeds count; none shared is "inconclusive", not an error
    assert stats.contrast([(1.0, {0: good[0]}), (-1.0, {1: bad[1]})])["n_seeds"] == 0
    assert stats.directional(None) == stats.INCONCLUSIVE


@pytest.mark.parametrize("ci,expected", [
    (dict(mean=3.0, lo=1.0, hi=5.0, n_seeds=3), stats.SUPPORTED),
    (dict(mean=-3.0, lo=-5.0, hi=-1.0, n_seeds=3), stats.NOT_SUPPORTED),
    (dict(mean=0.1, lo=-0.5, hi=0.8, n_seeds=3), stats.NOT_SUPPORTED),     # inside ±1 pp: no effect
    (dict(mean=0.5, lo=-2.0, hi=3.0, n_seeds=3), stats.INCONCLUSIVE),
    (dict(mean=float("nan"), lo=float("nan"), hi=float("nan"), n_seeds=0), stats.INCONCLUSIVE),
])
def test_directional_verdict(ci, expected):
    assert stats.directional(ci) == expected


def test_claim_verdicts_on_synthetic_numbers():
    gain = dict(mean=4.0, lo=2.0, hi=6.0, n_seeds=3, n_images=360)
    none = dict(mean=0.0, lo=-0.6, hi=0.6, n_seeds=3, n_images=360)
    assert stats.verdict_flow(1e-3, 0.0, gain)[0] == stats.SUPPORTED
    v, e = stats.verdict_flow(0.0, 0.0, gain)
    assert v == stats.NOT_SUPPORTED and "no routed flow" in e
    assert stats.verdict_flow(1e-3, 0.0, none)[0] == stats.NOT_SUPPORTED
    assert stats.verdict_flow(None, 0.0, gain)[0] == stats.INCONCLUSIVE
    worse = dict(mean=-5.0, lo=-7.0, hi=-3.0, n_seeds=3, n_images=360)
    assert stats.verdict_matches_multiscan({"bi": none, "x4": gain}, {"bi": "params ×1.02"})[0] == stats.SUPPORTED
    v, e = stats.verdict_matches_multiscan({"bi": none, "x4": worse}, {})
    assert v == stats.NOT_SUPPORTED and "x4" in e
    assert stats.verdict_matches_multiscan({}, {})[0] == stats.INCONCLUSIVE
    assert stats.verdict_attention_hides(gain, gain, none)[0] == stats.SUPPORTED
    assert stats.verdict_attention_hides(none, gain, gain)[0] == stats.NOT_SUPPORTED


def test_report_section_from_synthetic_runs(tmp_path):
    from sf_mamba.report.render import load_runs, render_rq3_future_context

    designs = {  # experiment: (scan, attention, aux, init, top accuracy)
        "uni": ("uni", False, 0, "learnable", 0.5), "swap": ("swap", False, 2, "learnable", 0.9),
        "swap1": ("swap", False, 1, "learnable", 0.7), "bi_parallel": ("bi_parallel", False, 0, "learnable", 0.9),
        "uni_attn": ("uni", True, 0, "learnable", 0.9), "swap_attn": ("swap", True, 2, "learnable", 0.9)}
    rows = []
    for exp, (scan, attn, aux, init, p_top) in designs.items():
        for seed in range(3):
            d = tmp_path / exp / f"seed{seed}"
            d.mkdir(parents=True)
            conf = _confusions(p_top, 0.9, seed=seed * 7 + len(exp))
            np.savez(d / "per_image.npz", confusion=conf)
            sc = region_scores(conf)
            rows.append({"kind": "fc_train", "rq": "rq3_aux", "experiment": exp, "seed": seed, "status": "ok",
                         "label": exp, "scan": scan, "attention": attn, "aux_tokens": aux, "aux_init": init,
                         "match_params": False, "path": str(d / "metrics.json"), "params_m": 1.0,
                         "train.images_per_s": 30.0, "train.epochs": 2,
                         "probe.init.far_future_mass_ratio_mean": 1e-3 if scan == "swap" else 0.0,
                         "probe.trained.far_future_mass_ratio_mean": 2e-3 if scan == "swap" else 0.0,
                         **{f"{r}.{k}": v for r in sc for k, v in sc[r].items()}})
    csv = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "out"
    render_rq3_future_context(load_runs(csv), out, n_boot=200)
    for name in ("future_context.md", "future_context.tex", "future_context.csv", "future_context.png",
                 "future_context.pdf", "verdicts.md"):
        assert (out / name).is_file(), name
    verdicts = (out / "verdicts.md").read_text()
    lines = [line for line in verdicts.splitlines() if line.startswith("- ")]
    assert len(lines) == 5 and all("scale:" in line for line in lines)
    assert "future→past information flow (attention off)**: *supported*" in verdicts
    assert "two aux tokens beat one (attention off)**: *supported*" in verdicts
    assert "attention hides the swap's effect**: *supported*" in verdicts
    assert "initialisation**: *inconclusive*" in verdicts          # no mean-initialised run
    table = pd.read_csv(out / "future_context.csv")
    assert {"ink acc, top (%)", "Δ ink acc vs uni, top"} <= set(table.columns)
