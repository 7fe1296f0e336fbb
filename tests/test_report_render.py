"""Rendering: tables/figures per research question and the reported-vs-reproduced check,
on synthetic metrics files (the gathering logic is real, the numbers are made up for the test)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from sf_mamba.report import gather as g
from sf_mamba.report import render as r

REFERENCE = Path(__file__).resolve().parents[1] / "configs" / "reference" / "published.yaml"


def write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def synthetic_runs(tmp: Path, with_gpu: bool = False) -> Path:
    """A manifest covering every research question; some results present, some missing."""
    man = []

    def train(exp, rq, seed, top1, **desc):
        p = tmp / f"runs/{exp}/seed{seed}/metrics.json"
        if top1 is not None:
            write(p, {"top1": top1, "top5": 99.0, "loss": 1.0, "params": 0.58e6})
        man.append({"kind": "train", "rq": rq, "path": str(p), "experiment": exp, "seed": seed, **desc})

    def bench(exp, rq, thr, device="cpu (x86_64, 2 cores)", **desc):
        p = tmp / f"bench/{exp}.json"
        if thr is not None:
            write(p, {"results": [{"model": "m", "throughput": thr, "batch_size": 16, "device_name": device}]})
        man.append({"kind": "bench", "rq": rq, "path": str(p), "experiment": exp, **desc})

    for exp, scan, attn, mp, label in (("swap_attn", "swap", True, False, "swap"),
                                       ("uni_attn", "uni", True, False, "uni"),
                                       ("cross4_attn_pm", "cross4", True, True, "cross-4 pm"),
                                       ("bi_series_noattn", "bi_series", False, False, "bi-series")):
        desc = dict(scan=scan, attention=attn, match_params=mp, label=label, model="sf_mamba_micro",
                    family="SF-Mamba" if scan == "swap" else "MambaVision" if scan == "uni" else "ablation",
                    reference="")
        for seed, top1 in ((0, 60.0 + len(exp) % 5), (1, 61.0 + len(exp) % 3)):
            train(exp, "rq1_scan", seed, None if exp == "bi_series_noattn" and seed == 1 else top1, **desc)
        bench(exp, "rq1_scan", 200.0 + len(exp), **desc)
        p = tmp / f"flops/runs/{exp}.json"      # MACs come from `sf_mamba flops`, not from training
        write(p, {"results": [{"model": "sf_mamba_micro", "params": 0.58e6, "macs": 2.1e6 if scan == "swap" else 2.4e6}],
                  "meta": {}})
        man.append({"kind": "flops", "rq": "rq1_scan", "path": str(p), "experiment": exp, **desc})
    for exp, tokens in (("swap_attn", 1), ("aux0", 0), ("aux2", 2)):
        desc = dict(scan="swap", aux_tokens=tokens, aux_init="learnable", aux_discard="before_attention",
                    label=f"{tokens} aux", model="sf_mamba_micro")
        train(exp, "rq3_aux", 0, 55.0 + tokens, **desc)
        p = tmp / f"probe/{exp}.json"
        write(p, {"summary": [{"label": "x", "scan": "swap", "future_mass_ratio": 0.1 * tokens,
                               "far_future_mass_ratio_mean": 0.05 * tokens}], "entries": [], "meta": {}})
        man.append({"kind": "probe", "rq": "rq3_aux", "path": str(p), "experiment": exp, **desc})
    for size in ("t", "s"):
        for fam, family, scan in (("sf", "SF-Mamba", "swap"), ("mv", "MambaVision", "uni")):
            p = tmp / f"flops/sf_mamba_{size}_{fam}.json"
            write(p, {"results": [{"model": f"sf_mamba_{size}", "params": {"t": 31.79e6, "s": 52.0e6}[size],
                                   "macs": {"t": 4.41e9, "s": 7.5e9}[size]}]})
            man.append({"kind": "flops", "rq": "rq4_sizes", "path": str(p), "model": f"sf_mamba_{size}",
                        "family": family, "scan": scan, "experiment": f"{fam}_{size}",
                        "reference": f"mambavision_{size}" if fam == "mv" else f"sf_mamba_{size}"})
    mv_t = dict(model="sf_mamba_t", family="MambaVision", scan="uni", label="MV-T", reference="mambavision_t")
    train("mv_t", "rq4_sizes", 0, 82.2 if with_gpu else None, **mv_t)
    bench("mv_t", "rq4_sizes", 6000.0 if with_gpu else None, device="NVIDIA A100-SXM4-80GB", **mv_t)
    p = tmp / "fold.json"
    write(p, {"protocol": {"device": "cpu", "backend": "torch"}, "rows": [
        {"batch": b, "length": 49, "channels": 64, "fold": k, "time_ms": 10.0 / k ** 0.5,
         "speedup_vs_fold1": k ** 0.5, "max_abs_diff": 0.0, "equal": True}
        for b in (1, 8) for k in (1, 2, 4) if k <= b]})
    man.append({"kind": "fold_sweep", "rq": "rq2_fold", "path": str(p)})
    for k in ("1", "auto"):
        for b in (8, 32):
            q = tmp / f"fb/{k}_{b}.json"
            write(q, {"results": [{"model": "sf_mamba_micro", "throughput": 100.0 * b / 8, "batch_size": b,
                                   "device_name": "cpu"}]})
            man.append({"kind": "bench", "rq": "rq2_fold", "path": str(q), "model": "sf_mamba_micro",
                        "fold": k, "batch_size": b, "img_size": 32, "experiment": f"micro_fold{k}"})
    q = tmp / "seg/metrics.json"
    write(q, {"mIoU": 40.0, "mAcc": 50.0, "aAcc": 80.0, "params": 1e6})
    man.append({"kind": "seg", "rq": "rq5_seg", "path": str(q), "seed": 0, "experiment": "seg_smoke",
                "label": "micro", "reference": ""})
    frame = g.gather(man)
    assert set(frame["status"]) == {"ok", "missing"}      # the synthetic files follow their schemas
    out = tmp / "runs.csv"
    frame.to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    runs = synthetic_runs(tmp)
    out = tmp / "report"
    files = r.render(runs, out, all_=True, reference_path=REFERENCE)
    return out, files


def test_every_declared_file_is_written(rendered):
    out, files = rendered
    names = {str(p.relative_to(out)) for p in files}
    for rq, stems in (("rq1_scan", ["table", "accuracy_throughput"]), ("rq2_fold", ["table", "speedup"]),
                      ("rq3_aux", ["table", "aux"]), ("rq4_sizes", ["table", "pareto"]), ("rq5_seg", ["table"])):
        assert {f"{rq}/table.md", f"{rq}/table.tex", f"{rq}/table.csv"} <= names
        for stem in stems[1:]:
            assert {f"{rq}/{stem}.png", f"{rq}/{stem}.pdf"} <= names
    assert {"reproduction.md", "reproduction.tex", "reproduction.csv", "README.md"} <= names


def test_rq1_mean_std_over_seeds_and_missing_seed(rendered):
    out, _ = rendered
    table = pd.read_csv(out / "rq1_scan/table.csv")
    swap = table[table["design"] == "swap"].iloc[0]
    assert "±" in swap["top-1 (%)"] and "(n=2)" in swap["top-1 (%)"]
    bis = table[table["design"] == "bi-series"].iloc[0]
    assert bis["seeds"] == "1/2" and "(n=1)" in bis["top-1 (%)"]
    assert float(swap["MACs (G)"]) == 0.0021 and float(table[table["design"] == "uni"].iloc[0]["MACs (G)"]) == 0.0024
    assert "\\pm" in (out / "rq1_scan/table.tex").read_text()


def test_reproduction_verdicts(rendered):
    out, _ = rendered
    rep = pd.read_csv(out / "reproduction.csv", keep_default_na=False)
    row = lambda key, metric: rep[(rep["model"] == key) & (rep["metric"] == metric)].iloc[0]  # noqa: E731
    assert row("mambavision_t", "params_m")["verdict"] == "reproduced"       # 31.79 vs 31.8 within 1 %
    assert row("mambavision_s", "params_m")["verdict"] == "differs"          # 52.0 vs 50.1
    assert row("mambavision_t", "top1")["verdict"] == "missing"              # no GPU run: not invented
    assert row("mambavision_t", "top1")["reproduced"] == "missing"
    assert row("mambavision_l", "throughput")["verdict"] == "missing"
    assert len(rep[(rep["model"] == "mambavision_b") & (rep["metric"] == "throughput")]) == 2  # 3670 and 2974


def test_throughput_on_other_hardware_is_not_compared(tmp_path):
    runs = synthetic_runs(tmp_path, with_gpu=True)
    table = r.reproduction_table(r.load_runs(runs), r.load_reference(REFERENCE))
    top1 = table[(table["model"] == "mambavision_t") & (table["metric"] == "top1")].iloc[0]
    assert top1["verdict"] == "reproduced" and top1["reproduced"] == "82.20"
    thr = table[(table["model"] == "mambavision_t") & (table["metric"] == "throughput")].iloc[0]
    assert thr["verdict"] == "reproduced"                    # same GPU model, 6000 vs 6298: -4.7 % < 10 %
    cpu = r.verdict(6298, 200.0, {"kind": "relative", "value": 0.1}, "A100", "cpu (x86_64)")
    assert cpu[0].startswith("not comparable")


@pytest.mark.parametrize("reported,reproduced,tol,expected", [
    (10.0, 10.05, {"kind": "absolute", "value": 0.1}, "reproduced"),
    (10.0, 10.2, {"kind": "absolute", "value": 0.1}, "differs"),
    (100.0, 109.0, {"kind": "relative", "value": 0.1}, "reproduced"),
    (100.0, 111.0, {"kind": "relative", "value": 0.1}, "differs"),
    (100.0, None, {"kind": "relative", "value": 0.1}, "missing"),
])
def test_verdict_tolerances(reported, reproduced, tol, expected):
    assert r.verdict(reported, reproduced, tol)[0] == expected


def test_render_with_no_results_still_writes_every_file(tmp_path):
    man = [{"kind": "train", "rq": "rq1_scan", "path": str(tmp_path / "x.json"), "experiment": "x", "seed": 0}]
    runs = tmp_path / "runs.csv"
    g.gather(man).to_csv(runs, index=False)
    for rq in r.RQS:
        r.render(runs, tmp_path / rq, rq=rq, reference_path=REFERENCE)
        assert (tmp_path / rq / "table.md").exists()
    assert "missing" in (tmp_path / "rq1_scan/table.md").read_text()


def test_pareto_front():
    assert r.pareto_front([(100, 80), (200, 79), (150, 78), (100, 80.5)]) == [False, True, False, True]
