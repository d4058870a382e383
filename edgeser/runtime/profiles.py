"""TensorRT optimisation profiles: defaults from the clips' real lengths recorded by `edgeser calibrate`,
overrides from `--profile STAGE:INPUT=MIN,OPT,MAX`, and the check that every dynamic axis is covered.

Defaults, per named axis of the bundle's stage inputs:
- `samples`: min / median / max of the calibration clips' own lengths (`calibration.json` `length_stats`), the
  max rounded up to a whole second so a clip a little longer than any calibration clip still fits;
- `frames`: those sample counts through the bundle's frame layout (the same arithmetic the runtime uses);
- `tokens`: min / median of the clips' token counts; max is the tokenizer's truncation length
  (`text_max_length`, which no transcript can exceed) or, without one, the calibration maximum;
- `batch`: 1 / 1 / 8: single-clip latency is what robots and kiosks need (opt 1), and 8 is the batch size of
  `Pipeline.batch`, the only caller that sends more than one clip.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeser.errors import ProfileError
from edgeser.stages import apply_frame_layout

SAMPLE_RATE = 16_000
DEFAULT_BATCH = (1, 1, 8)
Shape = tuple[int, ...]


@dataclass(frozen=True)
class InputProfile:
    """min / opt / max shapes of one engine input."""

    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))

    def covers(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max)
        )


Profiles = dict[str, dict[str, InputProfile]]  # stage -> input -> profile


def length_stats(bundle: Path) -> dict[str, dict[str, int]] | None:
    """`length_stats` from `BUNDLE/calibration/calibration.json`, or None when absent (not calibrated yet)."""
    path = bundle / "calibration" / "calibration.json"
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text(encoding="utf-8")).get("length_stats")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: unreadable calibration provenance ({err})") from err
    return stats or None


def axis_ranges(manifest: Any, stats: dict[str, dict[str, int]] | None) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every named axis that can be derived (see the module docstring)."""
    ranges: dict[str, tuple[int, int, int]] = {"batch": DEFAULT_BATCH}
    samples = (stats or {}).get("samples")
    if samples:
        low, opt = int(samples["min"]), int(samples["opt"])
        high = math.ceil(int(samples["max"]) / SAMPLE_RATE) * SAMPLE_RATE
        while int(apply_frame_layout([low], manifest.frame_layout)[0]) < 1:
            low += 1  # the shortest clip must give at least one frame
        low, opt = min(low, opt), max(low, opt)
        ranges["samples"] = (low, opt, max(opt, high))
        frames = [int(f) for f in apply_frame_layout(list(ranges["samples"]), manifest.frame_layout)]
        ranges["frames"] = (frames[0], frames[1], frames[2])
    tokens = (stats or {}).get("tokens")
    if tokens:
        low, opt = max(1, int(tokens["min"])), max(1, int(tokens["opt"]))
        high = int(manifest.text_max_length or tokens["max"])
        ranges["tokens"] = (min(low, opt, high), min(max(low, opt), high), high)
    return ranges


_SHAPE = re.compile(r"^\d+(x\d+)*$")


def parse_profile_option(text: str) -> tuple[str, str, InputProfile]:
    """`STAGE:INPUT=MIN,OPT,MAX` with shapes like `1x16000` -> (stage, input, profile)."""
    head, _, body = text.partition("=")
    stage, _, name = head.partition(":")
    shapes = [s.strip().lower() for s in body.split(",")]
    if not stage or not name or len(shapes) != 3 or not all(_SHAPE.match(s) for s in shapes):
        raise ProfileError(
            f"--profile {text!r}: expected STAGE:INPUT=MIN,OPT,MAX with shapes like 1x16000, "
            "e.g. audio_encoder:waveform=1x8000,1x64000,8x160000"
        )
    parsed = [tuple(int(v) for v in s.split("x")) for s in shapes]
    return stage.strip(), name.strip(), InputProfile(parsed[0], parsed[1], parsed[2])


