"""Machine and library facts recorded next to every benchmark result."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path


def machine_info() -> dict[str, object]:
    """CPU model, core count, memory, OS, Python and library versions."""
    cpu = "unknown"
    flags: list[str] = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f in {"avx2", "avx512f", "avx512_vnni", "amx_int8"}]
    memory_gb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(total_kb / 1024**2, 1)
    versions = {}
    for package in ("edgeser", "numpy", "onnxruntime", "onnx", "torch", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
