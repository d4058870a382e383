"""Corpus scoring on Ray: clips per second with 1 and 2 workers on this machine, and what bounds more machines.

    PYTHONPATH=. python benchmarks/ray_scoring.py /tmp/stfnet --data ../shared/data --rounds 2

Runs `score_corpus` on a local Ray instance (2 CPUs, one CPU and one onnxruntime thread per worker) over a
real corpus (EMO-DB, 535 clips), and an in-process `Pipeline.batch` over the same clips for reference. Each
run's time includes starting the actors (each loads the bundle); the fixed cost is measured with a one-batch
corpus (the first clips) and taken off to give the steady rate. The driver's own work (reading the corpus
index, writing Parquet) is timed per clip: it bounds how far more machines help. Writes
benchmarks/results/ray_scoring-<bundle>.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeser.data import load_corpus
from edgeser.machine import machine_info
from edgeser.ray_scoring.jobs import RayOptions, connect, read_results, score_corpus, write_parquet
from edgeser.reports import markdown_table, write_report

REPO = Path(__file__).resolve().parents[1]


def manifest(spec: str, folder: Path, name: str, count: int | None = None, times: int = 1) -> str:
    """A manifest of the corpus's first `count` clips, listed `times` times (distinct ids)."""
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "id"])
        for copy in range(times):
            for utt in load_corpus(spec).utterances[:count]:
                writer.writerow([str(utt.path), utt.label, f"{utt.id}-{copy}"])
    return f"manifest:{path}"


