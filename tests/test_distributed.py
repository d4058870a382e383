"""`edgeser train` under torchrun (2 CPU processes, gloo) follows the 1-process run: same global batches, same
loss curve and validation metrics, one writer, and a run that lost a process resumes to the same result."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgeser.cli.train import train_command
from edgeser.modelling.frontend import MaskedFeatureNorm
from edgeser.modelling.registry import load_recipe
from edgeser.training import STATE_DIR, loop
from edgeser.training.distributed import SyncedBatchNorm, SyncedMaskedFeatureNorm, World

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "ddp_driver.py"


def tiny_zoo(folder: Path) -> Path:
    """A zoo whose stfnet has a `ddp` size: the small one shrunk, dropout off, SGD.

    Dropout off: each rank draws its own masks for its own slice, which cannot be the masks one process
    draws for the whole batch. SGD, not Adam: a conv bias before BatchNorm (and an attention key bias) has a
    gradient that is zero up to rounding, and Adam's normalisation turns that rounding into full steps in a
    random direction, so two 1-process runs that differ only in their thread count already part there."""
    recipe = load_recipe("stfnet")
    size = copy.deepcopy(recipe["sizes"]["small"])
    size["cnn"].update(channels=[4, 8, 8], dropout=0.0)
    size["transformer"].update(ff_dim=32, layers=1, dropout=0.0)
    recipe["sizes"]["ddp"] = size  # AWGN stays on: every rank draws it for the whole global batch
    recipe["training"]["ddp"] = {
        "epochs": 3,
        "batch_size": 7,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": 0.05,
        "weight_decay": 1e-4,
    }
    folder.mkdir()
    (folder / "stfnet.json").write_text(json.dumps(recipe), encoding="utf-8")
    return folder


def torchrun(
    args: list[str], log: Path, env: dict[str, str], die: str = ""
) -> subprocess.CompletedProcess[str]:
    log.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(DRIVER),
        "train",
        *args,
    ]
    environment = {**env, "EDGESER_DDP_LOG": str(log), "EDGESER_DDP_DIE": die or "-1:0"}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def rank_log(log: Path, rank: int) -> list[dict]:
    return [
        json.loads(line) for line in (log / f"rank-{rank}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


def check_shards(log: Path) -> list[list[str]]:
    """The global batches both ranks saw (they must agree), each rank's slice checked; returns the batches."""
    ranks = [[e for e in rank_log(log, r) if "global" in e] for r in (0, 1)]
    common = min(len(ranks[0]), len(ranks[1]))  # a rank that died logged fewer batches
    for first, second in zip(ranks[0][:common], ranks[1][:common]):
        assert first["global"] == second["global"]
        if len(first["global"]) < 2:  # fewer clips than ranks: both compute it whole
            assert first["slice"] == second["slice"] == first["global"]
        else:  # disjoint contiguous slices that make up the batch, each about half of it
            assert first["slice"] + second["slice"] == first["global"]
            assert abs(len(first["slice"]) - len(second["slice"])) <= 1
    return [e["global"] for e in ranks[0][:common]]


def moved_under(log: Path, rank: int, folder: Path) -> list[str]:
    return [e["moved"] for e in rank_log(log, rank) if "moved" in e and e["moved"].startswith(str(folder))]


