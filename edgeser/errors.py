"""Typed errors whose messages are one line that names the input and the problem."""

from __future__ import annotations

from pathlib import Path


class EdgeserError(Exception):
    """Base class: the CLI prints these as a single line and exits non-zero."""


class AudioError(EdgeserError, ValueError):
    """An audio input cannot be used: unreadable, empty, too short, non-finite, silent..."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class DataError(EdgeserError, ValueError):
    """A corpus, manifest or data spec is malformed or inconsistent."""


class SplitError(EdgeserError, ValueError):
    """A requested split is impossible or would leak evaluation data."""


class ModelError(EdgeserError, ValueError):
    """A model recipe, size, checkpoint or backbone is missing or invalid."""


class BundleError(EdgeserError, ValueError):
    """An exported bundle is missing files, tampered with, or from another schema version."""


class OptionError(EdgeserError, ValueError):
    """An option of the Python API or a command has an invalid value."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class MissingDependencyError(EdgeserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, extra: str, purpose: str, install: str | None = None) -> None:
        self.module = module
        self.extra = extra
        command = install or f"pip install 'edgeser[{extra}]'"
        super().__init__(f"{purpose} needs {module}, which is not installed: {command}")


class ProviderError(EdgeserError, RuntimeError):
    """An onnxruntime execution provider that is not available here, or that a session asked for and did not get."""


class ServingError(EdgeserError, RuntimeError):
    """A model repository cannot be written, or an inference server cannot be started, reached or used."""


class ClusterError(EdgeserError, RuntimeError):
    """A Ray cluster cannot be reached or a corpus-scale job cannot run on it."""


class OutputError(EdgeserError, OSError):
    """An output cannot be written where it was asked for (a read-only folder, a file in the way...)."""


class TensorRTUnavailable(EdgeserError, RuntimeError):
    """TensorRT's libraries or a CUDA GPU is missing or unusable on this machine (a missing `tensorrt` or
    cuda-python package is a MissingDependencyError)."""


class EngineError(BundleError):
    """An engine folder that does not exist for this machine, does not match it, or was changed."""


class ProfileError(BundleError):
    """An optimisation profile that is missing, malformed or inconsistent."""


class InspectorError(EdgeserError, ValueError):
    """Engine-inspector output that edgeser cannot read."""


class TargetError(EdgeserError, ValueError):
    """A `--target` that names no TensorRT line edgeser has a table for."""


class EngineShapeError(BundleError):
    """A feed that does not fit an engine input (name, type, rank, fixed axis or optimisation profile)."""
