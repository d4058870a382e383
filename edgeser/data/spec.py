"""Data spec strings (`emodb:../shared/data/emodb`, `iemocap:/data/IEMOCAP?improvised=1`) to corpora."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

from edgeser.data.corpora import read_emodb, read_iemocap, read_manifest, read_ravdess, read_tess
from edgeser.data.records import Corpus
from edgeser.errors import DataError

_TRUE = {"1", "true", "yes", "on"}


def _multi(root: Path, options: dict[str, str]) -> Corpus:
    from edgeser.data.multicorpus import MULTI_CORPORA, read_multicorpus

    corpora = tuple(c for c in options.pop("corpora", ",".join(MULTI_CORPORA)).split(",") if c)
    fraction = options.pop("tess", "1")
    try:
        tess_fraction = float(fraction)
    except ValueError:
        raise DataError(f"multi:{root}: tess must be a fraction in (0, 1], got {fraction!r}") from None
    return read_multicorpus(root, corpora, options.pop("labels", "ravdess8"), tess_fraction)


def _iemocap(root: Path, options: dict[str, str]) -> Corpus:
    return read_iemocap(root, improvised_only=options.pop("improvised", "0").lower() in _TRUE)


CORPUS_READERS: dict[str, Callable[[Path, dict[str, str]], Corpus]] = {
    "iemocap": _iemocap,
    "emodb": lambda root, _: read_emodb(root),
    "tess": lambda root, _: read_tess(root),
    "ravdess": lambda root, _: read_ravdess(root),
    "manifest": lambda root, _: read_manifest(root),
    "multi": _multi,  # ravdess + emodb + tess under one root, one label set (edgeser.data.multicorpus)
}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """Split `name:path?key=value&...` into its parts; a bare .csv/.jsonl path means a manifest."""
    name, sep, rest = spec.partition(":")
    if not sep or name not in CORPUS_READERS:
        if Path(spec).suffix.lower() in {".csv", ".tsv", ".jsonl", ".ndjson"}:
            return "manifest", Path(spec), {}
        raise DataError(
            f"data spec {spec!r}: expected NAME:PATH with NAME one of {', '.join(CORPUS_READERS)}"
        )
    path, _, query = rest.partition("?")
    if not path:
        raise DataError(f"data spec {spec!r}: no path after '{name}:'")
    return name, Path(path).expanduser(), dict(parse_qsl(query))


def load_corpus(spec: str) -> Corpus:
    """Read the corpus a spec names; unknown options are an error, not silently ignored."""
    name, path, options = parse_spec(spec)
    corpus = CORPUS_READERS[name](path, options)
    if options:
        raise DataError(f"data spec {spec!r}: unknown option(s) {', '.join(options)} for {name}")
    return corpus
