"""Serving throughput and latency: `edgeser serve` (Triton, dynamic batching) against sequential in-process calls.

    python benchmarks/serving_throughput.py /tmp/stfnet --data ../shared/data --requests 160 --threads 2

Real speech: EMO-DB clips (all speakers, in corpus order), sent as 16 kHz float32. The baseline calls one
`Pipeline` sequentially in this process; the server runs from the serve environment (.venv-serve, or
--serve-python) on 127.0.0.1, and 1, 4 and 16 concurrent clients (threads, one tritonclient connection each)
send the same clips over HTTP. The baseline runs before and after the server levels, to show drift on a shared
machine. Writes benchmarks/results/serving_throughput-<bundle>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgeser.audio import load_audio
from edgeser.data import load_corpus
from edgeser.machine import machine_info
from edgeser.measures import percentiles
from edgeser.reports import markdown_table, write_report

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 4, 16)


def summarise(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = percentiles([1e3 * x for x in latencies_s])
    return {
        "requests": len(latencies_s),
        "wall_s": round(wall_s, 3),
        "throughput_rps": round(len(latencies_s) / wall_s, 2),
        "p50_ms": round(ms["p50"], 2),
        "p95_ms": round(ms["p95"], 2),
        "latencies_s": latencies_s,
    }


def pooled(rounds: list[dict]) -> dict[str, float]:  # type: ignore[type-arg]
    """Several rounds of one variant: the median round's throughput, percentiles of every request's latency."""
    ms = percentiles([1e3 * x for r in rounds for x in r["latencies_s"]])
    return {
        "requests": sum(r["requests"] for r in rounds),
        "rounds": len(rounds),
        "throughput_rps": round(float(np.median([r["throughput_rps"] for r in rounds])), 2),
        "throughput_per_round": [r["throughput_rps"] for r in rounds],
        "p50_ms": round(ms["p50"], 2),
        "p95_ms": round(ms["p95"], 2),
    }


def sequential(pipe, waves: list[np.ndarray]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One Pipeline in this process, one clip after another."""
    for wave in waves[:5]:
        pipe((wave, 16_000))
    latencies = []
    started = time.perf_counter()
    for wave in waves:
        begin = time.perf_counter()
        pipe((wave, 16_000))
        latencies.append(time.perf_counter() - begin)
    return summarise(latencies, time.perf_counter() - started)


def concurrent(url: str, waves: list[np.ndarray], clients: int) -> dict[str, float]:
    """`clients` threads, each with its own connection, share the request list; one clip per request."""
    from edgeser.serving.client import TritonClient

    client = TritonClient(url)
    for wave in waves[:clients]:
        client.predict(wave)
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = iter(range(len(waves)))

    def worker() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            begin = time.perf_counter()
            client.predict(waves[index])
            elapsed = time.perf_counter() - begin
            with lock:
                latencies.append(elapsed)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return summarise(latencies, time.perf_counter() - started)


def start_server(
    python: Path, bundle: Path, port: int, threads: int, max_batch: int, delay_ms: float, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        str(python),
        "-c",
        "from edgeser.cli.serving import serve_command; serve_command()",
        str(bundle),
        "--port",
        str(port),
        "--grpc-port",
        str(port + 1),
        "--threads",
        str(threads),
        "--max-batch",
        str(max_batch),
        "--max-delay-ms",
        str(delay_ms),
    ]
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("server not ready after 300 s")


def server_stats(port: int) -> dict[str, int]:
    import tritonclient.http as httpclient

    stats = httpclient.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics("edgeser")
    model = stats["model_stats"][0]
    return {"inferences": int(model["inference_count"]), "executions": int(model["execution_count"])}


