"""Export a `gpt.GPT` to ONNX and run it with onnxruntime behind the same generation API.

from export import to_onnx, OnnxGPT
to_onnx("runs/ckpt", "artifacts/onnx", precision="fp32")
model = OnnxGPT.load("artifacts/onnx")            # provider="cpu" | "cuda", threads=1
print(model.generate_text("ROMEO:", 50))
"""

from export.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS, ExportError, to_onnx
from export.precision import PRECISIONS, weight_bytes
from export.report import REPORT_FILE, ExportReport, read_report
from export.runtime import DEFAULT_THREADS, OnnxGPT, ProviderError, provider_available
from export.verify import TOLERANCES, ParityReport, Tolerance, compare
from export.webpage import BrowserRuntime, browser_runtime, runtime_tags

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_THREADS",
    "PRECISIONS",
    "REPORT_FILE",
    "SUPPORTED_OPSETS",
    "TOLERANCES",
    "BrowserRuntime",
    "ExportError",
    "ExportReport",
    "OnnxGPT",
    "ParityReport",
    "ProviderError",
    "Tolerance",
    "browser_runtime",
    "compare",
    "provider_available",
    "read_report",
    "runtime_tags",
    "to_onnx",
    "weight_bytes",
]
