"""Calibration for quantisation: pick clips off the evaluation split, capture each stage's real inputs, cache them.

select_calibration_set  -> which clips (training side / a held-out IEMOCAP session; never evaluation)
capture_stage_inputs    -> their stage inputs, through the fp32 runtime, bucketed to fixed shapes
calibrate_bundle        -> both, cached as `BUNDLE/calibration/{inputs.npz, calibration.json}`
CalibrationCache        -> the cache read back; `StageDataReader` feeds it to onnxruntime's calibrators
"""

from edgeser.calibrate.cache import CALIBRATION_DIR, CalibrationCache, calibrate_bundle, read_calibration
from edgeser.calibrate.capture import CapturedInputs, capture_stage_inputs
from edgeser.calibrate.selection import CalibrationSet, select_calibration_set, validation_slice

__all__ = [
    "CALIBRATION_DIR",
    "CalibrationCache",
    "CalibrationSet",
    "CapturedInputs",
    "calibrate_bundle",
    "capture_stage_inputs",
    "read_calibration",
    "select_calibration_set",
    "validation_slice",
]
