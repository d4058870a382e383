"""The lean runtime: chains a bundle's stage graphs on numpy + onnxruntime + tokenizers, no torch.

    from edgeser.runtime import Pipeline
    pipe = Pipeline.load("build/cmgi", precision="int8", threads=2)
    result = pipe("clip.wav")          # Prediction(label, confidence, probabilities, transcript, timings_ms, ...)
    results = pipe.batch(["a.wav", "b.flac"])   # one Prediction or Failure per input, input order kept
    timeline = pipe.long("call.wav", SegmentOptions(min_pause_s=0.5))

One `Pipeline` may be shared between threads: it holds no per-call state (onnxruntime sessions
and `tokenizers.Tokenizer` are safe for concurrent calls).

Errors are one line naming the input: `AudioError` (an input clip), `OptionError` (an argument, `.name`),
`BundleError` (the bundle, its graphs or engines), all `EdgeserError`s. `Precision` and `Backend` are the
accepted values of `Pipeline.load`'s `precision` and `backend`.
"""

from edgeser.bundle import PRECISIONS, Precision
from edgeser.errors import AudioError, BundleError, EdgeserError, OptionError
from edgeser.runtime.options import BACKENDS, Backend
from edgeser.runtime.pipeline import Pipeline
from edgeser.runtime.results import Failure, Prediction, Segment, Timeline
from edgeser.runtime.segment import SegmentOptions

__all__ = ["BACKENDS", "PRECISIONS", "AudioError", "Backend", "BundleError", "EdgeserError", "Failure",
           "OptionError", "Pipeline", "Precision", "Prediction", "Segment", "SegmentOptions", "Timeline"]
