"""Score a whole corpus on a Ray cluster: one `Pipeline` per actor, length-bucketed batches, one row per clip.

    rows = score_corpus("build/cmgi", "manifest:calls.csv", "results.parquet", RayOptions(address="auto"))

The corpus index (`edgeser.data.load_corpus`) becomes a Ray Dataset sorted by duration, so each batch holds
clips of similar length (little padding). An actor pool of `ClipScorer`s (each declares its CPUs/GPUs and holds
one Pipeline) reads and predicts each batch; a clip that cannot be read or predicted becomes an error row,
never a lost batch; a batch whose worker dies is retried on a restarted worker (Ray Data's actor pools restart
actors and retry their tasks without limit by default; passing limits through `map_batches` is deprecated). Results are written to one
Parquet file (atomically), in corpus order unless asked otherwise, and the bundle's labels are stored in its
metadata. Paths and the bundle must be readable at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edgeser.errors import ClusterError, EdgeserError, MissingDependencyError

if TYPE_CHECKING:
    from edgeser.bundle import Precision

# One result row per clip; `error` is set (and the prediction columns null) where the clip failed.
COLUMNS = (
    "index",
    "id",
    "path",
    "label",
    "confidence",
    "probabilities",
    "logits",
    "transcript",
    "duration_s",
    "error",
    "reference_label",
    "reference_transcript",
)
LABELS_KEY = b"edgeser.labels"


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as err:
        raise MissingDependencyError("pyarrow", "ray", "corpus scoring with Ray") from err
    return pyarrow


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingDependencyError("ray", "ray", "corpus scoring with Ray") from err
    return ray


def result_schema() -> Any:
    pa = _pyarrow()
    return pa.schema(
        [
            ("index", pa.int64()),
            ("id", pa.string()),
            ("path", pa.string()),
            ("label", pa.string()),
            ("confidence", pa.float64()),
            ("probabilities", pa.list_(pa.float64())),
            ("logits", pa.list_(pa.float64())),
            ("transcript", pa.string()),
            ("duration_s", pa.float64()),
            ("error", pa.string()),
            ("reference_label", pa.string()),
            ("reference_transcript", pa.string()),
        ]
    )


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run: the cluster, the actor pool, each actor's resources, batching and order."""

    # None or "local": a local Ray instance; "auto" or "ray://host:port": a cluster
    address: str | None = None
    workers: int = 2  # actors in the pool (one Pipeline each)
    cpus_per_worker: float = 1.0  # also the onnxruntime threads of each actor
    gpus_per_worker: float = 0.0  # > 0: the actor's Pipeline uses the CUDA execution provider
    batch_size: int = 8  # clips per batch (neighbours in duration order)
    keep_order: bool = True  # rows in corpus order; False: in completion order
    local_cpus: int | None = None  # CPUs of a local instance [all]
    ship_code: bool = True  # send this edgeser to the workers (runtime_env py_modules)

    def __post_init__(self) -> None:
        from edgeser.runtime.options import bounded

        for name in ("workers", "batch_size", "cpus_per_worker", "gpus_per_worker"):
            bounded(f"--{name.replace('_', '-')}", getattr(self, name), name)


@dataclass(frozen=True)
class ScoreSummary:
    """What a scoring run did: clips, errors, throughput, where the rows went."""

    out: str
    clips: int
    errors: int
    seconds: float
    clips_per_second: float
    audio_hours: float
    labels: list[str]
    workers: int
    error_examples: list[str] = field(default_factory=list)


class ClipScorer:
    """A Ray Data actor: one Pipeline, batches of index rows in, result rows out (errors as rows)."""

    def __init__(self, bundle: str, precision: str, threads: int | None, gpu: bool) -> None:
        from edgeser.runtime import Pipeline

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else None
        self.pipe = Pipeline.load(bundle, cast("Precision", precision), threads=threads, providers=providers)
        self.labels = list(self.pipe.labels)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Any:
        from edgeser.runtime.pipeline import isolated

        paths = [str(p) for p in batch["path"]]
        waves, unread = isolated(dict(enumerate(paths)), self.pipe.read, lambda _path, err: str(err))
        results: dict[int, Any] = {**unread, **self.predict(waves)}
        return rows_from_results(batch, results, len(paths))

    def predict(self, waves: Mapping[int, np.ndarray]) -> dict[int, Any]:
        """Prediction or error text per row; a batch that fails as a whole is retried clip by clip (any exception:
        a library failure on one clip is an error row, not a lost job)."""
        from edgeser.audio import SAMPLE_RATE
        from edgeser.runtime.pipeline import isolated
        from edgeser.runtime.results import Prediction

        def together(clips: list[np.ndarray]) -> list[Any]:
            outcomes = self.pipe.batch([(wave, SAMPLE_RATE) for wave in clips], batch_size=len(clips))
            return [o if isinstance(o, Prediction) else f"{o.source}: {o.error}" for o in outcomes]

        done, failed = isolated(
            waves,
            lambda wave: self.pipe((wave, SAMPLE_RATE)),
            clip_error,
            together=together,
            errors=(Exception,),
        )
        return {**done, **failed}


def clip_error(_wave: object, err: Exception) -> str:
    """The error text of a clip that failed alone: edgeser's one line, or the library's exception named."""
    if isinstance(err, EdgeserError):
        return str(err)
    return f"unexpected {type(err).__name__}: {' '.join(str(err).split())[:300]}"