def in_process(bundle: Path, spec: str, threads: int, batch_size: int) -> dict[str, float]:
    from edgeser.runtime import Pipeline

    paths = [str(u.path) for u in load_corpus(spec).utterances]
    started = time.perf_counter()
    pipe = Pipeline.load(bundle, threads=threads)
    loaded = time.perf_counter()
    pipe.batch(paths, batch_size=batch_size)
    done = time.perf_counter()
    return {
        "clips": len(paths),
        "load_s": round(loaded - started, 3),
        "seconds": round(done - loaded, 3),
        "clips_per_second": round(len(paths) / (done - loaded), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--times", type=int, default=3, help="List the corpus this many times in the Ray runs."
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    spec = f"emodb:{args.data / 'emodb'}"
    bundle = args.bundle.resolve()
    report: dict = {
        "bundle": bundle.name,
        "corpus": "EMO-DB",
        "batch_size": args.batch_size,  # type: ignore[type-arg]
        "machine": machine_info(1),
        "rounds": args.rounds,
        "times": args.times,
        "command": f"PYTHONPATH=. python benchmarks/ray_scoring.py {args.bundle} --rounds {args.rounds} "
        f"--batch-size {args.batch_size} --times {args.times}",
    }
    started = time.perf_counter()
    corpus = load_corpus(spec)
    report["driver_index_s_per_clip"] = (time.perf_counter() - started) / len(corpus)
    report["clips"] = len(corpus)
    report["audio_hours"] = sum(u.duration for u in corpus.utterances) / 3600
    report["mean_file_bytes"] = float(np.mean([u.path.stat().st_size for u in corpus.utterances]))
    started = time.perf_counter()
    connect(RayOptions(local_cpus=2))
    report["ray_start_s"] = round(time.perf_counter() - started, 2)
    runs: dict[str, list[dict]] = {"in-process 1 thread": [], "in-process 2 threads": []}  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        head = manifest(spec, folder, "head", count=args.batch_size)
        whole = manifest(spec, folder, "whole", times=args.times)
        score_corpus(
            bundle, head, folder / "warm-up.parquet", RayOptions(workers=2, batch_size=args.batch_size)
        )
        for _ in range(args.rounds):
            for workers in (1, 2):
                options = RayOptions(workers=workers, cpus_per_worker=1, batch_size=args.batch_size)
                fixed = score_corpus(bundle, head, folder / "head.parquet", options)
                full = score_corpus(bundle, whole, folder / "full.parquet", options)
                steady = (full.clips - fixed.clips) / max(full.seconds - fixed.seconds, 1e-9)
                runs.setdefault(f"ray {workers} worker(s)", []).append(
                    {
                        "clips": full.clips,
                        "seconds": full.seconds,
                        "clips_per_second": full.clips_per_second,
                        "fixed_s": fixed.seconds,
                        "steady_clips_per_second": round(steady, 2),
                        "errors": full.errors,
                    }
                )
            for threads in (1, 2):
                runs[f"in-process {threads} thread{'s' if threads > 1 else ''}"].append(
                    in_process(bundle, spec, threads, args.batch_size)
                )
        table, _ = read_results(folder / "full.parquet")
        started = time.perf_counter()
        write_parquet(table, folder / "again.parquet")
        report["driver_write_s_per_clip"] = (time.perf_counter() - started) / table.num_rows
    report["runs"] = runs
    report["load_after"] = machine_info(1)["load_average"]
    one = float(np.median([r["steady_clips_per_second"] for r in runs["ray 1 worker(s)"]]))
    two = float(np.median([r["steady_clips_per_second"] for r in runs["ray 2 worker(s)"]]))
    report["steady"] = {"one_worker": one, "two_workers": two, "efficiency_2": round(two / (2 * one), 3)}
    driver = report["driver_index_s_per_clip"] + report["driver_write_s_per_clip"]
    report["driver_bound_clips_per_second"] = round(1 / driver, 1)
    write_report(args.out, f"ray_scoring-{bundle.name}", report, markdown=to_markdown(report))
    print(to_markdown(report))


def to_markdown(report: dict) -> str:  # type: ignore[type-arg]
    rows = []
    for name, runs in report["runs"].items():
        rates = "/".join(f"{r['clips_per_second']:.0f}" for r in runs)
        steady = (
            "/".join(f"{r['steady_clips_per_second']:.0f}" for r in runs)
            if "steady_clips_per_second" in runs[0]
            else "n/a"
        )
        fixed = "/".join(f"{r.get('fixed_s', r.get('load_s', 0)):.1f}" for r in runs)
        rows.append([name, rates, steady, fixed])
    s = report["steady"]
    m = report["machine"]
    per_machine = s["one_worker"] * 2 * s["efficiency_2"]
    return "\n".join(
        [
            f"# Corpus scoring on Ray: `{report['bundle']}` on {report['corpus']}",
            "",
            (
                f"{report['clips']} clips ({report['audio_hours']:.2f} h of audio), listed {report['times']} times in the Ray "
                f"runs (the in-process runs take them once), batches of {report['batch_size']} neighbours in duration, after "
                f"one warm-up run; local Ray with 2 CPUs (started in {report['ray_start_s']} s), one CPU and one "
                f"onnxruntime thread per worker. {report['rounds']} rounds, each figure per round."
            ),
            "",
            *markdown_table(
                [
                    "run",
                    "clips/s (whole run)",
                    "clips/s (steady, fixed cost off)",
                    "fixed cost s (actors + load)",
                ],
                rows,
            ),
            "",
            (
                f"Steady rate: {s['one_worker']:.1f} clips/s with 1 worker, {s['two_workers']:.1f} with 2 (scaling "
                f"efficiency {s['efficiency_2']:.2f}). Driver work per clip: index {1e3 * report['driver_index_s_per_clip']:.2f}"
                f" ms (reading the corpus, probing each header), Parquet {1e3 * report['driver_write_s_per_clip']:.3f} ms: "
                f"the driver alone caps a cluster at about {report['driver_bound_clips_per_second']:.0f} clips/s. Mean file "
                f"{report['mean_file_bytes'] / 1e3:.0f} kB."
            ),
            "",
            "## Projection to N machines",
            "",
            (
                f"Workers share nothing but the driver, so N machines of this kind give about N x {per_machine:.0f} clips/s "
                f"(this machine's two-worker steady rate) until the driver's {report['driver_bound_clips_per_second']:.0f} "
                f"clips/s index-and-write bound, i.e. up to about "
                f"{report['driver_bound_clips_per_second'] / max(per_machine, 1e-9):.0f} machines for this model; past that, "
                "shard the index (one manifest per driver) or read it with Ray too. The shared storage must then deliver "
                f"N x {per_machine * report['mean_file_bytes'] / 1e6:.1f} MB/s. Each run also pays the fixed cost above "
                "once (actors start and load the bundle in parallel, so it does not grow with N)."
            ),
            "",
            (
                f"Machine: {m['cpu']} ({m['cpu_class']}), {m['logical_cores']} cores, load {m['load_average']} before and "
                f"{report['load_after']} after; onnxruntime {m['versions'].get('onnxruntime')}. Command: "
                f"`{report['command']}`."
            ),
            "",
        ]
    )


if __name__ == "__main__":
    main()
