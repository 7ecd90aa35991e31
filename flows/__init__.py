"""Prefect flows (orchestration edge). They import `mvot`; `mvot` never imports them.

Flows arrive with the training, evaluation and orchestration work; until then the data
stage runs through `dvc repro generate` (see dvc.yaml) or `mvot generate`.
"""
