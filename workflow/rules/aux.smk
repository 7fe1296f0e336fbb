# RQ3: aux tokens (count, initialisation, discard point) and the information-flow probe.
# The trained runs come from the `train` rule (rows of the sheet tagged rq3_aux); the probe asks
# whether a token's output depends on tokens later in the scan order.


rule probe:
    output:
        json=probe_json("{experiment}"),
        png=report("results/rq3_aux/probe/{experiment}/erf.png", caption="../report/probe.rst",
                   category="rq3_aux", subcategory="probe"),
    params:
        model=lambda wc: EXPERIMENTS[wc.experiment]["model"],
        scan=lambda wc: EXPERIMENTS[wc.experiment]["scan"],
        kwargs=lambda wc: kwargs_json({k: v for k, v in model_kwargs(EXPERIMENTS[wc.experiment]).items()
                                       if k not in ("scan", "attention")}),
        img_size=config["rq3_aux"]["probe_img_size"],
        out_dir=lambda wc, output: os.path.dirname(output.json),
    threads: 1
    log:
        "logs/rq3_aux/probe/{experiment}.log",
    conda:
        "../envs/sf_mamba.yaml"
    # Attention sees every token of its window, so it would hide what the scan routes: the probe
    # measures the scan's information flow with the attention blocks replaced by Mamba blocks.
    shell:
        "OMP_NUM_THREADS={threads} sf_mamba probe --model {params.model} --scan {params.scan}"
        " --attention off --model-kwargs {params.kwargs} --img-size {params.img_size}"
        " --out-dir {params.out_dir} > {log} 2>&1"
