"""One schema per result kind: what each producer writes, and exactly what ``sf_mamba gather`` reads.

A manifest entry names a result file and its ``kind``; the kind's schema says how the file is laid
out, which keys every record must hold, and which single key each canonical runs.csv column comes
from. Nothing else is guessed: there are no alternative spellings, and a file without its required
keys is gathered as ``status = "invalid: ..."`` (shown as not measured), never silently read.

Layouts:

- ``flat``: the file is one mapping of metrics (one row); provenance sits beside it in ``meta.json``;
- ``results``: ``{"results": [record, ...], "meta": {...}}`` (one row per record);
- ``summary``: ``{"summary": [record, ...], "entries": [...], "meta": {...}}`` (one row per record);
- ``rows``: ``{"protocol": {...}, "rows": [record, ...]}`` (one row per record; the protocol's keys
  become ``protocol.*`` columns).

Nested mappings are flattened to ``a.b`` column names; ``meta.*`` columns are the provenance
(git sha, config hash, versions, device, Slurm job) from the file's ``meta`` or the ``meta.json``
beside it. Canonical columns (what the renderers use): ``params_m`` (millions), ``macs_g``
(billions of multiply-accumulates, MambaVision's "FLOPs"), ``throughput`` (img/s), ``miou`` (%),
``device`` (where it was measured). This module imports neither torch nor the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAYOUTS = ("flat", "results", "summary", "rows")
# the research questions: one workflow target and one renderer each (sf_mamba report --rq)
RQS = ("rq1_scan", "rq2_fold", "rq3_aux", "rq4_sizes", "rq5_seg", "rq5_det")


@dataclass(frozen=True)
class ResultSchema:
    kind: str
    producer: str                    # the command that writes it
    layout: str                      # one of LAYOUTS
    required: tuple[str, ...]        # keys of every record (flattened names)
    columns: dict[str, tuple[str, float]] = field(default_factory=dict)  # canonical -> (source key, divisor)
    description: str = ""


_DEVICE_OF_RUN = ("meta.device.device_name", 1.0)   # from the meta.json beside a run's metrics.json

SCHEMAS: dict[str, ResultSchema] = {s.kind: s for s in (
    ResultSchema(
        "train", "sf_mamba train (run_dir/metrics.json)", "flat",
        required=("top1", "top5", "loss", "params"),
        columns={"params_m": ("params", 1e6), "device": _DEVICE_OF_RUN},
        description="final validation top-1/top-5 (%) and loss of the raw model (ema_* for the EMA), "
                    "params, epochs, global_steps, best_top1/best_epoch, config_sha256, seed, wall_time_s"),
    ResultSchema(
        "eval", "sf_mamba eval --out", "flat",
        required=("model", "top1", "top5", "loss", "count"),
        description="top-1/top-5 (%), mean loss and image count of one checkpoint, its data_config"),
    ResultSchema(
        "bench", "sf_mamba bench --out", "results",
        required=("model", "throughput", "batch_size", "device_name"),
        columns={"throughput": ("throughput", 1.0), "params_m": ("params", 1e6), "device": ("device_name", 1.0)},
        description="img/s (median of the timed windows; throughput_min/max/all), batch_size, dtype, "
                    "channels_last, warmup, iters, repeats, device_name, params, model_kwargs"),
    ResultSchema(
        "flops", "sf_mamba flops --out", "results",
        required=("model", "params", "macs"),
        columns={"params_m": ("params", 1e6), "macs_g": ("macs", 1e9)},
        description="params; macs (MambaVision's convention: convolutions and linears); attention_macs, "
                    "scan_flops (selective scan, counted apart), input_size, convention"),
    ResultSchema(
        "probe", "sf_mamba probe --out-dir (probe.json)", "summary",
        required=("label", "scan", "future_mass_ratio"),
        description="per probed model: future/far-future/past/self mass ratios of the input gradient"),
    ResultSchema(
        "fold_sweep", "sf_mamba fold-sweep --out", "rows",
        required=("batch", "length", "fold", "time_ms", "speedup_vs_fold1", "equal"),
        columns={"device": ("protocol.device", 1.0)},
        description="per (batch, length, channels, fold): median scan time, speed-up vs fold 1, "
                    "max_abs_diff and equal (fold invariance)"),
    ResultSchema(
        "seg", "sf_mamba seg-train / seg-test (work_dir/metrics.json)", "flat",
        required=("mIoU", "mAcc", "aAcc"),
        columns={"miou": ("mIoU", 1.0), "params_m": ("params", 1e6), "macs_g": ("macs", 1e9),
                 "device": _DEVICE_OF_RUN},
        description="mIoU/mAcc/aAcc (%), params, params_backbone, macs at macs_input_shape "
                    "(sf_mamba.bench.flops), iter/max_iters, all_metrics"),
    ResultSchema(
        "det", "sf_mamba det-train / det-test (work_dir/metrics.json)", "flat",
        required=("box_ap", "mask_ap"),
        columns={"params_m": ("params", 1e6), "device": _DEVICE_OF_RUN},
        description="COCO box/mask AP (%) and their _50/_75/_s/_m/_l variants, params, iter/max_iters; "
                    "a run the pipeline could not make holds skipped: <reason> (gathered as status "
                    "'skipped')"),
    ResultSchema(
        "fc_train", "sf_mamba fc-train (run_dir/metrics.json)", "flat",
        required=("overall.miou", "overall.pixel_acc", "params"),
        columns={"params_m": ("params", 1e6), "device": _DEVICE_OF_RUN},
        description="future-context task: region scores (overall/top/bottom: miou, pixel_acc, ...) after "
                    "training and at init (init.*), params, train.* (epochs, steps, wall_s), probe.*"),
)}
KINDS = tuple(SCHEMAS)
CANONICAL_COLUMNS = ("params_m", "macs_g", "throughput", "miou", "device")
