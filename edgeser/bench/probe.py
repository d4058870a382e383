"""Cold start and peak memory of one benchmark row, measured in a fresh interpreter.

    python -m edgeser.bench.probe '{"spec": {...}, "threads": 2, "clip": "clip.npy", "runs": 3}'

Prints one JSON object: import, load and first-run seconds, cold start (load + first run), the median of the
following runs, and the process's peak resident memory (MB).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgeser.errors import BundleError, MissingDependencyError, ProviderError


def probe(request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    from edgeser.bench.runners import VariantSpec, load_chain

    imported = time.perf_counter()
    spec = VariantSpec.from_dict(request["spec"])
    chain = load_chain(spec, int(request["threads"]))
    loaded = time.perf_counter()
    wave = np.load(request["clip"])
    chain([wave])
    first = time.perf_counter()
    steady = []
    for _ in range(int(request.get("runs", 3))):
        t = time.perf_counter()
        chain([wave])
        steady.append(time.perf_counter() - t)
    peak_kb = peak_rss_kb()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "first_run_s": first - loaded,
        "cold_start_s": first - imported,
        "steady_s": float(np.median(steady)) if steady else None,
        "peak_rss_mb": peak_kb / 1024.0,
    }


def peak_rss_kb() -> float:
    """This process's peak resident memory (kB): VmHWM, which starts afresh at exec (ru_maxrss on Linux keeps the
    parent's high-water mark across fork + exec, so a child of a big benchmark process would report the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def probe_in_subprocess(
    spec: dict[str, Any], threads: int, clip: Path, runs: int = 3, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Run `probe` in a fresh Python; a failure becomes {"error": ...} (one benchmark row must not stop the rest)."""
    request = json.dumps({"spec": spec, "threads": threads, "clip": str(clip), "runs": runs})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edgeser.bench.probe", request],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1][:300] if lines else f"exit status {done.returncode}"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": "no result printed"}
    return result


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m edgeser.bench.probe '<json request>'")
    try:
        print(json.dumps(probe(json.loads(sys.argv[1]))))
    except (BundleError, MissingDependencyError, ProviderError) as err:  # what loading a row raises: one line
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
