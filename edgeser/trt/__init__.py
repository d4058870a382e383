"""TensorRT build tooling: the offline `doctor` (will TensorRT take these graphs?), engine builds (`build-trt`)
and engine-inspector parsing.

Nothing here imports TensorRT, CUDA, onnx or torch at module level: the doctor runs on any machine. Engine folders
and optimisation profiles belong to the runtime (`edgeser.runtime.engines`, `edgeser.runtime.profiles`), which
reads them without this package.
"""
