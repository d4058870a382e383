"""The lean runtime: chains a bundle's stage graphs on numpy + onnxruntime + tokenizers, no torch.

    from edgeser.runtime import Pipeline
    pipe = Pipeline.load("build/cmgi", precision="int8", threads=2)
    result = pipe("clip.wav")          # Prediction(label, confidence, probabilities, transcript, timings_ms, ...)
    results = pipe.batch(["a.wav", "b.flac"])   # one Prediction or Failure per input, input order kept
    timeline = pipe.long("call.wav")   # utterances found by Silero VAD (VadOptions), one Segment each
    for event in pipe.stream(chunks, sample_rate=48_000):   # live audio: one Utterance per utterance
        ...
    listener = Listener(pipe, sample_rate=16_000)           # or feed(chunk) / flush() yourself

One `Pipeline` may be shared between threads: it holds no per-call state (onnxruntime sessions
and `tokenizers.Tokenizer` are safe for concurrent calls). A `Listener` serves one stream; many Listeners may
share one Pipeline.

Errors are one line naming the input: `AudioError` (an input clip), `OptionError` (an argument, `.name`),
`BundleError` (the bundle, its graphs or engines), `MissingDependencyError` (an optional package),
`ProviderError` (an onnxruntime execution provider this machine does not give), all `EdgeserError`s.
`Precision` and `Backend` are the accepted values of `Pipeline.load`'s `precision` and `backend`.
"""

from edgeser.bundle import PRECISIONS, Precision
from edgeser.errors import (
    AudioError,
    BundleError,
    EdgeserError,
    MissingDependencyError,
    OptionError,
    ProviderError,
)
from edgeser.runtime.listener import Listener
from edgeser.runtime.options import BACKENDS, Backend
from edgeser.runtime.pipeline import Pipeline
from edgeser.runtime.results import Failure, Prediction, Segment, Timeline, Utterance
from edgeser.runtime.segment import SegmentOptions
from edgeser.runtime.vad import SpeechDetector, VadOptions, detect_speech

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "AudioError",
    "Backend",
    "BundleError",
    "EdgeserError",
    "Failure",
    "Listener",
    "MissingDependencyError",
    "OptionError",
    "Pipeline",
    "Precision",
    "Prediction",
    "ProviderError",
    "Segment",
    "SegmentOptions",
    "SpeechDetector",
    "Timeline",
    "Utterance",
    "VadOptions",
    "detect_speech",
]
