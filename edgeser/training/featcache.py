"""Hidden states of the frozen Whisper encoder, computed once per clip and kept on disk.

Training a head on a frozen encoder re-runs the same encoder on the same clips every epoch; on two CPU cores
that is most of the time. `FeatureCache` stores, per clip and window, every hidden state the encoder has
(the input of each block and the final output: `[layers + 1, frames, dim]`, float16) under
`ROOT/<encoder digest>/<window>/`, keyed by the clip id. The digest is the sha256 of the CTranslate2
`model.bin` the encoder was read from, so another Whisper never reads this one's features.

Windows: `cut` (the clip alone, what the exported `audio_encoder` computes) and `padded` (Whisper's own 30 s
window: the clip zero-padded to 480,000 samples, then only the clip's own frames kept).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from edgeser.audio import load_audio
from edgeser.data.records import Utterance
from edgeser.errors import DataError
from edgeser.files import write_bytes_atomic
from edgeser.modelling.whisper import WINDOW_SAMPLES, WhisperLogMel, load_whisper_encoder, whisper_model_dir
from edgeser.progress import SILENT, Progress

FeatureWindow = Literal["cut", "padded"]
WINDOWS: tuple[FeatureWindow, ...] = get_args(FeatureWindow)


def pooled(hidden: np.ndarray, layer: int | str = "final") -> np.ndarray:
    """Mean and standard deviation over frames of one hidden state (`final` = the last), float64 `[2 D]`;
    `all`: those of every hidden state, concatenated in layer order, `[layers * 2 D]`."""
    if layer == "all":
        return np.concatenate([pooled(hidden, k) for k in range(hidden.shape[0])])
    x = hidden[-1 if layer == "final" else int(layer)].astype(np.float64)
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


class FeatureCache:
    """Per-clip hidden states of the Whisper tiny.en encoder (see the module docstring)."""

    def __init__(self, root: Path, model_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else whisper_model_dir()
        digest = hashlib.sha256((self.model_dir / "model.bin").read_bytes()).hexdigest()
        self.digest = digest
        self.root = Path(root) / digest[:16]
        self._encoder: Any = None
        self._frontend: Any = None

    @property
    def num_layers(self) -> int:
        """Hidden states per clip (blocks + 1)."""
        return self.encoder.dims.n_audio_layer + 1

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = load_whisper_encoder(self.model_dir)
            self._frontend = WhisperLogMel()
        return self._encoder

    def describe(self) -> dict[str, object]:
        return {
            "weights": str(self.model_dir / "model.bin"),
            "sha256": self.digest,
            "dims": self.encoder.dims.to_dict(),
            "cache": str(self.root),
        }

    def path(self, uid: str, window: FeatureWindow) -> Path:
        return self.root / window / (uid.replace("/", "__") + ".npy")

    def get(self, uid: str, window: FeatureWindow = "cut") -> np.ndarray:
        path = self.path(uid, window)
        if not path.is_file():
            raise DataError(
                f"{path}: no cached features for clip {uid} ({window} window); fill the cache first"
            )
        return np.load(path, allow_pickle=False)

    @torch.no_grad()
    def encode(self, audio: np.ndarray, window: FeatureWindow = "cut") -> np.ndarray:
        """All hidden states `[layers + 1, frames, dim]` float16 of one 16 kHz clip."""
        encoder = self.encoder
        length = min(len(audio), WINDOW_SAMPLES)
        wave = np.zeros(WINDOW_SAMPLES if window == "padded" else length, dtype=np.float32)
        wave[:length] = audio[:length]
        mel, mel_lengths = self._frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        _, _frames, layers = encoder(mel, mel_lengths, output_layers=True)
        keep = int(encoder.frame_lengths(torch.tensor(length // 160)))
        return torch.stack([h[0, :keep] for h in layers]).numpy().astype(np.float16)

    def fill(
        self, utterances: list[Utterance], window: FeatureWindow = "cut", progress: Progress = SILENT
    ) -> int:
        """Encode every clip not cached yet (a `progress` line every 200 clips); returns how many were encoded."""
        if window not in WINDOWS:
            raise DataError(f"unknown feature window {window!r}; choose one of {', '.join(WINDOWS)}")
        todo = [u for u in utterances if not self.path(u.id, window).is_file()]
        for n, utt in enumerate(todo, 1):
            hidden = self.encode(load_audio(utt.path), window)
            buffer = _npy_bytes(hidden)
            self.path(utt.id, window).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.path(utt.id, window), buffer)
            if n % 200 == 0 or n == len(todo):
                progress(f"  encoded {n}/{len(todo)} clips ({window} window)")
        return len(todo)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()
