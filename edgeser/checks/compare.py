"""Runner A against runner B on the same inputs (Polygraphy's comparator shape), one stage at a time.

The reference run gives every stage's inputs; each candidate stage is fed exactly those, so damage is
attributed to the stage that causes it. Outputs are compared over valid frames and tokens only (batch 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgeser.measures import CosineStats
from edgeser.stages import (
    AUDIO_ENCODER,
    CTC_HEAD,
    FUSION_HEAD,
    TEXT_ENCODER,
    StageGraph,
    StageRun,
    StageRunner,
)

# The output of each stage that is compared.
PRIMARY = {
    AUDIO_ENCODER: "features",
    CTC_HEAD: "log_probs",
    TEXT_ENCODER: "token_features",
    FUSION_HEAD: "logits",
}


def valid_part(stage: str, array: np.ndarray, reference: StageRun) -> np.ndarray:
    """The clip's valid frames (audio encoder, CTC head) or tokens (text encoder) of a batch-1 output."""
    if stage in (AUDIO_ENCODER, CTC_HEAD):
        return array[0, : int(reference.frame_lengths[0])]
    if stage == TEXT_ENCODER:
        mask = reference.attention_mask
        return array[0, : int(mask[0].sum())] if mask is not None else array[0]
    return array


def compare_stages(
    graph: StageGraph,
    candidate: Mapping[str, StageRunner],
    reference: StageRun,
    stats: Mapping[str, CosineStats],
    candidate_run: StageRun | None = None,
) -> None:
    """Each stage of `candidate` fed the reference's inputs, compared with the reference's outputs.

    `candidate_run` (the candidate's own end-to-end run of the same clip) stands in for the audio encoder,
    whose only input is the waveform. A frame count that differs from the reference's is a hard failure.
    """
    for stage in graph.stages:
        if stage not in stats:
            continue
        if stage == AUDIO_ENCODER and candidate_run is not None:
            outputs = candidate_run.raw[AUDIO_ENCODER]
        else:
            outputs = graph.run_stage(candidate, stage, reference.values)
        name = PRIMARY[stage]
        reference_output = reference.raw[stage][name] if stage in reference.raw else reference.values[name]
        stats[stage].add(
            valid_part(stage, reference_output, reference), valid_part(stage, outputs[name], reference)
        )
        if (
            stage == AUDIO_ENCODER
            and "frame_lengths" in outputs
            and "frame_lengths" in reference.raw.get(stage, {})
        ):
            if not np.array_equal(outputs["frame_lengths"], reference.raw[stage]["frame_lengths"]):
                stats[stage].fail()
