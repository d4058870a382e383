"""edgeser: speech emotion recognition fusion models from PyTorch to the edge.

Importing the package is cheap: nothing here pulls torch or onnxruntime.
"""

__version__ = "0.1.0"
