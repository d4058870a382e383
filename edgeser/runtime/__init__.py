"""The lean runtime: chains a bundle's stage graphs on numpy + onnxruntime + tokenizers, no torch.

    from edgeser.runtime import Pipeline
    pipe = Pipeline.load("build/cmgi", precision="int8", threads=2)
    result = pipe("clip.wav")          # Prediction(label, probabilities, transcript, timings_ms, ...)

One `Pipeline` may be shared between threads: it holds no per-call state (onnxruntime sessions
and `tokenizers.Tokenizer` are safe for concurrent calls).
"""

from edgeser.runtime.pipeline import Pipeline, Prediction
from edgeser.runtime.segment import Segment, Timeline

__all__ = ["Pipeline", "Prediction", "Segment", "Timeline"]
