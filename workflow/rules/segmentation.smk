# RQ5: ADE20K UperNet (paper config) or the offline segmentation smoke (default config).
# Training goes through the submitit launcher like classification; only metrics.json is declared.


rule seg_train:
    input:
        cfg=lambda wc: SEG[wc.experiment]["config"],
        data=seg_data_input,
        pretrain=seg_pretrain_input,
    output:
        seg_metrics("{experiment}", "{seed}"),
    params:
        run_dir=lambda wc, output: os.path.dirname(output[0]),
        options=lambda wc: shell_join(
            SEG[wc.experiment].get("cfg_options", []) + [f"randomness.seed={wc.seed}"]
            + list(config["rq5_seg"]["cfg_options"])
        ),
        data_root=lambda wc: f"--data-root {SEG_DATA}",
    threads: waiter_threads(config["rq5_seg"]["resources"])
    resources:
        gpu=config["rq5_seg"]["resources"]["gpus"],
        launch_slots=1,
    log:
        "logs/seg/{experiment}/seed{seed}.log",
    localrule: True
    run:
        shell(seg_command(wildcards, input, params, threads, log))
