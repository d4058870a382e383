"""Where an audio-encoder graph spends its time: onnxruntime's profiler, ms per op type and the top nodes.

    python benchmarks/stage_profile.py build/cmgi-paper/int8/audio_encoder.onnx --seconds 4.5 --threads 2 --runs 4

The session is the runtime's (all optimisations, workers not spinning); the averages are over every run the
profiler records, the first (warm-up) one included.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.bench.clips import load_speech


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--top", type=int, default=18)
    parser.add_argument(
        "--clips", action="append", default=[], help="Speech source (see edgeser bench --clips)."
    )
    args = parser.parse_args()
    wave = load_speech(args.clips, args.seconds + 1).clips(args.seconds, 1)[0]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = (
        args.threads,
        1,
        3,
    )
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / "edgeser-profile")
    session = ort.InferenceSession(str(args.graph), options, providers=["CPUExecutionProvider"])
    feeds = {"waveform": wave[None], "lengths": np.array([wave.size], np.int64)}
    for _ in range(args.runs + 1):
        session.run(None, feeds)
    path = session.end_profiling()
    events = json.loads(Path(path).read_text())
    Path(path).unlink()
    runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    by_op: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"]
    count = len(runs)
    print(
        f"{args.graph}: {args.seconds:g} s clip, {args.threads} threads, load {os.getloadavg()[0]:.2f}; "
        f"model_run mean {np.mean(runs) / 1e3:.1f} ms over {count} runs (first one a warm-up)"
    )
    for op, micros in by_op.most_common(args.top):
        print(f"  {op:28s} {micros / count / 1e3:8.1f} ms")
    print("top nodes:")
    for node, micros in by_node.most_common(10):
        print(f"  {node[-70:]:70s} {micros / count / 1e3:8.1f} ms")
    print(f"Command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
