"""Run the edgeser CLI in a torchrun worker, recording what the rank trains on and moves into place.

    EDGESER_DDP_LOG=DIR [EDGESER_DDP_DIE=R:N] python -m torch.distributed.run ... tests/ddp_driver.py train ...

Each rank appends JSON lines to DIR/rank-R.jsonl: `{"global": [ids], "slice": [ids]}` for every training batch
(the whole global batch and the clips this rank computed) and `{"moved": path}` for every os.replace, os.rename,
os.mkdir and folder exchange (every edgeser write ends in one of them). With EDGESER_DDP_DIE=R:N, rank R exits
at once (os._exit(137), no clean-up) at its N-th training batch: a process lost in the middle of an epoch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

RANK = int(os.environ["RANK"])
LOG = Path(os.environ["EDGESER_DDP_LOG"]) / f"rank-{RANK}.jsonl"
DIE_RANK, DIE_AT = (int(v) for v in os.environ.get("EDGESER_DDP_DIE", "-1:0").split(":"))
calls = 0


def record(entry: dict[str, Any]) -> None:
    with LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def recording(function):  # type: ignore[no-untyped-def]
    def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
        record({"moved": str(args[1] if len(args) > 1 else args[0])})
        return function(*args, **kwargs)

    return wrapped


os.replace = recording(os.replace)
os.rename = recording(os.rename)
os.mkdir = recording(os.mkdir)

import edgeser.files  # noqa: E402
from edgeser.training import loop  # noqa: E402

edgeser.files._exchange = recording(edgeser.files._exchange)
real_compute_loss = loop.compute_loss


def compute_loss(model, batch, *args, shard=None, **kwargs):  # type: ignore[no-untyped-def]
    global calls
    calls += 1
    if RANK == DIE_RANK and calls == DIE_AT:
        os._exit(137)
    part = batch if shard is None else batch[shard]
    record({"global": [c.id for c in batch], "slice": [c.id for c in part]})
    return real_compute_loss(model, batch, *args, shard=shard, **kwargs)


loop.compute_loss = compute_loss

from edgeser.cli import main  # noqa: E402

main(sys.argv[1:], prog_name="edgeser")
