"""Export a `gpt.GPT` to ONNX and run it with onnxruntime behind the same generation API.

from export import to_onnx, OnnxGPT
to_onnx("runs/ckpt", "artifacts/onnx", precision="fp32")
model = OnnxGPT.load("artifacts/onnx")            # provider="cpu" | "cuda", threads=1
print(model.generate_text("ROMEO:", 50))
"""

from export.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS, ExportError, to_onnx
from export.precision import PRECISIONS
from export.runtime import DEFAULT_THREADS, OnnxGPT, ProviderError
from export.verify import TOLERANCES, ParityReport, Tolerance, compare

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_THREADS",
    "PRECISIONS",
    "SUPPORTED_OPSETS",
    "TOLERANCES",
    "ExportError",
    "OnnxGPT",
    "ParityReport",
    "ProviderError",
    "Tolerance",
    "compare",
    "to_onnx",
]
