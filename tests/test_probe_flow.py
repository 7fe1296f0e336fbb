"""The information-flow probe: with attention off, a unidirectional scan gives exactly zero gradient mass
to stage-3 input tokens more than one row ahead of the query (only the mixers' symmetric 3-tap convs
reach a few positions ahead), while the swap design routes future tokens back (non-zero mass)."""

from __future__ import annotations

import json

import pytest
import torch

from sf_mamba.analysis.probe import mass_ratios, run_probe

# 112 px -> 7x7 stage-3 map; window 7 makes stage 3 one global window, as at 224 with window 14.
KW = {"window_size": [8, 8, 7, 4]}


def test_mass_ratios_definition():
    mass = torch.zeros(3, 4)
    mass[0, 0], mass[1, 1], mass[1, 2], mass[2, 3] = 1.0, 2.0, 3.0, 4.0   # query (1, 1) = raster 5
    r = mass_ratios(mass, (1, 1))
    assert r["past_mass_ratio"] == pytest.approx(0.1)
    assert r["self_mass_ratio"] == pytest.approx(0.2)
    assert r["future_mass_ratio"] == pytest.approx(0.7)
    assert r["far_future_mass_ratio"] == pytest.approx(0.4)   # raster > 5 + 4 -> only (2, 3)


@pytest.fixture(scope="module")
def entries():
    return run_probe("sf_mamba_micro", scans=("swap", "uni"), attention=(False,), img_size=112, batch=1,
                     num_queries=4, model_kwargs=KW)


def test_swap_routes_future_to_past_and_uni_does_not(entries):
    swap, uni = entries
    assert (swap["scan"], uni["scan"]) == ("swap", "uni") and swap["stage3_hw"] == [7, 7]
    assert uni["far_future_mass_ratio_mean"] < 1e-7          # structurally zero (float noise at most)
    assert swap["far_future_mass_ratio_mean"] > 1e-4        # the swapped aux token carries the future
    assert swap["far_future_mass_ratio_mean"] > 1000 * max(uni["far_future_mass_ratio_mean"], 1e-12)
    for e in entries:
        assert 0 < e["past_mass_ratio"] < 1 and e["future_mass_ratio"] > 0  # the conv sees 1 token ahead
        total = e["past_mass_ratio"] + e["self_mass_ratio"] + e["future_mass_ratio"]
        assert total == pytest.approx(1.0)


def test_cli_writes_json_and_heatmap(tmp_path, capsys):
    from PIL import Image

    from sf_mamba.cli import main

    out = tmp_path / "probe"
    assert main(["probe", "-m", "sf_mamba_micro", "--img-size", "112", "--batch", "1", "--num-queries", "2",
                 "--attention", "both", "--scan", "uni", "--model-kwargs", json.dumps(KW), "-o", str(out)]) == 0
    data = json.loads((out / "probe.json").read_text())
    assert [(s["scan"], s["attention"]) for s in data["summary"]] == [("uni", False), ("uni", True)]
    # attention blocks see everything: far-future mass appears even for the unidirectional scan
    assert data["summary"][1]["far_future_mass_ratio"] > 1e-4
    assert data["meta"]["git"]["sha"]
    img = Image.open(out / "erf.png")
    assert img.format == "PNG" and img.size[0] > 200
    assert main(["probe", "-m", "nope", "-o", str(tmp_path / "x")]) == 2
    assert "unknown model" in capsys.readouterr().err
