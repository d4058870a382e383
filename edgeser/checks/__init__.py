"""Checks: compare runner A with runner B on the same inputs and say whether B still behaves like A.

    compare    stage-by-stage comparison of two runs of one StageGraph (Polygraphy's comparator shape)
    reference  the PyTorch float pipeline a bundle came from (the reference runner)
    parity     the fp32 graphs (onnxruntime) against the PyTorch model, stage by stage
    fidelity   every precision of a bundle against the float model on the evaluation split (`check variants`)

The measures live in `edgeser.measures` / `edgeser.metrics`, the report writer in `edgeser.reports`, and the
accuracy-controlled quantiser in `edgeser.quantize.controlled`.
"""
