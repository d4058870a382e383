"""ONNX export of each model stage into a self-describing bundle, and parity checks (needs `export`)."""
