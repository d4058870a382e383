"""Emotional-speech corpora as one record type, data specs, scanning and splits."""

from edgeser.data.records import Corpus, FileProblem, Utterance
from edgeser.data.spec import CORPUS_READERS, load_corpus

__all__ = ["CORPUS_READERS", "Corpus", "FileProblem", "Utterance", "load_corpus"]
