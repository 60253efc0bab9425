"""`read_report`: the `export_report.json` that `to_onnx` writes into every export folder, typed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.verify import ParityReport

REPORT_FILE = "export_report.json"


@dataclass(frozen=True)
class ExportReport:
    """What an export folder's report says: how it was exported, its files and its parity run."""

    precision: str  # "fp32", "fp16" or "int8"
    provider: str  # the execution provider the graph was built for
    opset: int
    exporter: str  # "dynamo" or "torchscript"
    export_seconds: float
    files: dict[str, int]  # file name -> bytes
    parity: ParityReport
    raw: dict[str, Any]  # the whole JSON (model config, signature, versions, ...)

    @property
    def size_bytes(self) -> int:
        """Bytes of all files of the export folder."""
        return sum(self.files.values())


def read_report(folder: str | Path) -> ExportReport:
    """The report of export folder `folder`; FileNotFoundError when it has none (not an export)."""
    file = Path(folder) / REPORT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing from the export folder (run `python -m export` first)")
    raw = json.loads(file.read_text(encoding="utf-8"))
    return ExportReport(
        precision=raw["precision"],
        provider=raw["provider"],
        opset=raw["opset"],
        exporter=raw["exporter"],
        export_seconds=raw["export_seconds"],
        files=dict(raw["files"]),
        parity=ParityReport.from_dict(raw["parity"]),
        raw=raw,
    )
