# RQ5, detection: the run table and command lines of workflow/rules/detection.smk (functions here,
# rules there, as Snakemake's lint asks).
import glob
import importlib.util

DET = {e["experiment"]: e for e in config["rq5_det"]["experiments"]} if config["rq5_det"]["enabled"] else {}
DET_DATA = config["data"]["detection"]["dir"]


def det_metrics(exp, seed):
    return f"results/det/{exp}/seed{seed}/metrics.json"


def det_data_input(wildcards=None):
    return [DET_DATA] if config["data"]["detection"]["dataset"] == "smoke" else []


def mmcv_has_compiled_ops():
    """Whether mmcv's compiled extension is installed, from the files alone (no import of mmcv or
    torch at DAG-parse time). A broken extension passes here; det-train's own check then skips."""
    spec = importlib.util.find_spec("mmcv")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return any(glob.glob(os.path.join(root, "_ext*.so")) or glob.glob(os.path.join(root, "_ext*.pyd"))
               for root in roots)


DET_OPS = "compiled" if mmcv_has_compiled_ops() else "missing"


def det_entries():
    return [{"kind": "det", "path": det_metrics(exp, seed), "seed": seed, "experiment": exp,
             "label": spec.get("label", exp), "reference": spec.get("reference", "")}
            for exp, spec in DET.items() for seed in config["rq5_det"]["seeds"]]


def det_pretrain_input(wildcards):
    """The ImageNet run a detection experiment starts from (its declared metrics.json)."""
    spec = DET[wildcards.experiment]
    if not spec.get("pretrain"):
        return []
    if spec["pretrain"] not in EXPERIMENTS:
        raise WorkflowError(f"rq5_det experiment {wildcards.experiment!r}: pretrain "
                            f"{spec['pretrain']!r} is not an experiment of {config['experiments']}")
    return [train_metrics(spec["pretrain"], spec["pretrain_seed"])]


def det_command(wildcards, input, params, threads, log):
    if params.ops != "compiled":
        # no compiled ops: det-train writes the skipped record (with the reason) itself, at once
        return shell_literal(
            f"sf_mamba det-train --config {input.cfg} --work-dir {params.run_dir} --skip-without-ops"
            f" > {log} 2>&1")
    flags = launch_flags(config["rq5_det"]["resources"])
    options = params.options
    if input.pretrain:
        options += f" model.backbone.pretrained={pretrained_checkpoint(input.pretrain[0])}"
    return shell_literal(
        f"{thread_env(threads)}sf_mamba launch {flags} --run-dir {params.run_dir}"
        f" --hash-file {input.cfg} --job-name det_{wildcards.experiment}_s{wildcards.seed}"
        f" -- det-train --config {input.cfg} --work-dir '{{work_dir}}' {params.data_root}"
        f" --cfg-options {options} > {log} 2>&1"
    )
