"""An `onnxruntime.quantization.CalibrationDataReader` over cached, fixed-shape stage inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class StageDataReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type information
    """Yields batch-1 feeds (`{input_name: array}`) of one stage; supports rewind and ranges."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self.feeds = list(feeds)
        self.start, self.end = 0, len(self.feeds)
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start + self.position >= self.end:
            return None
        feed = self.feeds[self.start + self.position]
        self.position += 1
        return feed

    def rewind(self) -> None:
        self.position = 0

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = int(start_index), min(int(end_index), len(self.feeds))
        self.position = 0

    def __len__(self) -> int:
        return len(self.feeds)
