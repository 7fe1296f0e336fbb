# RQ3's future-context study: its sheet (one validated row per scan design), its result paths and
# its manifest entries (functions only: `snakemake --lint` wants rules in their own file,
# workflow/rules/future_context.smk). Registered as part of rq3_aux in common.smk.
FC = config["rq3_aux"]["future_context"]


def load_future_context_sheet(path):
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    except FileNotFoundError:
        raise WorkflowError(f"config key 'rq3_aux.future_context.sheet': {path!r} not found")
    rows = {}
    for index, raw in enumerate(sheet.to_dict("records")):
        row = _typed_row(raw)
        try:
            validate(row, "../schemas/future_context.schema.yaml")
        except WorkflowError as err:
            raise WorkflowError(f"future-context sheet {path}, data row {index + 1} "
                                f"({raw.get('experiment', '?')!r}): {err}")
        if row["experiment"] in rows:
            raise WorkflowError(f"future-context sheet {path}: duplicate experiment id {row['experiment']!r}")
        rows[row["experiment"]] = row
    return rows


def _future_context_experiments():
    if not FC["enabled"]:
        return {}
    sheet = load_future_context_sheet(FC["sheet"])
    if FC["experiments"] == ["all"]:
        return sheet
    unknown = [e for e in FC["experiments"] if e not in sheet]
    if unknown:
        raise WorkflowError(f"config key 'rq3_aux.future_context.experiments': {unknown} are not rows of "
                            f"{FC['sheet']} (rows: {sorted(sheet)})")
    return {e: sheet[e] for e in FC["experiments"]}


FC_EXPERIMENTS = _future_context_experiments()
FC_DESCRIPTION = ("experiment", "label", "scan", "attention", "aux_tokens", "aux_init", "match_params")


def fc_run_dir(exp, seed):
    return f"results/rq3_aux/future_context/{exp}/seed{seed}"


def fc_model_kwargs(exp):
    row = FC_EXPERIMENTS[exp]
    return {k: row[k] for k in ("scan", "attention", "aux_tokens", "aux_init", "match_params")}


def future_context_entries():
    """One `fc_train` entry per (design, seed): metrics.json, with the design's description."""
    return [{"kind": "fc_train", "path": f"{fc_run_dir(exp, seed)}/metrics.json", "seed": seed,
             "model": FC["model"], **{k: row[k] for k in FC_DESCRIPTION}}
            for exp, row in FC_EXPERIMENTS.items() for seed in FC["seeds"]]


FC_OUTPUTS = (["future_context.md", "future_context.tex", "future_context.csv", "future_context.png",
               "future_context.pdf", "verdicts.md"] if FC["enabled"] else [])
