# Validation, the run table and input functions. Everything the rules need is computed here from
# the validated config and experiment sheet; no rule imports model code.
import json
import os
import sys

import pandas as pd
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

def _coerce_cli_scalars(value, schema, defs):
    """`--config a={'b': true}` delivers nested scalars as text; type them as the schema says."""
    if "$ref" in schema:
        schema = {**defs.get(schema["$ref"].split("/")[-1], {}), **schema}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce_cli_scalars(v, props.get(k, {}), defs) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_cli_scalars(v, schema.get("items", {}), defs) for v in value]
    if isinstance(value, str):
        kind = schema.get("type")
        if kind == "boolean" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind in ("integer", "number"):
            try:
                return int(value) if kind == "integer" else float(value)
            except ValueError:
                return value
    return value


with open(os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")) as _fh:
    _schema = yaml.safe_load(_fh)
config.update(_coerce_cli_scalars(dict(config), _schema, _schema.get("$defs", {})))
validate(config, "../schemas/config.schema.yaml")


def _put_own_bin_first_on_path():
    """Rules call `sf_mamba`; run from an unactivated venv, find it beside this Python."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bindir, "sf_mamba")) and bindir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, path])


_put_own_bin_first_on_path()

RQS = ["rq1_scan", "rq2_fold", "rq3_aux", "rq4_sizes", "rq5_seg"]
CLS_RQS = ["rq1_scan", "rq3_aux", "rq4_sizes"]
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
    rq="|".join(RQS),
    model="sf_mamba_[a-z0-9]+",
    fold=r"[0-9]+|auto",
    bs=r"\d+",
    res=r"\d+",
    family="sf|mv",


def seeds_of(exp):
    text = EXPERIMENTS[exp].get("seeds", "")
    return [int(s) for s in text.split(",")] if text else list(config["seeds"])


def experiments_of(rq):
    return [e for e, row in EXPERIMENTS.items() if rq in row["rqs"].split(",")]


# ---------------------------------------------------------------- result paths (one place)
def train_metrics(exp, seed):
    return f"results/runs/{exp}/seed{seed}/metrics.json"


def bench_json(exp):
    return f"results/bench/{exp}.json"


def flops_json(model, family):
    return f"results/flops/{model}_{family}.json"


def probe_json(exp):
    return f"results/rq3_aux/probe/{exp}/probe.json"


def fold_bench_json(model, fold, bs, res):
    return f"results/rq2_fold/bench/{model}/fold{fold}_bs{bs}_res{res}.json"


def seg_metrics(exp, seed):
    return f"results/seg/{exp}/seed{seed}/metrics.json"


FOLD_SWEEP = "results/rq2_fold/fold_sweep.json"
CLS_DATA = config["data"]["classification"]["dir"]
SEG_DATA = config["data"]["segmentation"]["dir"]


# ---------------------------------------------------------------- training arguments
def recipe_path(exp):
    return os.path.join(config["train"]["recipe_dir"], f"{EXPERIMENTS[exp]['recipe']}.yaml")


def recipe_chain(path):
    """The recipe and its `_base_` files: all of them are inputs (an edit retrains)."""
    chain, todo = [], [path]
    while todo:
        current = todo.pop()
        if current in chain or not os.path.exists(current):
            continue
        chain.append(current)
        with open(current) as fh:
            base = (yaml.safe_load(fh) or {}).get("_base_")
        for b in [base] if isinstance(base, str) else (base or []):
            todo.append(os.path.normpath(os.path.join(os.path.dirname(current), b)))
    return sorted(chain)


def model_kwargs(row):
    fold = row["fold"]
    return {
        "scan": row["scan"],
        "attention": row["attention"],
        "aux_tokens": row["aux_tokens"],
        "aux_init": row["aux_init"],
        "aux_discard": row["aux_discard"],
        "match_params": row["match_params"],
        "fold": fold if fold == "auto" else int(fold),
    }


def kwargs_json(kwargs):
    """Model kwargs as the JSON that `sf_mamba bench/flops/probe --model-kwargs` take."""
    import shlex

    return shlex.quote(json.dumps(kwargs, sort_keys=True, separators=(",", ":")))


def _yaml_scalar(value):
    return json.dumps(value) if not isinstance(value, str) else value


def train_overrides(exp, seed):
    """key=value list for `sf_mamba train --set` (content only: no paths that move, no volatile values)."""
    row = EXPERIMENTS[exp]
    sets = [f"model.name={row['model']}"]
    sets += [f"model.kwargs.{k}={_yaml_scalar(v)}" for k, v in model_kwargs(row).items()]
    sets += [f"data.dir={CLS_DATA}", f"train.seed={seed}"]
    sets += list(config["train"]["overrides"])
    sets += [s.strip() for s in row.get("overrides", "").split(";") if s.strip()]
    return sets


def launch_flags(res_cfg):
    """`sf_mamba launch` executor flags; site values (account, partition) come from the config."""
    c = config["cluster"]
    flags = [f"--cluster {c['executor']}", f"--timeout-min {res_cfg['time_min']}",
             f"--gpus {res_cfg['gpus']}", f"--nodes {res_cfg['nodes']}", f"--cpus {res_cfg['cpus']}", f"--mem-gb {res_cfg['mem_gb']}",
             f"--max-num-timeout {c['max_num_timeout']}", f"--poll-s {c['poll_s']}"]
    for key in ("partition", "account", "qos", "gres"):
        value = c[f"slurm_{key}"]
        if value:
            flags.append(f"--{key} {value}")
    return " ".join(flags)


def shell_join(items):
    import shlex

    return " ".join(shlex.quote(str(i)) for i in items)


# ---------------------------------------------------------------- what each research question needs
def rq_inputs(rq):
    """Result files of one research question (the runs behind its tables and figures)."""
    files = []
    if rq in CLS_RQS:
        for exp in experiments_of(rq):
            files += [train_metrics(exp, s) for s in seeds_of(exp)]
            if config["bench"]["enabled"] and rq in ("rq1_scan", "rq4_sizes"):
                files.append(bench_json(exp))
            if rq == "rq3_aux" and config["rq3_aux"]["probe"]:
                files.append(probe_json(exp))
    if rq == "rq4_sizes":
        files += [flops_json(m, f) for m in config["rq4_sizes"]["flops_models"] for f in ("sf", "mv")]
    if rq == "rq2_fold":
        files.append(FOLD_SWEEP)
        b = config["rq2_fold"]["bench"]
        files += [fold_bench_json(m, f, bs, r) for m in b["models"] for f in b["folds"]
                  for bs in b["batch_sizes"] for r in b["img_sizes"]]
    if rq == "rq5_seg":
        files += [seg_metrics(e, s) for e in SEG for s in config["rq5_seg"]["seeds"]]
    return files


def manifest_entries(rq):
    """Every result the research question expects, with the sheet's description of it.

    Gathering reads this list, not a file-system glob, so a run that is absent is reported as
    missing instead of silently dropped.
    """
    entries = []
    if rq in CLS_RQS:
        for exp in experiments_of(rq):
            row = EXPERIMENTS[exp]
            desc = {k: row[k] for k in ("experiment", "model", "label", "family", "scan", "attention",
                                        "aux_tokens", "aux_init", "aux_discard", "match_params",
                                        "fold", "reference")}
            for s in seeds_of(exp):
                entries.append({"kind": "train", "rq": rq, "path": train_metrics(exp, s), "seed": s, **desc})
            if config["bench"]["enabled"] and rq in ("rq1_scan", "rq4_sizes"):
                entries.append({"kind": "bench", "rq": rq, "path": bench_json(exp), **desc})
            if rq == "rq3_aux" and config["rq3_aux"]["probe"]:
                entries.append({"kind": "probe", "rq": rq, "path": probe_json(exp), **desc})
    if rq == "rq4_sizes":
        for m in config["rq4_sizes"]["flops_models"]:
            for fam, family, scan in (("sf", "SF-Mamba", "swap"), ("mv", "MambaVision", "uni")):
                size = m.replace("sf_mamba_", "")
                entries.append({"kind": "flops", "rq": rq, "path": flops_json(m, fam), "model": m,
                                "family": family, "scan": scan, "experiment": f"{fam}_{size}",
                                "reference": f"mambavision_{size}" if fam == "mv" else f"sf_mamba_{size}"})
    if rq == "rq2_fold":
        entries.append({"kind": "fold_sweep", "rq": rq, "path": FOLD_SWEEP})
        b = config["rq2_fold"]["bench"]
        for m in b["models"]:
            for f in b["folds"]:
                for bs in b["batch_sizes"]:
                    for r in b["img_sizes"]:
                        entries.append({"kind": "bench", "rq": rq, "path": fold_bench_json(m, f, bs, r),
                                        "model": m, "fold": str(f), "batch_size": bs, "img_size": r,
                                        "experiment": f"{m}_fold{f}"})
    if rq == "rq5_seg":
        for e, spec in SEG.items():
            for s in config["rq5_seg"]["seeds"]:
                entries.append({"kind": "seg", "rq": rq, "path": seg_metrics(e, s), "seed": s,
                                "experiment": e, "label": spec.get("label", e),
                                "reference": spec.get("reference", "")})
    return entries


def gather_inputs(rqs):
    if config["report"]["allow_missing"]:
        return []
    return sorted({f for rq in rqs for f in rq_inputs(rq)})


RQ_OUTPUTS = {
    "rq1_scan": ["table.md", "table.tex", "table.csv", "accuracy_throughput.png", "accuracy_throughput.pdf"],
    "rq2_fold": ["table.md", "table.tex", "table.csv", "speedup.png", "speedup.pdf"],
    "rq3_aux": ["table.md", "table.tex", "table.csv", "aux.png", "aux.pdf"],
    "rq4_sizes": ["table.md", "table.tex", "table.csv", "pareto.png", "pareto.pdf"],
    "rq5_seg": ["table.md", "table.tex", "table.csv"],
}
REPORT_OUTPUTS = (
    [f"{rq}/{name}" for rq in RQS for name in RQ_OUTPUTS[rq]]
    + ["reproduction.md", "reproduction.tex", "reproduction.csv", "README.md"]
)


def rq_target(rq):
    return [f"results/{rq}/{name}" for name in RQ_OUTPUTS[rq]]


def waiter_threads(res_cfg):
    """Local cores held by a launcher job (its CPUs when it runs here; 1 when it waits on Slurm)."""
    return 1 if config["cluster"]["executor"] == "slurm" else res_cfg["cpus"]


def thread_env(threads):
    """OMP_NUM_THREADS for jobs that run on this machine; Slurm jobs inherit the submitting
    environment (sbatch --export=ALL), so a waiter's 1 thread must not leak into them."""
    return "" if config["cluster"]["executor"] == "slurm" else f"OMP_NUM_THREADS={threads} "


def train_command(wildcards, input, params, threads, log):
    """`sf_mamba launch ... -- train ...`; built at run time so executor settings are not params."""
    flags = launch_flags(config["train"]["resources"])
    hashes = " ".join(f"--hash-file {f}" for f in input.recipe)
    return shell_literal(
        f"{thread_env(threads)}sf_mamba launch {flags} --run-dir {params.run_dir} {hashes}"
        f" --job-name train_{wildcards.experiment}_s{wildcards.seed}"
        f" -- train --config {params.recipe} --run-dir '{{work_dir}}' {params.sets} > {log} 2>&1"
    )


def seg_pretrain_input(wildcards):
    """The ImageNet run a segmentation experiment starts from (its declared metrics.json)."""
    spec = SEG[wildcards.experiment]
    if not spec.get("pretrain"):
        return []
    if spec["pretrain"] not in EXPERIMENTS:
        raise WorkflowError(f"rq5_seg experiment {wildcards.experiment!r}: pretrain "
                            f"{spec['pretrain']!r} is not an experiment of {config['experiments']}")
    return [train_metrics(spec["pretrain"], spec["pretrain_seed"])]


def pretrained_checkpoint(metrics_path):
    """checkpoints/last.pth of a finished run, found through the launcher's launch.json.

    Read at run time, not in params: where a checkpoint lives is not part of the experiment."""
    record = json.load(open(os.path.join(os.path.dirname(metrics_path), "launch.json")))
    path = os.path.join(record["work_dir"], "checkpoints", "last.pth")
    if not os.path.exists(path):
        raise WorkflowError(f"pretraining checkpoint {path} is missing (run of {metrics_path})")
    return path


def seg_command(wildcards, input, params, threads, log):
    flags = launch_flags(config["rq5_seg"]["resources"])
    options = params.options
    if input.pretrain:
        options += f" model.backbone.pretrained={pretrained_checkpoint(input.pretrain[0])}"
    return shell_literal(
        f"{thread_env(threads)}sf_mamba launch {flags} --run-dir {params.run_dir}"
        f" --hash-file {input.cfg} --job-name seg_{wildcards.experiment}_s{wildcards.seed}"
        f" -- seg-train --config {input.cfg} --work-dir '{{work_dir}}' {params.data_root}"
        f" --cfg-options {options} > {log} 2>&1"
    )


def shell_literal(command):
    """A finished command for shell() inside run:, which formats {...} once more."""
    return command.replace("{", "{{").replace("}", "}}")


def write_text(path, text):
    with open(path, "w") as fh:
        fh.write(f"{text}\n")


def cls_data_input(wildcards=None):
    return [CLS_DATA] if config["data"]["classification"]["dataset"] == "digits" else []


def seg_data_input(wildcards=None):
    return [SEG_DATA] if config["data"]["segmentation"]["dataset"] == "smoke" else []


def bench_flags(b):
    """`sf_mamba bench` protocol flags from the config's bench section."""
    flags = [f"--batch {b['batch_size']}", f"--warmup {b['warmup']}", f"--iters {b['iters']}",
             f"--repeats {b['repeats']}", f"--dtype {'float16' if b['amp'] else 'float32'}"]
    if b["device"] != "auto":
        flags.append(f"--device {b['device']}")
    if not b["channels_last"]:
        flags.append("--no-channels-last")
    return " ".join(flags)


FLOPS_KWARGS = {"sf": {"scan": "swap", "aux_tokens": 1}, "mv": {"scan": "uni", "aux_tokens": 0}}


def report_flag(path, rq):
    """Figures and CSV tables go into `snakemake --report`, with a caption per research question."""
    if path.endswith((".png", ".csv")):
        return report(path, caption=f"../report/{rq}.rst", category=rq)
    return path


HTML_REPORT = "results/report/report.html"


def build_html_report(log=None):
    """After a run that (re)made results/report/, also write the `snakemake --report` HTML.

    Runs in the main Snakemake process only (not in spawned job processes), from the effective
    config of this run, so the HTML shows exactly the results of this configuration.
    """
    import subprocess
    import tempfile

    readme = "results/report/README.md"
    if not workflow.is_main_process or not os.path.exists(readme):
        return
    if os.path.exists(HTML_REPORT) and os.path.getmtime(HTML_REPORT) >= os.path.getmtime(readme):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", workflow.main_snakefile,
           "--configfile", fh.name, "--nolock", "--report", HTML_REPORT]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    os.unlink(fh.name)
    if proc.returncode != 0:
        print(f"snakemake --report failed (the results are complete; rerun it by hand):\n{proc.stderr[-2000:]}")
    else:
        print(f"HTML report: {HTML_REPORT}")
