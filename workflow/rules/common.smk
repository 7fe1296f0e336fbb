# The research questions: what each one expects, registered once. Every target, manifest and
# gather input is derived from this registry (no other list of results exists).
#
# A question's `entries()` lists every result file it expects, each a dict with `kind` (the result
# kind: sf_mamba/report/schema.py), `path` and the columns that describe it in runs.csv. From that
# ONE list come the question's manifest (results/<rq>/manifest.json), the files `gather` waits for,
# the target rule `<rq>` (Snakefile) and its render rule (report.smk). Questions are ordered by name.
#
# Adding a research question (docs/workflow.md, "Adding a research question"): put its rules in
# their own workflow/rules/<name>.smk, included from the Snakefile before report.smk, and register
# it at the end of this file with an entries function and a `research_question(...)` call.

RESEARCH_QUESTIONS = {}


def research_question(name, outputs, entries, sheet_rows=False):
    """Register research question `name`.

    outputs: file names that `sf_mamba report --rq <name>` writes under results/<name>/.
    entries: () -> list of manifest entries (dicts with at least `kind` and `path`).
    sheet_rows: True when rows of the experiment sheet may be tagged with `name` (column `rqs`).
    """
    if name in RESEARCH_QUESTIONS:
        raise WorkflowError(f"research question {name!r} is registered twice")
    caption = os.path.join(workflow.basedir, "workflow", "report", f"{name}.rst")
    if not os.path.exists(caption):  # found now, not by `snakemake --report` after the whole run
        raise WorkflowError(f"research question {name!r}: its report caption {caption} is missing")
    RESEARCH_QUESTIONS[name] = {"outputs": list(outputs), "entries": entries, "sheet_rows": sheet_rows}


def research_questions():
    return sorted(RESEARCH_QUESTIONS)


def manifest_entries(rq):
    """Every result the research question expects, with the description that goes into runs.csv.

    Gathering reads this list, not a file-system glob, so a run that is absent is reported as
    missing instead of silently dropped.
    """
    return [{**entry, "rq": rq} for entry in RESEARCH_QUESTIONS[rq]["entries"]()]


def gather_inputs(rqs):
    """The result files gathering waits for (none with report.allow_missing)."""
    if config["report"]["allow_missing"]:
        return []
    return sorted({e["path"] for rq in rqs for e in manifest_entries(rq)})


def rq_target(rq):
    return [f"results/{rq}/{name}" for name in RESEARCH_QUESTIONS[rq]["outputs"]]


def check_sheet_tags():
    """Every question a sheet row is tagged with must be registered and take sheet rows (checked
    once all rule files are included; a row nobody trains is an error, not a silent omission)."""
    takers = sorted(rq for rq, spec in RESEARCH_QUESTIONS.items() if spec["sheet_rows"])
    for exp, row in EXPERIMENTS.items():
        for tag in row["rqs"].split(","):
            if tag not in takers:
                raise WorkflowError(f"experiment sheet {config['experiments']}, row {exp!r}: rqs names "
                                    f"{tag!r}, which is not a research question of sheet rows {takers}")


# ---------------------------------------------------------------- entries shared by questions
SHEET_COLUMNS = ("experiment", "model", "label", "family", "scan", "attention", "aux_tokens", "aux_init",
                 "aux_discard", "match_params", "fold", "reference")


def sheet_entries(rq, *per_experiment):
    """Entries for the sheet rows tagged `rq`: one `train` entry per seed, then, per row, the
    entries of each `per_experiment(exp, description)` function (a benchmark, a probe, ...)."""
    entries = []
    for exp in experiments_of(rq):
        desc = {k: EXPERIMENTS[exp][k] for k in SHEET_COLUMNS}
        entries += [{"kind": "train", "path": train_metrics(exp, s), "seed": s, **desc} for s in seeds_of(exp)]
        for extra in per_experiment:
            entries += extra(exp, desc)
    return entries