def to_markdown(report: dict) -> str:  # type: ignore[type-arg]
    rows = [
        ["in-process Pipeline, sequential", "1", *fmt(report["sequential"])],
        *[
            [f"edgeser serve, {level} client(s)", str(level), *fmt(report["served"][str(level)])]
            for level in LEVELS
        ],
    ]
    m = report["machine"]
    batches = ", ".join(
        f"{k} clients: {v['inferences']}/{v['executions']}" for k, v in report["batching"].items()
    )
    return "\n".join(
        [
            f"# Serving throughput: `{report['bundle']}`",
            "",
            (
                f"{report['requests']} requests of real EMO-DB speech (mean {report['mean_clip_s']:.2f} s per clip); server: "
                f"`edgeser serve --max-batch {report['max_batch']} --max-delay-ms {report['max_delay_ms']} --threads "
                f"{report['threads']}` (Triton {report['triton']}, Python backend), HTTP clients on the same machine."
            ),
            "",
            (
                f"{report['rounds']} interleaved rounds (sequential, then 1, 4, 16 clients, repeated); throughput is the "
                f"median round's, latency percentiles pool every request of every round."
            ),
            "",
            *markdown_table(["how", "concurrency", "throughput (clips/s)", "p50 (ms)", "p95 (ms)"], rows),
            "",
            f"Clips per model execution (inferences/executions, the dynamic batching at work): {batches}.",
            "",
            (
                f"Machine: {m['cpu']} ({m['cpu_class']}), {m['logical_cores']} cores, load {m['load_average']} before the "
                f"run and {report['load_after']} after; onnxruntime {m['versions'].get('onnxruntime')}. Command: `{report['command']}`."
            ),
            "",
        ]
    )


def fmt(row: dict[str, float]) -> list[str]:
    spread = "/".join(f"{x:.0f}" for x in row["throughput_per_round"])
    return [f"{row['throughput_rps']:.1f} ({spread})", f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--serve-python", type=Path, default=REPO / ".venv-serve" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    utterances = load_corpus(f"emodb:{args.data / 'emodb'}").utterances[: args.requests]
    waves = [load_audio(u.path, max_duration=30.0) for u in utterances]
    report: dict = {
        "bundle": args.bundle.name,
        "requests": len(waves),
        "threads": args.threads,  # type: ignore[type-arg]
        "mean_clip_s": float(np.mean([w.size / 16_000 for w in waves])),
        "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms,
        "machine": machine_info(args.threads),
        "command": "PYTHONPATH=. python benchmarks/serving_throughput.py "
        + " ".join(
            [
                str(args.bundle),
                "--requests",
                str(args.requests),
                "--threads",
                str(args.threads),
                "--rounds",
                str(args.rounds),
                "--max-batch",
                str(args.max_batch),
                "--max-delay-ms",
                str(args.max_delay_ms),
            ]
        ),
    }
    from edgeser.runtime import Pipeline

    pipe = Pipeline.load(args.bundle, threads=args.threads)
    log = Path("/tmp") / f"serving-benchmark-{os.getpid()}.log"
    server = start_server(
        args.serve_python,
        args.bundle.resolve(),
        args.port,
        args.threads,
        args.max_batch,
        args.max_delay_ms,
        log,
    )
    rounds: dict[str, list[dict]] = {"sequential": [], **{str(level): [] for level in LEVELS}}  # type: ignore[type-arg]
    batching = {str(level): {"inferences": 0, "executions": 0} for level in LEVELS}
    try:
        report["triton"] = "2.51.0 (nvidia-pytriton 0.7.0)"
        for _ in range(args.rounds):
            rounds["sequential"].append(sequential(pipe, waves))
            for level in LEVELS:
                before = server_stats(args.port)
                rounds[str(level)].append(concurrent(f"127.0.0.1:{args.port}", waves, level))
                after = server_stats(args.port)
                for key in after:
                    batching[str(level)][key] += after[key] - before[key]
    finally:
        server.terminate()
        server.wait(60)
    report["rounds"] = args.rounds
    report["sequential"] = pooled(rounds["sequential"])
    report["served"] = {level: pooled(rounds[level]) for level in map(str, LEVELS)}
    report["batching"] = batching
    report["load_after"] = machine_info(args.threads)["load_average"]
    write_report(args.out, f"serving_throughput-{args.bundle.name}", report, markdown=to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
