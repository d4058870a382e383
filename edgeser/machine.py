"""What a report or benchmark ran on: CPU model and its int8-relevant flags, GPU, versions, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

# CPU flags that decide INT8 speed: AVX2 (u8 x s8 via maddubs), AVX-512, VNNI (AVX-512 or AVX) and AMX.
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def cpu_info() -> dict[str, Any]:
    """CPU model name and the int8-relevant flags present (Linux /proc/cpuinfo; elsewhere what platform says)."""
    model, flags = platform.processor() or "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split()) & set(INT8_FLAGS)
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": sorted(flags), "cpu_class": cpu_class(flags)}


def cpu_class(flags: set[str] | list[str]) -> str:
    """The INT8 kernel class a CPU gets: amx, avx512-vnni, avx-vnni, avx512, avx2 or baseline."""
    present = set(flags)
    if "amx_int8" in present:
        return "amx"
    if "avx512_vnni" in present:
        return "avx512-vnni"
    if "avx_vnni" in present:
        return "avx-vnni"
    if "avx512bw" in present or "avx512f" in present:
        return "avx512"
    return "avx2" if "avx2" in present else "baseline"


def gpu_info() -> list[dict[str, str]]:
    """GPUs nvidia-smi reports (name, memory, driver, compute capability); empty without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(dict(zip(("name", "memory", "driver", "compute_capability"), parts)))
    return gpus


def machine_info(threads: int | None) -> dict[str, Any]:
    """CPU, GPU, cores, load and library versions, for reports and benchmarks."""
    from importlib import metadata

    versions = {}
    for package in ("edgeser", "onnxruntime", "onnx", "torch", "numpy", "tensorrt", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        load = []
    return {
        **cpu_info(),
        "gpus": gpu_info(),
        "logical_cores": os.cpu_count(),
        "load_average": load,
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
