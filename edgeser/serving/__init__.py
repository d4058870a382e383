"""Serving bundles from Triton Inference Server: model repositories, the Python-backend models, a launcher, a client.

    edgeser export-triton BUNDLE OUT      a Triton model repository: one model per stage (onnxruntime_onnx or
                                          tensorrt_plan), and the `edgeser` Python-backend model that takes a
                                          waveform and its length and chains the stages (BLS) with the
                                          runtime's own steps between them (frame lengths, CTC decoding,
                                          tokenisation: `edgeser.stages.StageGraph`)
    edgeser serve BUNDLE                  the `tritonserver` of the nvidia-pytriton wheel on this machine,
                                          serving the bundle over Triton's HTTP and gRPC protocols with
                                          dynamic batching across clients

Nothing here imports tritonclient or pytriton at import time: the lean runtime stays lean.
"""