def bench_entries(exp, desc):
    return [{"kind": "bench", "path": bench_json(exp), **desc}] if config["bench"]["enabled"] else []


def experiment_flops_entries(exp, desc):
    """Params and MACs of a sheet row's model (counted by `sf_mamba flops`, not by the trainer)."""
    return [{"kind": "flops", "path": experiment_flops_json(exp), **desc}]


# ---------------------------------------------------------------- RQ1: scan designs
research_question(
    "rq1_scan",
    outputs=["table.md", "table.tex", "table.csv", "accuracy_throughput.png", "accuracy_throughput.pdf"],
    entries=lambda: sheet_entries("rq1_scan", bench_entries, experiment_flops_entries),
    sheet_rows=True,
)


# ---------------------------------------------------------------- RQ2: batch folding
def fold_entries():
    entries = [{"kind": "fold_sweep", "path": FOLD_SWEEP}]
    b = config["rq2_fold"]["bench"]
    for model in b["models"]:
        for fold in b["folds"]:
            for bs in b["batch_sizes"]:
                for res in b["img_sizes"]:
                    entries.append({"kind": "bench", "path": fold_bench_json(model, fold, bs, res),
                                    "model": model, "fold": str(fold), "batch_size": bs, "img_size": res,
                                    "experiment": f"{model}_fold{fold}"})
    return entries


research_question(
    "rq2_fold",
    outputs=["table.md", "table.tex", "table.csv", "speedup.png", "speedup.pdf"],
    entries=fold_entries,
)


# ---------------------------------------------------------------- RQ3: aux tokens
def probe_entries(exp, desc):
    return [{"kind": "probe", "path": probe_json(exp), **desc}] if config["rq3_aux"]["probe"] else []


research_question(
    "rq3_aux",
    # + the future-context study (workflow/rules/future_context*.smk)
    outputs=["table.md", "table.tex", "table.csv", "aux.png", "aux.pdf", *FC_OUTPUTS],
    entries=lambda: sheet_entries("rq3_aux", probe_entries) + future_context_entries(),
    sheet_rows=True,
)


# ---------------------------------------------------------------- RQ4: model sizes
# Counted for every size of rq4_sizes.flops_models: SF-Mamba and MambaVision (= scan uni, no aux).
FLOPS_FAMILIES = {
    "sf": {"family": "SF-Mamba", "reference": "sf_mamba", "kwargs": {"scan": "swap", "aux_tokens": 2}},
    "mv": {"family": "MambaVision", "reference": "mambavision", "kwargs": {"scan": "uni", "aux_tokens": 0}},
}


def flops_entries():
    entries = []
    for model in config["rq4_sizes"]["flops_models"]:
        size = model.replace("sf_mamba_", "")
        for fam, spec in FLOPS_FAMILIES.items():
            entries.append({"kind": "flops", "path": flops_json(model, fam), "model": model,
                            "family": spec["family"], "scan": spec["kwargs"]["scan"],
                            "experiment": f"{fam}_{size}", "reference": f"{spec['reference']}_{size}"})
    return entries


research_question(
    "rq4_sizes",
    outputs=["table.md", "table.tex", "table.csv", "pareto.png", "pareto.pdf"],
    entries=lambda: sheet_entries("rq4_sizes", bench_entries) + flops_entries(),
    sheet_rows=True,
)


# ---------------------------------------------------------------- RQ5: dense prediction
def seg_entries():
    return [{"kind": "seg", "path": seg_metrics(exp, seed), "seed": seed, "experiment": exp,
             "label": spec.get("label", exp), "reference": spec.get("reference", "")}
            for exp, spec in SEG.items() for seed in config["rq5_seg"]["seeds"]]


research_question("rq5_seg", outputs=["table.md", "table.tex", "table.csv"], entries=seg_entries)

# RQ5, detection: entries and rules in workflow/rules/detection.smk
research_question("rq5_det", outputs=["table.md", "table.tex", "table.csv"], entries=lambda: det_entries())
