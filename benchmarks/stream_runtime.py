"""The streaming API on a bundle: real-time factor, end-of-utterance latency, peak memory over an hour, CPU in
silence.

    edgeser export --model cmgi --out build/cmgi        # the shipped default
    python benchmarks/stream_runtime.py build/cmgi [--data ../shared/data] [--hours 1]

- Real-time factor: real speech streams (EMO-DB clips with 1-2.5 s silences, `edgeser.data.streams`) fed as fast
  as possible in 20 ms chunks through `Pipeline.stream`: wall and CPU seconds per audio second.
- Latency: the same kind of stream fed at real time (20 ms chunks, paced by the clock, as a microphone delivers
  them). Per event, `latency_s` (from the feed of the chunk holding the segment's end, padding included, to the
  event) and the delay after the speech really ended (EMO-DB's phone labels) to the event: p50 / p95.
- Memory: `--hours` of a 48 kHz stream, 20 ms chunks generated on the fly, mostly low noise (long silences) with a
  real utterance every 2 minutes; VmRSS sampled every 5 minutes of stream time and the peak (ru_maxrss).
- CPU in silence: 10 minutes of low noise alone, CPU seconds per audio second (the VAD's cost).

Writes benchmarks/results/stream_runtime-<model>-<size>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.audio import SAMPLE_RATE
from edgeser.bundle import read_manifest
from edgeser.data.streams import speech_stream
from edgeser.machine import machine_info
from edgeser.reports import markdown_table, write_report
from edgeser.runtime import Listener, Pipeline, VadOptions
from edgeser.runtime.vad import VAD_SHA256, VAD_VERSION

CHUNK_S = 0.02


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def chunks(wave: np.ndarray, rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    size = int(CHUNK_S * rate)
    return [wave[i : i + size] for i in range(0, wave.size, size)]


def real_time_factor(pipe: Pipeline, streams: list) -> dict:
    seconds = sum(s.wave.size for s in streams) / SAMPLE_RATE
    wall, cpu, events = time.perf_counter(), time.process_time(), 0
    for stream in streams:
        events += sum(1 for _ in pipe.stream(chunks(stream.wave)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "audio_s": seconds,
        "events": events,
        "references": sum(len(s.references) for s in streams),
        "wall_s": wall,
        "cpu_s": cpu,
        "rtf_wall": wall / seconds,
        "rtf_cpu": cpu / seconds,
    }


def latency(pipe: Pipeline, streams: list) -> dict:
    after_event, after_speech, model_ms = [], [], []
    for stream in streams:
        listener = Listener(pipe)
        started = time.perf_counter()
        fed = 0
        found = []
        for chunk in chunks(stream.wave):
            time.sleep(max(0.0, fed / SAMPLE_RATE - (time.perf_counter() - started)))
            fed += chunk.size
            for event in listener.feed(chunk):
                found.append((event, time.perf_counter()))
        found += [(e, time.perf_counter()) for e in listener.flush()]
        for event, when in found:
            after_event.append(event.latency_s)
            model_ms.append(event.prediction.timings_ms["total"])
            ends = [
                b
                for a, b in stream.references
                if a < event.end_s * SAMPLE_RATE and event.start_s * SAMPLE_RATE < b
            ]
            if ends:
                after_speech.append(when - (started + ends[-1] / SAMPLE_RATE))

    def pct(values: list[float]) -> dict:
        return {
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "n": len(values),
        }

    return {"latency_s": pct(after_event), "after_speech_end_s": pct(after_speech), "model_ms": pct(model_ms)}


def long_stream(pipe: Pipeline, hours: float, utterances: list[np.ndarray]) -> dict:
    rate = 48_000
    listener = Listener(pipe, rate)
    rng = np.random.default_rng(0)
    size = int(CHUNK_S * rate)
    total = int(hours * 3600 / CHUNK_S)
    every = int(120 / CHUNK_S)  # an utterance every 2 minutes of stream
    import soxr

    speech48 = [soxr.resample(u, SAMPLE_RATE, rate).astype(np.float32) for u in utterances]
    samples: list[dict] = []
    events = 0
    cpu, wall = time.process_time(), time.perf_counter()
    pending = np.zeros(0, np.float32)
    for index in range(total):
        chunk = (3e-4 * rng.standard_normal(size)).astype(np.float32)
        if index % every == every // 2:
            pending = speech48[(index // every) % len(speech48)]
        if pending.size:
            take = pending[:size]
            chunk[: take.size] += take
            pending = pending[size:]
        events += len(listener.feed(chunk))
        if index % int(300 / CHUNK_S) == 0:
            samples.append({"stream_min": round(index * CHUNK_S / 60, 1), "vm_rss_mb": round(vm_rss_mb(), 1)})
    events += len(listener.flush())
    samples.append({"stream_min": round(total * CHUNK_S / 60, 1), "vm_rss_mb": round(vm_rss_mb(), 1)})
    return {
        "hours": hours,
        "chunks": total,
        "events": events,
        "expected_events": total // every,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_samples": samples,
    }


def silence_cpu(pipe: Pipeline, minutes: float = 10.0) -> dict:
    listener = Listener(pipe)
    rng = np.random.default_rng(1)
    size = int(CHUNK_S * SAMPLE_RATE)
    count = int(minutes * 60 / CHUNK_S)
    blocks = [(3e-4 * rng.standard_normal(size)).astype(np.float32) for _ in range(256)]
    cpu = time.process_time()
    events = sum(len(listener.feed(blocks[i % 256])) for i in range(count))
    cpu = time.process_time() - cpu
    return {
        "audio_s": minutes * 60,
        "events": events,
        "cpu_s": cpu,
        "cpu_ms_per_audio_s": 1e3 * cpu / (minutes * 60),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()
    manifest = read_manifest(args.bundle)
    pipe = Pipeline.load(args.bundle, threads=args.threads)
    emodb = args.data / "emodb"
    fast_streams = [speech_stream(emodb, count=8, seed=seed) for seed in range(4)]
    paced_streams = [speech_stream(emodb, count=8, seed=seed) for seed in (20, 21)]
    list(pipe.stream(chunks(fast_streams[0].wave[: 3 * SAMPLE_RATE])))  # warm-up
    report: dict = {
        "command": "python " + " ".join(sys.argv),
        "model": manifest.model,
        "size": manifest.size,
        "precision": "fp32",
        "threads": args.threads,
        "chunk_s": CHUNK_S,
        "vad": {"version": VAD_VERSION, "sha256": VAD_SHA256, "options": VadOptions().__dict__},
    }
    report["rtf"] = real_time_factor(pipe, fast_streams)
    print("rtf", report["rtf"], flush=True)
    report["latency"] = latency(pipe, paced_streams)
    print("latency", report["latency"], flush=True)
    report["silence"] = silence_cpu(pipe)
    print("silence", report["silence"], flush=True)
    clips = [fast_streams[0].wave[a:b] for a, b in fast_streams[0].placements]
    report["long"] = long_stream(pipe, args.hours, clips)
    print("long", report["long"], flush=True)
    report["machine"] = machine_info(args.threads)
    report["machine"]["load_average_before"] = list(load_before)
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["machine"]["note"] = (
        "another job (a model training) was loading this 2-core machine during the run"
    )
    write_report(
        args.out, f"stream_runtime-{manifest.model}-{manifest.size}", report, markdown=markdown(report)
    )
    print(markdown(report))


def markdown(r: dict) -> str:
    m, rtf, lat, sil, lng = r["machine"], r["rtf"], r["latency"], r["silence"], r["long"]
    rss = [s["vm_rss_mb"] for s in lng["rss_samples"]]
    return "\n".join(
        [
            f"# Streaming API: {r['model']} {r['size']} {r['precision']}, {r['threads']} thread(s), "
            f"{1e3 * r['chunk_s']:.0f} ms chunks",
            "",
            f"`{r['command']}`",
            "",
            f"Machine: {m.get('cpu')} ({m.get('cpu_class')}), {m.get('logical_cores')} logical cores; load average "
            f"before {m['load_average_before']}, after {m['load_average_after']}: {m['note']}. Silero VAD "
            f"{r['vad']['version']} (sha256 {r['vad']['sha256'][:12]}...), default VadOptions.",
            "",
            *markdown_table(
                ["figure", "value"],
                [
                    [
                        f"real-time factor (wall / CPU), {rtf['audio_s']:.0f} s of real speech streams fed fast",
                        f"{rtf['rtf_wall']:.4f} / {rtf['rtf_cpu']:.4f} ({rtf['events']} events for {rtf['references']} utterances)",
                    ],
                    [
                        f"event latency after the segment's end, p50 / p95 (real-time feeding, n={lat['latency_s']['n']})",
                        f"{1e3 * lat['latency_s']['p50']:.0f} / {1e3 * lat['latency_s']['p95']:.0f} ms",
                    ],
                    [
                        "event delay after the speech ended (phone labels), p50 / p95",
                        f"{1e3 * lat['after_speech_end_s']['p50']:.0f} / {1e3 * lat['after_speech_end_s']['p95']:.0f} ms",
                    ],
                    [
                        "model time per utterance, p50 / p95",
                        f"{lat['model_ms']['p50']:.1f} / {lat['model_ms']['p95']:.1f} ms",
                    ],
                    [
                        f"CPU in silence (VAD only), {sil['audio_s']:.0f} s of low noise",
                        f"{sil['cpu_ms_per_audio_s']:.2f} ms per audio second ({100 * sil['cpu_ms_per_audio_s'] / 1e3:.2f} % of a core)",
                    ],
                    [
                        f"{lng['hours']:g} h stream at 48 kHz in 20 ms chunks ({lng['chunks']} chunks, {lng['events']} events for "
                        f"{lng['expected_events']} utterances)",
                        f"wall {lng['wall_s']:.0f} s, CPU {lng['cpu_s']:.0f} s",
                    ],
                    [
                        "VmRSS over that hour, first / last / max sample",
                        f"{rss[0]:.1f} / {rss[-1]:.1f} / {max(rss):.1f} MB (peak ru_maxrss of the whole run {lng['ru_maxrss_mb']:.1f} MB)",
                    ],
                ],
            ),
            "",
            "VmRSS every 5 stream minutes: "
            + ", ".join(f"{s['stream_min']:g} min {s['vm_rss_mb']:.1f}" for s in lng["rss_samples"]),
            "",
        ]
    )


if __name__ == "__main__":
    main()
