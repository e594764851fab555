"""dpcompat: train DualPrompt models, export them to ONNX, measure backward compatibility.

The checkout's folders are the package's sub-packages: ``dpcompat.train`` and ``dpcompat.export``
need torch (extra ``train``); ``dpcompat.infer``, ``dpcompat.evaluate`` and ``dpcompat.common`` never
import it.
"""
__version__ = "0.2.0"