def validate_profiles(manifest: Any, profiles: Profiles) -> None:
    """Ranks and static axes match the graph, min <= opt <= max, and a named axis has one range per stage."""
    for stage, inputs in profiles.items():
        if stage not in manifest.stages:
            raise ProfileError(
                f"--profile {stage}: the bundle has no such stage ({', '.join(manifest.stages)})"
            )
        specs = {t.name: t for t in manifest.stages[stage].inputs}
        axes: dict[str, tuple[tuple[int, int, int], str]] = {}
        for name, profile in inputs.items():
            if name not in specs:
                raise ProfileError(
                    f"--profile {stage}:{name}: stage {stage} has no input {name} "
                    f"(inputs: {', '.join(specs)})"
                )
            spec = specs[name]
            for shape in (profile.min, profile.opt, profile.max):
                if len(shape) != len(spec.shape):
                    raise ProfileError(
                        f"profile {stage}:{name}: shape {shape} has rank {len(shape)}, "
                        f"the graph input has rank {len(spec.shape)} {spec.shape}"
                    )
            for axis, (lo, opt, hi) in enumerate(zip(profile.min, profile.opt, profile.max)):
                dim = spec.shape[axis]
                if not 1 <= lo <= opt <= hi:
                    raise ProfileError(
                        f"profile {stage}:{name}: axis {axis} needs 1 <= min <= opt <= max, "
                        f"got {lo}, {opt}, {hi}"
                    )
                if isinstance(dim, int) and not lo == opt == hi == dim:
                    raise ProfileError(f"profile {stage}:{name}: axis {axis} is fixed at {dim} in the graph")
                if isinstance(dim, str):
                    seen = axes.setdefault(dim, ((lo, opt, hi), name))
                    if seen[0] != (lo, opt, hi):
                        raise ProfileError(
                            f"profile {stage}: axis {dim!r} is {seen[0]} for {seen[1]} but "
                            f"{(lo, opt, hi)} for {name}; give both inputs the same range"
                        )


def resolve_profiles(
    bundle: Path, manifest: Any, stages: list[str], options: tuple[str, ...] = ()
) -> tuple[Profiles, list[str], str]:
    """Default profiles with `--profile` overrides applied and validated; also uncovered inputs and the source.

    An override also sets its named axes for the stage's other inputs (a waveform batch range applies to
    `lengths` too), so one override per axis is enough.
    """
    stats = length_stats(bundle)
    base = axis_ranges(manifest, stats)
    overrides: Profiles = {}
    for text in options:
        stage, name, profile = parse_profile_option(text)
        overrides.setdefault(stage, {})[name] = profile
    validate_profiles(manifest, overrides)
    profiles: Profiles = {}
    for stage in stages:
        ranges = dict(base)
        for name, profile in overrides.get(stage, {}).items():
            spec = next(t for t in manifest.stages[stage].inputs if t.name == name)
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str):
                    ranges[dim] = (profile.min[axis], profile.opt[axis], profile.max[axis])
        for spec in manifest.stages[stage].inputs:
            if spec.name in overrides.get(stage, {}):
                profiles.setdefault(stage, {})[spec.name] = overrides[stage][spec.name]
                continue
            dims = [ranges.get(d) if isinstance(d, str) else (int(d),) * 3 for d in spec.shape]
            if all(d is not None for d in dims):
                profiles.setdefault(stage, {})[spec.name] = InputProfile(
                    *(tuple(d[i] for d in dims) for i in range(3))  # type: ignore[index]
                )
    validate_profiles(manifest, profiles)
    missing = [
        f"{stage}:{spec.name}"
        for stage in stages
        for spec in manifest.stages[stage].inputs
        if any(isinstance(d, str) for d in spec.shape) and spec.name not in profiles.get(stage, {})
    ]
    source = "calibration length statistics" if stats else "none (no calibration length statistics)"
    if options:
        source += f" + {len(options)} --profile override(s)"
    return profiles, missing, source
