"""The runtime's public surface: errors importable from `edgeser.runtime`, `Literal` precision and backend (the
CLI's choices come from them), and options a backend would ignore refused with one line, never dropped.

Runs on the base install too (tools/check_wheel.sh): nothing here needs torch.
"""

from __future__ import annotations

import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import edgeser.errors
import edgeser.runtime
from edgeser.cli import main
from edgeser.cli.predict import predict_command
from edgeser.runtime import (
    BACKENDS,
    PRECISIONS,
    AudioError,
    Backend,
    BundleError,
    EdgeserError,
    OptionError,
    Pipeline,
    Precision,
)
from tests.conftest import write_audio


def test_public_errors_are_edgesers_own_and_raised_by_the_runtime(cmgi_bundle: Path, tmp_path: Path) -> None:
    for name in (
        "AudioError",
        "BundleError",
        "OptionError",
        "EdgeserError",
        "MissingDependencyError",
        "ProviderError",
    ):
        assert (
            getattr(edgeser.runtime, name) is getattr(edgeser.errors, name)
            and name in edgeser.runtime.__all__
        )
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        Pipeline.load(cmgi_bundle, threads=1)(empty)
    with pytest.raises(BundleError, match="not-a-bundle"):
        Pipeline.load(tmp_path / "not-a-bundle")
    with pytest.raises(
        edgeser.runtime.ProviderError, match=r"\['NoSuchExecutionProvider'\] not available here"
    ):
        Pipeline.load(cmgi_bundle, providers=["NoSuchExecutionProvider"])
    assert issubclass(OptionError, EdgeserError) and issubclass(AudioError, EdgeserError)


def test_precision_and_backend_are_literals_and_the_cli_offers_exactly_them() -> None:
    hints = typing.get_type_hints(Pipeline.load)
    assert hints["precision"] == Precision and hints["backend"] == Backend
    assert typing.get_args(Precision) == PRECISIONS and "int8-trt-fp16" in PRECISIONS
    assert typing.get_args(Backend) == BACKENDS == ("onnxruntime", "cuda", "tensorrt-ep", "tensorrt")
    choices = {p.name: p.type.choices for p in predict_command.params if isinstance(p.type, click.Choice)}
    assert tuple(choices["precision"]) == PRECISIONS and tuple(choices["backend"]) == BACKENDS


@pytest.mark.parametrize(
    ("options", "name", "problem"),
    [
        ({"backend": "tensorrt", "threads": 1}, "threads", "not used with backend 'tensorrt'"),
        (
            {"backend": "tensorrt", "providers": ["CPUExecutionProvider"]},
            "providers",
            "not used with backend 'tensorrt'",
        ),
        ({"backend": "tensorrt", "spin": True}, "spin", "not used with backend 'tensorrt'"),
        (
            {"backend": "cuda", "providers": ["CPUExecutionProvider"]},
            "providers",
            "sets its own execution providers",
        ),
        ({"backend": "tensorrt-ep", "providers": []}, "providers", "sets its own execution providers"),
        ({"device": 1}, "device", "not used with backend 'onnxruntime'"),
        ({"force_threads": True}, "force_threads", "no threads were given"),
        ({"backend": "cuda", "device": -1}, "device", "expected a GPU index"),
        ({"backend": "tensorrt", "device": "0"}, "device", "expected a GPU index"),
        ({"backend": "TensorRT"}, "backend", "unknown backend 'TensorRT'"),
    ],
    ids=[
        "trt-threads",
        "trt-providers",
        "trt-spin",
        "cuda-providers",
        "trt-ep-providers",
        "cpu-device",
        "force-without-threads",
        "negative-device",
        "text-device",
        "backend-case",
    ],
)
def test_options_the_backend_would_ignore_are_refused(
    cmgi_bundle: Path, options: dict[str, object], name: str, problem: str
) -> None:
    # Refused before anything loads: without the check these either run (device 1 on the CPU) or fail later
    # for another reason (no TensorRT, no CUDA provider here).
    with pytest.raises(OptionError, match=problem) as caught:
        Pipeline.load(cmgi_bundle, **options)  # type: ignore[arg-type]
    assert (
        caught.value.name == name
        and str(caught.value).startswith(f"{name}: ")
        and "\n" not in str(caught.value)
    )


def test_options_the_backend_uses_are_accepted(cmgi_bundle: Path) -> None:
    pipe = Pipeline.load(cmgi_bundle, providers=["CPUExecutionProvider"], threads=1, spin=True)
    assert pipe.backend == "onnxruntime" and pipe.precision == "fp32"
    assert Pipeline.load(cmgi_bundle, threads=1, force_threads=True).labels == pipe.labels


def test_predict_cli_refuses_threads_with_tensorrt_in_one_line(cmgi_bundle: Path, tmp_path: Path) -> None:
    clip = write_audio(tmp_path / "clip.wav", seconds=1.0)
    result = CliRunner().invoke(
        main, ["predict", str(cmgi_bundle), str(clip), "--backend", "tensorrt", "--threads", "1"]
    )
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: threads: not used with backend 'tensorrt': edgeser's TensorRT engines run on the GPU, "
        "not on onnxruntime"
    ]
