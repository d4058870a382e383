"""Activation ranges of a stage from the bundle's cached calibration inputs, computed once per method and cached
(`BUNDLE/calibration/ranges/`), with a histogram collector that survives near-constant tensors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import onnx

from edgeser.bundle import CALIBRATION_METHODS, CalibrationMethod
from edgeser.errors import BundleError

if TYPE_CHECKING:
    from edgeser.calibrate.cache import CalibrationCache


class RangeSettings(Protocol):
    """What `activation_ranges` reads of the INT8 settings (`edgeser.quantize.variants.Int8Options`)."""

    @property
    def method(self) -> CalibrationMethod: ...

    @property
    def percentile(self) -> float: ...

    @property
    def op_types(self) -> tuple[str, ...]: ...

    def signature(self) -> str: ...


METHODS = CALIBRATION_METHODS
# Items per collect_data call (one shape per call). Histogram calibrators hold every calibrated tensor of the
# items of a call: HuBERT-large peaks near 10 GB of RAM at 8 items, so they get 2.
CALIBRATION_CHUNK: dict[CalibrationMethod, int] = {"minmax": 8, "percentile": 2, "entropy": 2}


def calibration_method(name: CalibrationMethod) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if name not in table:
        raise BundleError(f"unknown calibration method {name!r}; choose {', '.join(METHODS)}")
    return table[name]


def robust_collector(calibrator: Any) -> None:
    """Give a histogram calibrator a collector that survives near-constant tensors.

    onnxruntime's `HistogramCollector` starts each absolute-value histogram at `[min |x|, max |x|]` in float32
    and fails ("Too many bins for data range") when that span is below 2048 float32 steps, e.g. the uniform
    attention probabilities of a freshly initialised model. Such first histograms start at 0 here instead;
    everything else is onnxruntime's own code.
    """
    import numpy as np
    from onnxruntime.quantization.calibrate import HistogramCalibrater, HistogramCollector

    if not isinstance(calibrator, HistogramCalibrater) or calibrator.collector is not None:
        return

    class RobustHistogramCollector(HistogramCollector):  # type: ignore[misc]
        def collect_absolute_value(self, name_to_arr: dict[str, Any]) -> None:
            rest = {}
            for tensor, data in name_to_arr.items():
                values = np.asarray(data).ravel()
                magnitudes = np.abs(values)
                if tensor in self.histogram_dict or values.size == 0:
                    rest[tensor] = data
                    continue
                low, high = float(np.nanmin(magnitudes)), float(np.nanmax(magnitudes))
                if high - low > 4 * self.num_bins * float(np.spacing(np.float32(high))):
                    rest[tensor] = data
                    continue
                hist, edges = np.histogram(
                    magnitudes, bins=self.num_bins, range=(0.0, high if high > 0 else 1.0)
                )
                self.histogram_dict[tensor] = (
                    hist,
                    edges.astype(magnitudes.dtype),
                    np.nanmin(values),
                    np.nanmax(values),
                )
            if rest:
                super().collect_absolute_value(rest)

    calibrator.collector = RobustHistogramCollector(
        method=calibrator.method,
        symmetric=calibrator.symmetric,
        num_bins=calibrator.num_bins,
        num_quantized_bins=calibrator.num_quantized_bins,
        percentile=calibrator.percentile,
        scenario=calibrator.scenario,
    )


def activation_ranges(
    prepared: Path,
    stage: str,
    cache: CalibrationCache,
    options: RangeSettings,
    workdir: Path,
    variant: str = "",
) -> Path:
    """Activation ranges of `stage` from the cached calibration inputs, computed once per method and cached;
    `variant` names a rewritten graph (SmoothQuant scales) whose ranges differ from the plain one's."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from edgeser.calibrate.reader import StageDataReader

    target = cache.ranges_path(stage, options.method, options.signature() + variant)
    if target.is_file():
        return target
    extra = {"percentile": options.percentile} if options.method == "percentile" else {}
    calibrator = create_calibrator(
        prepared,
        list(options.op_types),
        augmented_model_path=str(workdir / f"{stage}.augmented.onnx"),
        calibrate_method=calibration_method(options.method),
        extra_options=extra,
    )
    robust_collector(calibrator)
    inputs = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress to stdout
        for _, feeds in cache.stage_feeds(stage, inputs):
            chunk = CALIBRATION_CHUNK[options.method]
            for start in range(0, len(feeds), chunk):
                calibrator.collect_data(StageDataReader(feeds[start : start + chunk]))
        ranges = calibrator.compute_data()
    del calibrator
    save_tensors_data(ranges, target)
    return target
