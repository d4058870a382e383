"""Checks: compare runner A with runner B on the same inputs, measure, and write reports.

    measures  one definition of cosine, agreement and latency percentiles
    machine   what a report or benchmark ran on (CPU model and int8 flags, GPU, versions, load)
    report    the one writer of `reports/NAME.{json,md}` and its PNG plots
    parity    the fp32 graphs (onnxruntime) against the PyTorch model, stage by stage
    variants  every precision of a bundle against the float model on the evaluation split
"""
