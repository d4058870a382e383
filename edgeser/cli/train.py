"""`edgeser train`: one fold of a protocol, selected on validation clips, evaluated once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from edgeser.cli.params import Bounded
from edgeser.data.protocols import DEFAULT_PROTOCOL, PAPER_PROTOCOL, PROTOCOLS, ProtocolName
from edgeser.modelling import MODEL_NAMES
from edgeser.text import TEXT_SOURCES, TextSource


@click.command("train")
@click.option("--model", "model_name", required=True, type=click.Choice(MODEL_NAMES), help="Zoo model.")
@click.option(
    "--size", default="small", show_default=True, help="Recipe size (small trains on CPU; paper needs GPUs)."
)
@click.option("--data", "data_spec", required=True, help="Data spec, e.g. emodb:../shared/data/emodb.")
@click.option(
    "--fold",
    "fold_index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Fold of the protocol (held-out speaker/session for the default).",
)
@click.option(
    "--protocol",
    type=click.Choice([*PROTOCOLS, PAPER_PROTOCOL]),
    default=DEFAULT_PROTOCOL,
    show_default=True,
    help="Evaluation protocol: speaker-independent (the deployment estimate), a paper's own split, or "
    "`paper`: the one the model's recipe names.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Checkpoint folder [runs/MODEL-SIZE-CORPUS-foldK].",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's epoch count.")
@click.option(
    "--batch-size",
    type=Bounded("train_batch_size"),
    help="Override the recipe's batch size: the global batch, split across the processes under torchrun.",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), help="Override the recipe's learning rate."
)
@click.option(
    "--text-source-eval",
    type=click.Choice([source.replace("_", "-") for source in TEXT_SOURCES]),
    help="Text the text branch reads when evaluating: the model's own CTC transcript (deployment) or "
    "the ground truth (the papers' GT rows) [the recipe's].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu or cuda[:N]; under torchrun auto/cuda puts each process on cuda:LOCAL_RANK (NCCL), "
    "cpu runs gloo.",
)
@click.option("--limit", type=click.IntRange(min=2), help="Use at most N training clips (smoke runs).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
def train_command(
    model_name: str,
    size: str,
    data_spec: str,
    fold_index: int,
    protocol: ProtocolName | Literal["paper"],
    out_dir: Path | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    text_source_eval: TextSource | None,
    seed: int,
    device: str,
    limit: int | None,
    resume: bool,
) -> None:
    """Train a zoo model on one fold: keep the epoch with the best validation UA, then evaluate it once.

    Launched by `torchrun --nproc-per-node N -m edgeser.cli train ...` it trains with DistributedDataParallel
    over N processes (same global batch and seed as one process; rank 0 writes and prints)."""
    from edgeser.cli.progress import CLICK
    from edgeser.data.spec import parse_spec
    from edgeser.training import train
    from edgeser.training.distributed import main_process

    if out_dir is None:
        out_dir = Path("runs") / f"{model_name}-{size}-{parse_spec(data_spec)[0]}-fold{fold_index}"
    metrics = train(
        model_name,
        size,
        data_spec,
        fold_index,
        out_dir,
        protocol=protocol,
        seed=seed,
        device_name=device,
        resume=resume,
        limit=limit,
        progress=CLICK,
        overrides={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "text_source_eval": text_source_eval.replace("-", "_") if text_source_eval else None,
        },
    )
    if not main_process():
        return
    best, evaluation = metrics["best"], metrics["evaluation"]
    click.echo(
        f"kept epoch {best['epoch']} (validation UA {best['ua']:.4f}); evaluation UA {evaluation['ua']:.4f} "
        f"WA {evaluation['wa']:.4f} F1 {evaluation['macro_f1']:.4f}"
        + (f" CER {evaluation['cer']:.3f}" if "cer" in evaluation else "")
        + f" -> {out_dir}"
    )


def register(main: click.Group) -> None:
    main.add_command(train_command)
