# The run table: the experiment sheet (one validated row per model configuration), the segmentation
# experiments of the config, and the one place where result paths are spelled.
import pandas as pd

_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _typed_row(row: dict) -> dict:
    """Sheet cells are text; give the schema typed values (empty cell = schema default)."""
    out = {}
    for key, value in row.items():
        value = str(value).strip()
        if value == "":
            continue
        if key in ("attention", "match_params"):
            value = _BOOL.get(value.lower(), value)
        elif key == "aux_tokens" and value.lstrip("-").isdigit():
            value = int(value)
        out[key] = value
    return out


def load_experiments(path):
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except FileNotFoundError:
        raise WorkflowError(f"config key 'experiments': sheet {path!r} not found")
    rows = []
    for index, raw in enumerate(sheet.to_dict("records")):
        row = _typed_row(raw)
        try:
            validate(row, "../schemas/experiments.schema.yaml")
        except WorkflowError as err:
            raise WorkflowError(f"experiment sheet {path}, data row {index + 1} "
                                f"({raw.get('experiment', '?')!r}): {err}")
        rows.append(row)
    ids = [r["experiment"] for r in rows]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise WorkflowError(f"experiment sheet {path}: duplicate experiment ids {dupes}")
    return {r["experiment"]: r for r in rows}


EXPERIMENTS = load_experiments(config["experiments"])
SEG = {e["experiment"]: e for e in config["rq5_seg"]["experiments"]} if config["rq5_seg"]["enabled"] else {}


wildcard_constraints:
    experiment="[a-z0-9_]+",
    seed=r"\d+",
    model="sf_mamba_[a-z0-9]+",
    fold=r"[0-9]+|auto",
    bs=r"\d+",
    res=r"\d+",
    family="sf|mv",


def seeds_of(exp):
    text = EXPERIMENTS[exp].get("seeds", "")
    return [int(s) for s in text.split(",")] if text else list(config["seeds"])


def experiments_of(rq):
    """Sheet rows tagged with research question `rq`, in sheet order."""
    return [e for e, row in EXPERIMENTS.items() if rq in row["rqs"].split(",")]


def fold_kwarg(fold):
    """The model's `fold` kwarg from a sheet cell, a config value or a wildcard: an int, or 'auto'."""
    return fold if fold == "auto" else int(fold)


def model_kwargs(row):
    """A sheet row's model kwargs, as `sf_mamba train/bench/probe` pass them to the model."""
    kwargs = {k: row[k] for k in ("scan", "attention", "aux_tokens", "aux_init", "aux_discard", "match_params")}
    return {**kwargs, "fold": fold_kwarg(row["fold"])}


# ---------------------------------------------------------------- result paths (one place)
def train_metrics(exp, seed):
    return f"results/runs/{exp}/seed{seed}/metrics.json"


def bench_json(exp):
    return f"results/bench/{exp}.json"


def flops_json(model, family):
    return f"results/flops/{model}_{family}.json"


def experiment_flops_json(exp):
    return f"results/flops/runs/{exp}.json"


def probe_json(exp):
    return f"results/rq3_aux/probe/{exp}/probe.json"


def fold_bench_json(model, fold, bs, res):
    return f"results/rq2_fold/bench/{model}/fold{fold}_bs{bs}_res{res}.json"


def seg_metrics(exp, seed):
    return f"results/seg/{exp}/seed{seed}/metrics.json"


FOLD_SWEEP = "results/rq2_fold/fold_sweep.json"
FOLD_LUT = "results/rq2_fold/fold_lut.json"
CLS_DATA = config["data"]["classification"]["dir"]
SEG_DATA = config["data"]["segmentation"]["dir"]


def cls_data_input(wildcards=None):
    return [CLS_DATA] if config["data"]["classification"]["dataset"] == "digits" else []


def seg_data_input(wildcards=None):
    return [SEG_DATA] if config["data"]["segmentation"]["dataset"] == "smoke" else []
