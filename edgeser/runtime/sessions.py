"""onnxruntime stage runners: providers, threads and session options set in one place."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeser.errors import BundleError, ProviderError
from edgeser.runtime.options import check_threads
from edgeser.runtime.providers import check_providers


def make_session(
    path: Path,
    providers: list[str] | None = None,
    threads: int | None = None,
    spin: bool = False,
    provider_options: list[dict[str, str]] | None = None,
    sha256: str | None = None,
) -> ort.InferenceSession:
    """An inference session with full graph optimisation; `threads` bounds intra-op parallelism.

    Workers wait passively unless `spin`. Each stage session owns a thread pool, and spinning workers of a
    finished stage took the cores the next stage needed (benchmarks/quantization_latency.py, 2 cores, cmgi paper
    fp32, 4.5 s clip: text encoder 97 -> 47 ms, fusion head 37 -> 18 ms, end to end 1090 -> 997 ms passive).
    `spin` lets workers spin during a run and stops them when it returns (`session.force_spinning_stop`), so
    stages no longer steal from each other: cmgi paper int8 end to end 640 -> 614 ms on an idle 2-core AMD EPYC
    (audio encoder 621 -> 597 ms), but 1128 -> 1254 ms with one other busy process, where a spinning worker
    waits for a preempted one. Passive is the default: edge devices run other work beside the model.

    With `sha256` (the graph's checksum in bundle.json) the graph is read once, checked and loaded from those
    bytes: a bundle replaced between its validation and this load (`export --force` beside a reader) is refused
    instead of mixing stages of two bundles.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if (
        threads
    ):  # the hard ceiling for every caller; entry points also refuse more than the cores unless forced
        options.intra_op_num_threads = check_threads("threads", threads, force=True)
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    chosen = providers or ["CPUExecutionProvider"]
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ProviderError(f"execution provider(s) {unknown} not available here (available: {available})")
    model: str | bytes = str(path)
    if sha256 is not None:
        try:
            model = Path(path).read_bytes()
        except OSError as err:
            raise BundleError(
                f"{path}: cannot read the graph ({err.strerror}); was the bundle replaced while "
                "loading? Load it again"
            ) from err
        if hashlib.sha256(model).hexdigest() != sha256:
            raise BundleError(
                f"{path}: checksum mismatch with bundle.json (the graph was changed after export, or "
                "the bundle is being replaced while it loads: load it again)"
            )
    try:
        session = ort.InferenceSession(
            model, sess_options=options, providers=chosen, provider_options=provider_options
        )
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(
            f"{path}: onnxruntime cannot load this graph ({' '.join(str(err).split())[:200]})"
        ) from err
    check_providers(session, chosen, path)
    return session


class OrtRunner:
    """A `StageRunner` over one onnxruntime session: feeds by input name, every output by name.

    `InferenceSession.run` is safe to call from several threads at once, so one runner may be shared.
    """

    def __init__(self, session: ort.InferenceSession, path: Path | None = None) -> None:
        self.session = session
        self.path = path
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    @classmethod
    def load(
        cls,
        path: Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        provider_options: list[dict[str, str]] | None = None,
        spin: bool = False,
        sha256: str | None = None,
    ) -> OrtRunner:
        return cls(make_session(path, providers, threads, spin, provider_options, sha256), path)

    def output_shape(self, name: str) -> list[int | str | None]:
        """The declared shape of one output (ints for fixed axes, names for dynamic ones)."""
        for output in self.session.get_outputs():
            if output.name == name:
                return list(output.shape)
        raise BundleError(f"{self.path}: graph has no output {name!r}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))
