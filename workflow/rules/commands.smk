# Command lines of the rules: `sf_mamba` arguments built from the config and the run table.
# params: hold only content (what is computed); executor settings are built inside `run:` at run
# time so that moving from a laptop to a cluster never counts as a changed experiment.
import shlex


def shell_join(items):
    return " ".join(shlex.quote(str(i)) for i in items)


def shell_literal(command):
    """A finished command for shell() inside run:, which formats {...} once more."""
    return command.replace("{", "{{").replace("}", "}}")


def kwargs_json(kwargs):
    """Model kwargs as the JSON that `sf_mamba bench/flops/probe --model-kwargs` take."""
    return shlex.quote(json.dumps(kwargs, sort_keys=True, separators=(",", ":")))


def write_text(path, text):
    with open(path, "w") as fh:
        fh.write(f"{text}\n")


# ---------------------------------------------------------------- training
SHIPPED_RECIPES = os.path.join(workflow.basedir, "sf_mamba", "configs", "train")


def recipe_path(exp):
    """The recipe file of a sheet row (an input: editing it retrains)."""
    recipe_dir = config["train"]["recipe_dir"] or SHIPPED_RECIPES
    return os.path.relpath(os.path.join(recipe_dir, f"{EXPERIMENTS[exp]['recipe']}.yaml"))


def recipe_arg(exp):
    """What `sf_mamba train --config` gets: a shipped recipe by name (the installed package resolves
    it, wherever the workflow runs), or the file in train.recipe_dir."""
    return recipe_path(exp) if config["train"]["recipe_dir"] else EXPERIMENTS[exp]["recipe"]


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


# ---------------------------------------------------------------- the submitit launcher
def launch_flags(res_cfg):
    """`sf_mamba launch` executor flags; site values (account, partition) come from the config."""
    c = config["cluster"]
    flags = [f"--cluster {c['executor']}", f"--timeout-min {res_cfg['time_min']}",
             f"--gpus {res_cfg['gpus']}", f"--nodes {res_cfg['nodes']}", f"--cpus {res_cfg['cpus']}",
             f"--mem-gb {res_cfg['mem_gb']}", f"--max-num-timeout {c['max_num_timeout']}", f"--poll-s {c['poll_s']}"]
    for key in ("partition", "account", "qos", "gres"):
        value = c[f"slurm_{key}"]
        if value:
            flags.append(f"--{key} {value}")
    return " ".join(flags)


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


# ---------------------------------------------------------------- segmentation
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


# ---------------------------------------------------------------- benchmarks
def bench_flags(b):
    """`sf_mamba bench` protocol flags from the config's bench section."""
    flags = [f"--batch {b['batch_size']}", f"--warmup {b['warmup']}", f"--iters {b['iters']}",
             f"--repeats {b['repeats']}", f"--dtype {'float16' if b['amp'] else 'float32'}"]
    if b["device"] != "auto":
        flags.append(f"--device {b['device']}")
    if not b["channels_last"]:
        flags.append("--no-channels-last")
    return " ".join(flags)


# ---------------------------------------------------------------- the report

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
