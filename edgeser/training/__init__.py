"""Train a zoo model on one fold of a protocol with the paper's loss; select on validation, evaluate once.

Loss: `(1 - a) * CE + a * CTC` for models with a CTC head (CmGI and GCF2-Net use a = 0.1), plain CE for
audio-only models. Text branches read ground-truth transcripts while training (as the papers do) and, when
evaluating, the model's own CTC transcript (`text_source_eval: asr`, deployment) or the ground truth
(`ground_truth`, the papers' GT rows). Under `torchrun` the same code trains with DistributedDataParallel
(`edgeser.training.distributed`): the recipe's batch is the global batch, rank 0 writes.
"""

from edgeser.training.batches import Clip, EvalResult, batches, collate, compute_loss, evaluate, load_clips
from edgeser.training.config import TrainConfig, apply_stage, stage_plan
from edgeser.training.loop import METRICS_FILE, STATE_DIR, train

__all__ = [
    "METRICS_FILE",
    "STATE_DIR",
    "Clip",
    "EvalResult",
    "TrainConfig",
    "apply_stage",
    "batches",
    "collate",
    "compute_loss",
    "evaluate",
    "load_clips",
    "stage_plan",
    "train",
]
