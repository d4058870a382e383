"""The INT8 lower bound of one stage on this CPU, and how close the bundle's INT8 graph comes to it.

    python benchmarks/int8_bound.py build/cmgi-paper --stage audio_encoder --seconds 4.5 --threads 2

How the bound is measured:
1. every GEMM of the stage's fp32 graph on a real-speech input of `--seconds` is listed with its shape: each
   MatMul as [batch] x M x K x N, each Conv as its im2col GEMM (M output positions, K = Cin/groups x kernel,
   N = Cout/groups, batch = groups), from the shapes the fp32 graph computes (onnxruntime, extra outputs);
2. each distinct shape is built as a one-node onnxruntime graph `MatMulInteger(u8 [batch, M, K], s8 [K, N])`
   (the kernel the runtime's static INT8 GEMMs run on: QLinearMatMul and MatMulIntegerToFloat use it too) and
   timed with the runtime's session settings, `--threads` and `--spin`;
3. bound = sum over GEMMs of their measured time: the stage with every GEMM in INT8 and nothing else (no
   quantisation, no element-wise work, no attention softmax). The positional conv and attention's two activation
   GEMMs count in INT8 even where the graph keeps them float (the int8 graph runs attention as a float
   MultiHeadAttention), so the bound is a true lower bound;
4. the bundle's INT8 graph of the stage (and the fp32 graph) run on the same input in the same interleaved
   rounds as the GEMMs, so background load hits bound and graph alike: % of bound = bound / INT8 p50, and per
   round (that round's GEMMs against that round's INT8 run: the steadier figure on a shared machine).

Prints a table and writes benchmarks/results/int8_bound-<model>-<cpu class>.{json,md} (with the machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeser.bench.clips import load_speech
from edgeser.bundle import validate_bundle
from edgeser.machine import machine_info
from edgeser.measures import interleaved_times, warm_up
from edgeser.reports import markdown_table, write_report
from edgeser.runtime.sessions import make_session

RESULTS = REPO / "benchmarks" / "results"


def gemm_shapes(
    fp32: Path, feeds: dict[str, np.ndarray], workdir: Path
) -> Counter[tuple[int, int, int, int]]:
    """(batch, M, K, N) of every MatMul and Conv of the graph on `feeds`, with counts."""
    model = onnx.load(str(fp32))
    wanted = [n for n in model.graph.node if n.op_type in ("MatMul", "Conv")]
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    existing = {o.name for o in model.graph.output}
    for name in {t for n in wanted for t in (*n.input[:2], n.output[0]) if t not in inits} - existing:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    probe = workdir / "shapes.onnx"
    onnx.save(model, str(probe), save_as_external_data=True, location="shapes.data")
    session = make_session(probe, None, 2)
    names = [o.name for o in session.get_outputs()]
    shapes = {n: list(v.shape) for n, v in zip(names, session.run(None, feeds))}
    del session
    found: Counter[tuple[int, int, int, int]] = Counter()
    for node in wanted:
        a = shapes.get(node.input[0], inits.get(node.input[0]))
        b = inits.get(node.input[1], shapes.get(node.input[1]))
        if node.op_type == "MatMul":
            batch = int(np.prod(a[:-2])) if len(b) > 2 else 1
            m = int(np.prod(a[:-1])) if len(b) == 2 else a[-2]
            found[(batch, m, a[-1], b[-1])] += 1
        else:
            groups = next((at.i for at in node.attribute if at.name == "group"), 1)
            out = shapes[node.output[0]]
            positions = int(np.prod(out[2:])) * out[0]
            found[(groups, positions, int(np.prod(b[1:])), b[0] // groups)] += 1
    return found


def integer_gemm(shape: tuple[int, int, int, int], path: Path) -> dict[str, np.ndarray]:
    """A one-node MatMulInteger graph (u8 activations x s8 weights) of `shape`; returns its feeds."""
    batch, m, k, n = shape
    rng = np.random.default_rng(0)
    weight_shape = [batch, k, n] if batch > 1 else [k, n]
    weight = numpy_helper.from_array(rng.integers(-127, 128, weight_shape, dtype=np.int8), "b")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "a_zero")
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [batch, m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [weight, zero],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return {"a": rng.integers(0, 256, (batch, m, k), dtype=np.uint8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--stage", default="audio_encoder")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--clips", action="append", default=[], help="Speech source (see edgeser bench --clips)."
    )
    parser.add_argument(
        "--graph", type=Path, help="Time this INT8 graph of the stage instead of the bundle's."
    )
    parser.add_argument(
        "--spin",
        action="store_true",
        help="Workers spin during runs (the runtime's `spin`), for the GEMMs and the graphs alike.",
    )
    args = parser.parse_args()
    manifest = validate_bundle(args.bundle, "fp32" if args.graph else args.precision)
    wave = load_speech(args.clips, args.seconds + 1).clips(args.seconds, 1)[0]
    feeds = {"waveform": wave[None], "lengths": np.array([wave.size], np.int64)}
    with tempfile.TemporaryDirectory(prefix="int8-bound-") as tmp:
        shapes = gemm_shapes(args.bundle / manifest.precisions["fp32"][args.stage].path, feeds, Path(tmp))
        runs: dict[object, Callable[[], object]] = {}
        for index, shape in enumerate(shapes):
            path = Path(tmp) / f"gemm{index}.onnx"
            gemm_feeds = integer_gemm(shape, path)
            session = make_session(path, None, args.threads, args.spin)
            runs[shape] = lambda s=session, f=gemm_feeds: s.run(None, f)
        paths = {
            "fp32": args.bundle / manifest.precisions["fp32"][args.stage].path,
            args.precision: args.graph or args.bundle / manifest.precisions[args.precision][args.stage].path,
        }
        graphs = {p: make_session(path, None, args.threads, args.spin) for p, path in paths.items()}
        for name, session in graphs.items():
            runs[name] = lambda s=session: s.run(None, feeds)
        warm_up(runs, 1)
        load_before = [round(x, 2) for x in os.getloadavg()]
        times = interleaved_times(runs, args.rounds)
        load_after = [round(x, 2) for x in os.getloadavg()]
    median = {key: float(np.median(v)) for key, v in times.items()}
    # each round's bound against the same round's INT8 run: pairs what the machine did at one time
    per_round = [
        sum(count * times[s][r] for s, count in shapes.items()) / times[args.precision][r]
        for r in range(args.rounds)
    ]
    macs = sum(count * b * m * k * n for (b, m, k, n), count in shapes.items())
    bound_ms = sum(count * median[shape] for shape, count in shapes.items())
    int8_ms, fp32_ms = median[args.precision], median["fp32"]
    rows = sorted(((count * median[s], s, count) for s, count in shapes.items()), reverse=True)
    result = {
        "bundle": str(args.bundle),
        "model": f"{manifest.model}/{manifest.size}",
        "stage": args.stage,
        "precision": args.precision,
        "graph": str(args.graph) if args.graph else None,
        "seconds": args.seconds,
        "threads": args.threads,
        "rounds": args.rounds,
        "spin": args.spin,
        "gmac": macs / 1e9,
        "bound_ms": bound_ms,
        "int8_gop_per_s": 2 * macs / bound_ms / 1e6,
        "int8_graph_ms": int8_ms,
        "fp32_graph_ms": fp32_ms,
        "fraction_of_bound": bound_ms / int8_ms,
        "fraction_per_round": {
            "median": float(np.median(per_round)),
            "min": min(per_round),
            "max": max(per_round),
            "quartiles": [float(q) for q in np.percentile(per_round, [25, 75])],
        },
        "gemms": [
            {
                "batch": s[0],
                "m": s[1],
                "k": s[2],
                "n": s[3],
                "count": c,
                "ms_each": median[s],
                "gop_per_s": 2 * np.prod(s) / median[s] / 1e6,
            }
            for _, s, c in rows
        ],
        "load_before": load_before,
        "load_after": load_after,
        "machine": machine_info(args.threads),
        "command": "python " + " ".join(sys.argv),
    }
    m = result["machine"]
    lines = [
        f"# INT8 bound: {result['model']} {args.stage}, {args.seconds:g} s, {args.threads} threads"
        f"{', spinning workers' if args.spin else ''}",
        "",
        (
            f"{m['cpu']} ({m['cpu_class']}; {', '.join(m['cpu_flags'])}), load {load_before} -> {load_after}, "
            f"{args.rounds} interleaved rounds."
        ),
        "",
        f"- GEMM work: {result['gmac']:.2f} GMAC in {sum(shapes.values())} GEMMs",
        (
            f"- INT8 bound (MatMulInteger u8 x s8, per shape): **{bound_ms:.0f} ms** "
            f"({result['int8_gop_per_s']:.0f} GOP/s)"
        ),
        (
            f"- bundle {args.precision}: {int8_ms:.0f} ms p50 -> **{100 * result['fraction_of_bound']:.1f} %** of "
            f"the bound; fp32 {fp32_ms:.0f} ms"
        ),
        (
            f"- per round (that round's bound / that round's {args.precision} run): median "
            f"{100 * result['fraction_per_round']['median']:.1f} %, quartiles "
            f"{' / '.join(f'{100 * q:.1f}' for q in result['fraction_per_round']['quartiles'])} %, range "
            f"{100 * min(per_round):.1f} to {100 * max(per_round):.1f} %"
        ),
        "",
        *markdown_table(
            ["batch x M x K x N", "count", "ms each", "GOP/s"],
            [
                [
                    f"{g['batch']} x {g['m']} x {g['k']} x {g['n']}",
                    str(g["count"]),
                    f"{g['ms_each']:.2f}",
                    f"{g['gop_per_s']:.0f}",
                ]
                for g in result["gemms"]
            ],
        ),
    ]
    lines += ["", f"Command: `{result['command']}`"]
    name = f"int8_bound-{manifest.model}-{manifest.size}-{m['cpu_class']}{'-spin' if args.spin else ''}"
    write_report(RESULTS, name, result, markdown="\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