def rows_from_results(batch: Mapping[str, np.ndarray], results: Mapping[int, Any], count: int) -> Any:
    """A pyarrow Table of result rows for one batch of index rows (a Prediction or an error text per row)."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in range(count):
        outcome = results.get(row, "not predicted")
        good = not isinstance(outcome, str)
        columns["index"].append(int(batch["index"][row]))
        for name in ("id", "path", "reference_label"):
            columns[name].append(str(batch[name][row]))
        columns["reference_transcript"].append(str(batch["reference_transcript"][row]) or None)
        columns["duration_s"].append(float(batch["duration_s"][row]))
        columns["label"].append(outcome.label if good else None)
        columns["confidence"].append(float(outcome.confidence) if good else None)
        columns["probabilities"].append([float(p) for p in outcome.probabilities.values()] if good else None)
        columns["logits"].append([float(x) for x in outcome.logits] if good else None)
        columns["transcript"].append(outcome.transcript if good else None)
        columns["error"].append(None if good else outcome)
    pa = _pyarrow()
    return pa.Table.from_pydict(columns, schema=result_schema())


def index_rows(spec: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The corpus index as rows (corpus order), and error rows for the files the reader could not use."""
    from edgeser.data import load_corpus

    corpus = load_corpus(spec)
    rows = [
        {
            "index": i,
            "id": u.id,
            "path": str(u.path),
            "duration_s": float(u.duration),
            "reference_label": u.label,
            "reference_transcript": u.transcript or "",
        }
        for i, u in enumerate(corpus.utterances)
    ]
    bad = [p for p in corpus.problems if p.severity == "bad"]
    errors = [
        {
            "index": len(rows) + k,
            "id": p.path,
            "path": p.path,
            "label": None,
            "confidence": None,
            "probabilities": None,
            "logits": None,
            "transcript": None,
            "duration_s": 0.0,
            "error": f"{p.path}: {p.reason}",
            "reference_label": None,
            "reference_transcript": None,
        }
        for k, p in enumerate(bad)
    ]
    return rows, errors


def connect(options: RayOptions) -> Any:
    """ray.init for these options (a local instance or a cluster), shipping this edgeser to the workers."""
    ray = _ray()
    if ray.is_initialized():
        quiet(ray)
        return ray
    import edgeser

    # Workers score bundles: the shipped checkpoints and demo clips (edgeser/shipped/, ~39 MB) stay behind.
    runtime_env = (
        {"py_modules": [str(Path(edgeser.__file__).parent)], "excludes": ["shipped/", "__pycache__/"]}
        if options.ship_code
        else None
    )
    try:
        if options.address in (None, "local"):
            ray.init(
                num_cpus=options.local_cpus,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=options.address, runtime_env=runtime_env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(
            f"Ray at {options.address or 'local'}: {' '.join(str(err).split())[:300]}"
        ) from err
    quiet(ray)
    return ray


def quiet(ray: Any) -> None:
    """No progress bars or per-operator INFO lines from Ray Data on stderr (our summary says what happened)."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def score_corpus(
    bundle: str | Path,
    spec: str,
    out: str | Path,
    options: RayOptions | None = None,
    *,
    precision: str = "fp32",
    scorer: type[ClipScorer] = ClipScorer,
) -> ScoreSummary:
    """Score every clip of the corpus `spec` with the bundle on Ray; write one row per clip to `out` (Parquet)."""
    from edgeser.bundle import validate_bundle

    options = options or RayOptions()
    root = Path(bundle).resolve()
    labels = list(validate_bundle(root, precision).labels)
    rows, error_rows = index_rows(spec)
    started = time.perf_counter()
    ray = connect(options)
    tables = []
    if rows:
        by_length = sorted(rows, key=lambda r: (r["duration_s"], r["index"]))  # length buckets
        dataset = ray.data.from_items(
            by_length, override_num_blocks=max(1, min(len(rows) // options.batch_size, 4 * options.workers))
        )
        scored = dataset.map_batches(
            scorer,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={
                "bundle": str(root),
                "precision": precision,
                "threads": max(1, int(options.cpus_per_worker)),
                "gpu": options.gpus_per_worker > 0,
            },
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
        )
        tables = list(scored.iter_batches(batch_format="pyarrow", batch_size=None))
    table = _finish(tables, error_rows, labels, options.keep_order)
    seconds = time.perf_counter() - started
    write_parquet(table, Path(out))
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    hours = float(sum(r["duration_s"] for r in rows)) / 3600
    return ScoreSummary(
        str(out),
        table.num_rows,
        len(errors),
        round(seconds, 3),
        round(table.num_rows / seconds, 3) if seconds > 0 else 0.0,
        round(hours, 4),
        labels,
        options.workers,
        errors[:5],
    )


def _finish(tables: list[Any], error_rows: list[dict[str, Any]], labels: list[str], keep_order: bool) -> Any:
    pa = _pyarrow()
    schema = result_schema()
    parts = [t.select(list(COLUMNS)).cast(schema) for t in tables if t.num_rows]
    if error_rows:
        parts.append(pa.Table.from_pylist(error_rows, schema=schema))
    table = pa.concat_tables(parts) if parts else schema.empty_table()
    if keep_order:
        table = table.sort_by("index")
    return table.replace_schema_metadata({LABELS_KEY: json.dumps(labels).encode()})


def write_parquet(table: Any, out: Path) -> None:
    """Write the table to `out` through a temporary file and a rename."""
    import io

    import pyarrow.parquet as pq

    from edgeser.files import write_bytes_atomic

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, buffer.getvalue())


def read_results(path: str | Path) -> tuple[Any, list[str]]:
    """A results file: the table and the labels its probabilities are listed in."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    labels = json.loads((table.schema.metadata or {}).get(LABELS_KEY, b"[]"))
    return table, labels
