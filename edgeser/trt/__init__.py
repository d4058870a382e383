"""TensorRT deployment: the offline `doctor` (will TensorRT take these graphs?), engine builds (`build-trt`),
engine folders and manifests, optimisation profiles, and engine-inspector parsing.

Nothing here imports TensorRT, CUDA, onnx or torch at module level: the doctor runs on any machine, and the
runtime's TensorRT runner (`edgeser.runtime.tensorrt`) reads engine folders through `edgeser.trt.engines`.
"""