def test_torchrun_two_processes_match_one_process_and_resume(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_one_thread: None
) -> None:
    zoo = tiny_zoo(tmp_path / "zoo")
    # TESS clips differ in length (padding enters the batch statistics); 22 clips in batches of 7: 7, 7, 7, 1.
    args = [
        "--model",
        "stfnet",
        "--size",
        "ddp",
        "--data",
        f"tess:{shared_data / 'tess'}",
        "--fold",
        "0",
        "--limit",
        "22",
        "--device",
        "cpu",
        "--seed",
        "5",
    ]

    monkeypatch.setenv("EDGESER_ZOO", str(zoo))
    batches: list[list[str]] = []
    real_compute_loss = loop.compute_loss

    def recording(model, batch, *a, **k):  # type: ignore[no-untyped-def]
        batches.append([c.id for c in batch])
        return real_compute_loss(model, batch, *a, **k)

    monkeypatch.setattr(loop, "compute_loss", recording)
    result = CliRunner().invoke(train_command, [*args, "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    reference = json.loads((tmp_path / "one" / "checkpoint.json").read_text())["metrics"]
    assert [len(b) for b in batches] == [7, 7, 7, 1] * 3

    env = {**os.environ, "EDGESER_ZOO": str(zoo), "PYTHONPATH": str(ROOT)}
    run = tmp_path / "two"
    lost = torchrun([*args, "--out", str(run)], tmp_path / "log-lost", env, die="1:10")  # rank 1, epoch 3
    assert lost.returncode != 0
    state = json.loads((run / STATE_DIR / "state.json").read_text())
    assert state["epoch"] == 2  # the two finished epochs are on disk
    assert check_shards(tmp_path / "log-lost")[:8] == batches[:8]

    resumed = torchrun([*args, "--out", str(run), "--resume"], tmp_path / "log-resumed", env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 3/3" in resumed.stderr
    assert check_shards(tmp_path / "log-resumed") == batches[8:]  # only epoch 3 ran again
    assert resumed.stdout.count("kept epoch") == 1  # rank 0 alone prints the result

    metrics = json.loads((run / "checkpoint.json").read_text())["metrics"]
    assert len(metrics["history"]) == len(reference["history"]) == 3
    for mine, theirs in zip(metrics["history"], reference["history"]):
        assert mine["train"]["loss"] == pytest.approx(theirs["train"]["loss"], rel=1e-5)
        for key in ("ua", "wa", "macro_f1"):
            assert mine["validation"][key] == pytest.approx(theirs["validation"][key], abs=1e-9)
    assert metrics["best"]["epoch"] == reference["best"]["epoch"]
    assert metrics["evaluation"]["confusion"] == reference["evaluation"]["confusion"]
    assert metrics["evaluation"]["per_speaker"] == reference["evaluation"]["per_speaker"]  # same predictions
    assert len((run / loop.METRICS_FILE).read_text().splitlines()) == 3

    for log in (tmp_path / "log-lost", tmp_path / "log-resumed"):  # one writer
        assert moved_under(log, 0, run) and not moved_under(log, 1, run)


def test_shards_are_contiguous_disjoint_and_cover_the_batch() -> None:
    for size in (2, 3, 8):
        for count in range(0, 20):
            parts = [World(torch.device("cpu"), rank, size).shard(count) for rank in range(size)]
            if count < size:
                assert parts == [None] * size
                continue
            spans = [(p.start, p.stop) for p in parts if p is not None]
            assert len(spans) == size and spans[0][0] == 0 and spans[-1][1] == count
            assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
            assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


@pytest.fixture
def one_process_group(tmp_path: Path):  # type: ignore[no-untyped-def]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    torch.distributed.destroy_process_group()


def test_synchronised_norms_equal_their_originals_on_one_process(one_process_group: None) -> None:
    """The synchronised layers' own arithmetic (outputs, gradients, running estimates over several steps)
    equals BatchNorm's and MaskedFeatureNorm's where there is one rank to sum over."""
    torch.manual_seed(0)
    plain_bn, plain_norm = torch.nn.BatchNorm2d(3, momentum=0.2), MaskedFeatureNorm(5)
    synced_bn = SyncedBatchNorm(copy.deepcopy(plain_bn), None)
    synced_norm = SyncedMaskedFeatureNorm(copy.deepcopy(plain_norm), None)
    for step in range(3):
        image = (torch.randn(4, 3, 6, 7) * (step + 1) + step).requires_grad_()
        frames = (torch.randn(3, 9, 5) * 3 + 1).requires_grad_()
        mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [4], [6]])
        for plain, synced, inputs in (
            (plain_bn, synced_bn, (image,)),
            (plain_norm, synced_norm, (frames, mask)),
        ):
            expected = plain(*inputs)
            (gradient,) = torch.autograd.grad((expected * expected.detach().cos()).sum(), inputs[0])
            got = synced(*inputs)
            (synced_gradient,) = torch.autograd.grad((got * got.detach().cos()).sum(), inputs[0])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(synced_gradient, gradient, rtol=1e-4, atol=1e-5)
    for plain, synced in ((plain_bn, synced_bn), (plain_norm, synced_norm)):
        for name, value in plain.state_dict().items():
            torch.testing.assert_close(synced.state_dict()[name], value, rtol=1e-5, atol=1e-6)
        plain.eval()
        synced.eval()
    torch.testing.assert_close(synced_bn(image), plain_bn(image))
