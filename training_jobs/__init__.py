"""Code that runs on the GPU nodes: a LLaVA-style model, soft packing, and the three GMAI-VL training stages.

Plain Python (torch, transformers, deepspeed); it reports back to Dagster only through `dagster-pipes`,
so the same package runs under Dagster, under Slurm, or by hand (`python -m training_jobs.train --help`).
"""
