"""Speech segmenters compared on real speech with known silences: Silero VAD (`edgeser.runtime.vad`, what
`Pipeline.long` and `Listener` use) against the energy splitter (`edgeser.runtime.segment`).

    python benchmarks/vad_stream.py [--data ../shared/data] [--streams 4] [--count 8]

Each stream joins `--count` whole EMO-DB clips (one speaker after another) with 1-2.5 s silences; the reference
speech range of each clip comes from EMO-DB's phone labels (`edgeser.data.streams`). Conditions: clean, and white
noise mixed in at 20, 10 and 5 dB SNR (speech power over the reference ranges), and mains hum at 10 dB. Figures
per segmenter: references found (a region overlaps them), missed, false regions (overlapping no reference),
merged (one region over two references) and split references, boundary errors |start|, |end| in seconds
(regions as given to the model, padding included), and CPU per second of audio. Then 5 s of non-speech signals
(white noise, 50/60 Hz hum, DC offset with noise, clicks): regions found (the right answer is none).

Writes benchmarks/results/vad_stream.json and .md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.audio import SAMPLE_RATE
from edgeser.data.streams import clicks, dc_offset, hum, mix_at_snr, speech_stream, white_noise
from edgeser.machine import machine_info
from edgeser.reports import markdown_table, write_report
from edgeser.runtime.segment import speech_regions
from edgeser.runtime.vad import VAD_PACKAGE, VAD_SHA256, VAD_VERSION, VadOptions, detect_speech

Regions = list[tuple[int, int]]


def silero(wave: np.ndarray) -> Regions:
    return [(r.start, r.end) for r in detect_speech(wave)[0]]


def energy(wave: np.ndarray) -> Regions:
    return speech_regions(wave)


SEGMENTERS = {"silero-vad": silero, "energy": energy}


def score(found: Regions, references: Regions) -> dict[str, float]:
    """Hits, misses, false, merged, split regions and boundary errors of `found` against `references`."""

    def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    hits, starts, ends, split = 0, [], [], 0
    for ref in references:
        over = [r for r in found if overlaps(r, ref)]
        if not over:
            continue
        hits += 1
        split += len(over) > 1
        starts.append(abs(over[0][0] - ref[0]) / SAMPLE_RATE)
        ends.append(abs(over[-1][1] - ref[1]) / SAMPLE_RATE)
    false = sum(not any(overlaps(r, ref) for ref in references) for r in found)
    merged = sum(sum(overlaps(r, ref) for ref in references) > 1 for r in found)
    return {
        "references": len(references),
        "found": hits,
        "missed": len(references) - hits,
        "false": false,
        "merged": merged,
        "split": split,
        "start_err_mean_s": float(np.mean(starts)) if starts else None,
        "start_err_max_s": float(np.max(starts)) if starts else None,
        "end_err_mean_s": float(np.mean(ends)) if ends else None,
        "end_err_max_s": float(np.max(ends)) if ends else None,
    }


def add(total: dict[str, float], part: dict[str, float]) -> None:
    for key in ("references", "found", "missed", "false", "merged", "split"):
        total[key] = total.get(key, 0) + part[key]
    for key in ("start_err", "end_err"):
        total.setdefault(f"{key}_all", []).append(part[f"{key}_mean_s"])  # type: ignore[attr-defined]
        if part[f"{key}_max_s"] is not None:
            total[f"{key}_max_s"] = max(total.get(f"{key}_max_s", 0.0), part[f"{key}_max_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    streams = [
        speech_stream(args.data / "emodb", count=args.count, seed=seed) for seed in range(args.streams)
    ]
    conditions = {"clean": lambda s, seed: s.wave}
    for snr in (20, 10, 5):
        conditions[f"white {snr} dB"] = lambda s, seed, snr=snr: mix_at_snr(
            s.wave, white_noise(s.wave.size, seed=seed), snr, s.references
        )
    conditions["hum 50 Hz 10 dB"] = lambda s, seed: mix_at_snr(
        s.wave, hum(s.wave.size, seed=seed), 10, s.references
    )
    rows = []
    for condition, make in conditions.items():
        for name, segment in SEGMENTERS.items():
            total: dict = {}
            cpu = 0.0
            seconds = 0.0
            for seed, stream in enumerate(streams):
                wave = make(stream, seed)
                started = time.process_time()
                found = segment(wave)
                cpu += time.process_time() - started
                seconds += wave.size / SAMPLE_RATE
                add(total, score(found, stream.references))
            starts = [x for x in total.pop("start_err_all") if x is not None]
            ends = [x for x in total.pop("end_err_all") if x is not None]
            rows.append(
                {
                    "condition": condition,
                    "segmenter": name,
                    **total,
                    "start_err_mean_s": float(np.mean(starts)) if starts else None,
                    "end_err_mean_s": float(np.mean(ends)) if ends else None,
                    "cpu_ms_per_audio_s": 1e3 * cpu / seconds,
                }
            )
            print(rows[-1], flush=True)
    nonspeech = {
        "white noise": white_noise(5 * SAMPLE_RATE),
        "hum 50 Hz": hum(5 * SAMPLE_RATE, 50),
        "hum 60 Hz": hum(5 * SAMPLE_RATE, 60),
        "DC + noise": dc_offset(5 * SAMPLE_RATE),
        "clicks": clicks(5 * SAMPLE_RATE),
    }
    noise_rows = [
        {
            "signal": signal,
            **{name: len(segment(wave)) for name, segment in SEGMENTERS.items()},
            "speech_ratio": round(detect_speech(wave)[1], 4),
        }
        for signal, wave in nonspeech.items()
    ]
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(1),
        "vad": {
            "package": VAD_PACKAGE,
            "version": VAD_VERSION,
            "sha256": VAD_SHA256,
            "options": VadOptions().__dict__,
        },
        "streams": [
            {"clips": [p.name for p in s.clips], "seconds": s.wave.size / SAMPLE_RATE} for s in streams
        ],
        "speech": rows,
        "nonspeech": noise_rows,
    }
    write_report(args.out, "vad_stream", report, markdown=markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    machine = report["machine"]
    lines = [
        "# Speech segmenters on real speech with known silences",
        "",
        f"`{report['command']}`; {machine.get('cpu')}, load average {machine.get('load_average')} "
        "(another job was running beside it).",
        "",
        f"{len(report['streams'])} streams of EMO-DB clips with 1-2.5 s silences, "
        f"{sum(s['seconds'] for s in report['streams']):.0f} s in all; reference speech ranges from EMO-DB's "
        "phone labels. Silero VAD: "
        f"{report['vad']['package']} {report['vad']['version']} (`silero_vad.onnx` sha256 "
        f"{report['vad']['sha256'][:12]}...), default `VadOptions`; energy: default `SegmentOptions`.",
        "",
        *markdown_table(
            [
                "condition",
                "segmenter",
                "refs",
                "found",
                "missed",
                "false",
                "merged",
                "split",
                "mean abs start err s",
                "mean abs end err s",
                "max start / end err s",
                "CPU ms per audio s",
            ],
            [
                [
                    str(r["condition"]),
                    str(r["segmenter"]),
                    *(str(r[k]) for k in ("references", "found", "missed", "false", "merged", "split")),
                    num(r["start_err_mean_s"]),
                    num(r["end_err_mean_s"]),
                    f"{num(r.get('start_err_max_s'))} / {num(r.get('end_err_max_s'))}",
                    f"{r['cpu_ms_per_audio_s']:.2f}",
                ]
                for r in report["speech"]
            ],
        ),
    ]
    lines += [
        "",
        "Non-speech, 5 s each: regions found (the right answer is 0) and the VAD's speech ratio.",
        "",
        *markdown_table(
            ["signal", "silero-vad regions", "energy regions", "VAD speech ratio"],
            [
                [str(r[k]) for k in ("signal", "silero-vad", "energy", "speech_ratio")]
                for r in report["nonspeech"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
