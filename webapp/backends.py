"""What can run on this machine: generation backends and training devices, each with the reason
when it cannot. Probed once per process (the onnxruntime CUDA probe starts a real session on a
one-node graph, because onnxruntime-gpu lists CUDA even where it then falls back to the CPU)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webapp.i18n import I18N, Msg

log = logging.getLogger(__name__)

TORCH = "torch"
ORT_CPU = "ort-cpu"
ORT_CUDA = "ort-cuda"
BROWSER = "browser"  # runs in the visitor's browser (webapp/browser.py), never on the server
BACKENDS = {
    TORCH: "PyTorch",
    ORT_CPU: "onnxruntime CPU",
    ORT_CUDA: "onnxruntime CUDA",
    BROWSER: "In your browser (onnxruntime-web)",
}
LABEL_KEYS = {BROWSER: "gen.backend_browser"}  # labels the page shows in the reader's language
ORT_PROVIDERS = {ORT_CPU: "cpu", ORT_CUDA: "cuda"}
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Availability:
    name: str
    label: str
    available: bool
    reason: Msg | None = None  # why it is unavailable, translated for each reader


@functools.cache
def backends() -> dict[str, Availability]:
    """Generation backends in display order."""
    return {
        TORCH: Availability(TORCH, BACKENDS[TORCH], True),
        ORT_CPU: _ort_cpu(),
        ORT_CUDA: _ort_cuda(),
        BROWSER: Availability(BROWSER, BACKENDS[BROWSER], True),
    }


@functools.cache
def devices() -> dict[str, Availability]:
    """Training devices for PyTorch."""
    cuda = torch.cuda.is_available()
    reason = None if cuda else Msg("reason.torch_no_cuda")
    return {"cpu": Availability("cpu", "CPU", True), "cuda": Availability("cuda", "CUDA", cuda, reason)}


def _ort_cpu() -> Availability:
    try:
        import onnxruntime as ort
    except ImportError as err:
        log.warning("onnxruntime is not importable: %s", err)
        return Availability(ORT_CPU, BACKENDS[ORT_CPU], False, Msg("reason.no_ort"))
    if "CPUExecutionProvider" not in ort.get_available_providers():
        return Availability(ORT_CPU, BACKENDS[ORT_CPU], False, Msg("reason.no_cpu_provider"))
    return Availability(ORT_CPU, BACKENDS[ORT_CPU], True)


def _ort_cuda() -> Availability:
    label = BACKENDS[ORT_CUDA]
    try:
        import onnxruntime as ort
    except ImportError as err:
        log.warning("onnxruntime is not importable: %s", err)
        return Availability(ORT_CUDA, label, False, Msg("reason.no_ort"))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return Availability(ORT_CUDA, label, False, Msg("reason.no_cuda_provider"))
    if not (torch.cuda.is_available() or Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))):
        return Availability(ORT_CUDA, label, False, Msg("reason.no_gpu"))
    from export import provider_available

    runs, why = provider_available("cuda")
    if not runs:
        return Availability(ORT_CUDA, label, False, Msg("reason.cuda_failed", detail=why.split(". ")[0][:300]))
    return Availability(ORT_CUDA, label, True)


def choice_label(item: Availability) -> Any:
    """The label of a backend's choice: translated by the page where it is words, else its name."""
    return I18N(LABEL_KEYS[item.name]) if item.name in LABEL_KEYS else item.label


def unavailable_text(items: list[Availability], lang: str) -> str | None:
    """ "Unavailable here: X (reason); Y (reason)" in `lang`, or None when everything runs."""
    from webapp.i18n import t

    if not items:
        return None
    def label(a: Availability) -> str:  # translated where it is words (`choice_label`)
        return t(lang, LABEL_KEYS[a.name]) if a.name in LABEL_KEYS else a.label

    return t(lang, "gen.unavailable", items="; ".join(f"{label(a)}: {a.reason.message(lang)}" for a in items))
