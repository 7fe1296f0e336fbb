"""Run ``sf_mamba`` subcommands as submitit jobs (Slurm, local subprocess or in-process debug)."""
