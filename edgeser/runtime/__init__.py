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
"""

from edgeser.errors import AudioError, BundleError, EdgeserError, MissingDependencyError, OptionError
from edgeser.runtime.listener import Listener
from edgeser.runtime.pipeline import Pipeline
from edgeser.runtime.results import Failure, Prediction, Segment, Timeline, Utterance
from edgeser.runtime.segment import SegmentOptions
from edgeser.runtime.vad import SpeechDetector, VadOptions, detect_speech

__all__ = ["AudioError", "BundleError", "EdgeserError", "Failure", "Listener", "MissingDependencyError",
           "OptionError", "Pipeline", "Prediction", "Segment", "SegmentOptions", "SpeechDetector", "Timeline",
           "Utterance", "VadOptions", "detect_speech"]
