"""Extract every class, method, attribute and enum-member name of TensorRT's Python bindings from the real wheels.

The `tensorrt_cu12_bindings` / `tensorrt_cu13_bindings` wheels on PyPI hold the compiled pybind11 module
(`tensorrt_bindings/tensorrt.so`) but not TensorRT's libraries, so they cannot be imported as they are. The module
only calls nine C entry points of libnvinfer / libnvinfer_plugin / libnvonnxparser (factory functions such as
`createInferBuilder_INTERNAL`) and none of them while it registers its classes; this script compiles stand-in
libraries that export those symbols (returning null), imports the package in a subprocess against them, and
writes what `dir()` shows: the names TensorRT's Python API really has, per version. Nothing is ever executed
through the stand-ins.

    pip download --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d /tmp/trt/wheels \
        tensorrt_cu12_bindings==10.3.0 tensorrt_cu12_bindings==10.16.1.11 tensorrt_cu13_bindings==11.4.0.106
    python tools/trt_api_names.py /tmp/trt/wheels/*.whl          # -> tests/data/tensorrt_api/<version>.json

Needs a C compiler (`cc`) and binutils' `nm`. The CUDA runtime names edgeser uses through cuda-python are
extracted the same way from the `cuda-bindings` wheels, which import without a GPU (with `cuda-pathfinder`):

    python tools/trt_api_names.py --cuda cuda_bindings-12.9.10-*.whl cuda_bindings-13.5.0-*.whl \
        --pathfinder cuda_pathfinder-1.9.1-py3-none-any.whl        # -> tests/data/cuda_api/<version>.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "tensorrt_api"
LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")
DUMP = r"""
import importlib, json, sys
package = importlib.import_module("tensorrt_bindings")
names = {"module": sorted(n for n in dir(package) if not n.startswith("__")), "classes": {}}
def visit(prefix, cls, depth=0):
    members = sorted(n for n in dir(cls) if not n.startswith("__"))
    names["classes"][prefix] = members
    for member in members:
        value = getattr(cls, member, None)
        if isinstance(value, type) and depth < 2 and value.__module__.startswith("tensorrt"):
            visit(f"{prefix}.{member}", value, depth + 1)
for name in names["module"]:
    value = getattr(package, name)
    if isinstance(value, type):
        visit(name, value)
names["version"] = getattr(package, "__version__", "")
json.dump(names, sys.stdout)
"""


CUDA_DUMP = r"""
import json, sys
import cuda.bindings as bindings
from cuda.bindings import runtime
classes = {name: sorted(n for n in dir(getattr(runtime, name)) if not n.startswith("__"))
           for name in ("cudaMemcpyKind", "cudaDeviceProp", "cudaError_t")}
json.dump({"version": bindings.__version__, "module": sorted(n for n in dir(runtime) if not n.startswith("__")),
           "classes": classes}, sys.stdout)
"""


def extract_cuda(wheel: Path, pathfinder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="cuda-api-") as tmp:
        site = Path(tmp) / "site"
        for archive in (wheel, pathfinder):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(site)
        out = subprocess.run(
            [sys.executable, "-c", CUDA_DUMP],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(site)},
        )
    names = json.loads(out.stdout)
    names["wheel"] = wheel.name
    names["wheel_sha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return names


def undefined_symbols(module: Path) -> list[str]:
    out = subprocess.run(
        ["nm", "-D", "--undefined-only", str(module)], check=True, capture_output=True, text=True
    ).stdout
    symbols = []
    for line in out.splitlines():
        parts = line.split()
        if (
            len(parts) == 2
            and parts[0] == "U"
            and "@" not in parts[1]
            and not parts[1].startswith(("Py", "_Py"))
        ):
            symbols.append(parts[1])
    return sorted(set(symbols))


def stand_in_libraries(module: Path, major: str, folder: Path) -> None:
    source = folder / "stand_in.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in undefined_symbols(module)))
    for library in LIBRARIES:
        soname = f"lib{library}.so.{major}"
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-o", str(folder / soname), f"-Wl,-soname,{soname}", str(source)],
            check=True,
        )


def extract(wheel: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="trt-api-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root / "site")
        module = root / "site" / "tensorrt_bindings" / "tensorrt.so"
        version = wheel.name.split("-")[1]
        stand_in_libraries(module, version.split(".")[0], root)
        env = {**os.environ, "LD_LIBRARY_PATH": str(root), "PYTHONPATH": str(root / "site")}
        out = subprocess.run(
            [sys.executable, "-c", DUMP], check=True, capture_output=True, text=True, env=env
        )
    names = json.loads(out.stdout)
    names["wheel"] = wheel.name
    names["wheel_sha256"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cuda", action="store_true", help="the wheels are cuda-bindings wheels")
    parser.add_argument("--pathfinder", type=Path, help="the cuda-pathfinder wheel cuda-bindings imports")
    args = parser.parse_args()
    if args.cuda and args.pathfinder is None:
        parser.error("--cuda needs --pathfinder WHEEL")
    args.out = args.out or (OUT.with_name("cuda_api") if args.cuda else OUT)
    args.out.mkdir(parents=True, exist_ok=True)
    for wheel in args.wheels:
        names = extract_cuda(wheel, args.pathfinder) if args.cuda else extract(wheel)
        path = args.out / f"{names['version'] or wheel.name.split('-')[1]}.json"
        path.write_text(json.dumps(names, indent=0, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{path}: {len(names['classes'])} classes, {sum(map(len, names['classes'].values()))} members")


if __name__ == "__main__":
    main()
