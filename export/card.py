"""The export folder's `README.md`: a Hugging Face model card, so the folder can be pushed to the Hub
as it is. Its metadata (library, pipeline tag, tags) lets the Hub list it; its text says what the
model is, what it was trained on, how closely each graph matched the torch model, and how to load
it in each runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt.model import GPT

CARD_FILE = "README.md"


def write(folder: Path, model: GPT, report: dict[str, Any]) -> Path:
    """Write the model card of export folder `folder` (its report already built) and return its path."""
    path = folder / CARD_FILE
    path.write_text(model_card(model, report), encoding="utf-8")
    return path


def model_card(model: GPT, report: dict[str, Any]) -> str:
    portable = any(name.startswith("onnx/") for name in report["graphs"])
    tags = ["simple-llm", "onnx", "text-generation"]
    if report["gpt2_compatible"]:
        tags.append("gpt2")
    if portable:
        tags.append("transformers.js")
    if model.tokenizer is not None:
        tags.append("onnxruntime-genai")
    front = [
        "---",
        f"library_name: {'transformers.js' if portable else 'onnxruntime'}",
        "pipeline_tag: text-generation",
        "tags:",
        *(f"- {tag}" for tag in tags),
        "---",
    ]
    parts = [
        "\n".join(front),
        _about(model, report),
        _training(model.training_record),
        _parity(report),
        _loading(report, portable, model.tokenizer is not None),
    ]
    if report["left_out"]:
        parts.append("## Not included\n\n" + "\n".join(f"- {note}" for note in report["left_out"]))
    return "\n\n".join(parts) + "\n"


def _about(model: GPT, report: dict[str, Any]) -> str:
    c = model.config
    return (
        "# A small GPT trained with simple-llm\n\n"
        f"{model.num_parameters():,} parameters: {c.num_layers} layers, {c.num_heads} heads of {c.head_size}, "
        f"width {c.emb_size}, context {c.max_seq_len} tokens, vocabulary {c.vocab_size} "
        f"({'byte-level BPE' if model.tokenizer is not None else 'token ids, no tokenizer'}). "
        f"Exported in {report['precision']} for onnxruntime's {report['provider'].upper()} provider "
        f"(opset {report['opset']})."
    )


def _training(record: dict[str, Any]) -> str:
    if not record:
        return "## Training\n\nNot recorded: the model was exported without a `training.json`."
    lines = []
    texts = record.get("texts") or []
    if texts:
        lines.append("- trained on: " + ", ".join(f"`{name}`" for name in texts))
    earlier = record.get("started_from")
    if isinstance(earlier, dict):
        before = ", ".join(f"`{name}`" for name in earlier.get("texts") or [])
        name = f"the saved model `{earlier['model']}`" if earlier.get("model") else "a model"  # never invented
        lines.append(f"- went on from {name} " + (f"trained on {before}" if before else "(texts not recorded)"))
    for key, label in (("steps", "optimizer steps"), ("tokens_seen", "tokens seen")):
        if record.get(key) is not None:
            lines.append(f"- {label}: {record[key]:,}")
    for key, label in (("train_loss", "last train loss"), ("validation_loss", "last validation loss")):
        if record.get(key) is not None:
            lines.append(f"- {label}: {record[key]:.4f} nats per token")
    return "## Training\n\n" + "\n".join(lines or ["- no details recorded"])


def _parity(report: dict[str, Any]) -> str:
    rows = [
        "| graph | precision | max abs logit difference (prefill / decode) | greedy tokens identical |",
        "|---|---|---|---|",
    ]
    for name, graph in report["graphs"].items():
        p = graph["parity"]
        rows.append(
            f"| `{name}` | {graph['precision']} | {p['prefill_max_abs']:.2g} / {p['decode_max_abs']:.2g} | "
            f"{'yes' if p['greedy_identical'] else 'no'} |"
        )
    return (
        "## Parity with the PyTorch model\n\n"
        "Measured by the export itself on onnxruntime's CPU provider (random prompts, one left-padded, "
        f"{report['parity']['decode_steps']} cached decode steps):\n\n" + "\n".join(rows)
    )


def _loading(report: dict[str, Any], portable: bool, tokenizer: bool) -> str:
    rows = [
        "| runtime | how to load |",
        "|---|---|",
        "| simple-llm | `OnnxGPT.load(folder)` (`from export import OnnxGPT`), or `python -m export generate` |",
    ]
    if tokenizer:
        rows.append("| onnxruntime-genai | `og.Model(folder)`, `og.Tokenizer(model)`: reads `genai_config.json` |")
    if portable:
        dtypes = {"onnx/model_quantized.onnx": "q8", "onnx/model_fp16.onnx": "fp16"}
        variants = "".join(f" (`dtype: '{d}'` for `{name}`)" for name, d in dtypes.items() if name in report["graphs"])
        rows += [
            "| optimum | `ORTModelForCausalLM.from_pretrained(folder)`: loads `onnx/model.onnx` |",
            f"| transformers.js | `AutoModelForCausalLM.from_pretrained(folder)`{variants} |",
        ]
    if "web/index.html" in report["files"]:
        rows.append("| your browser | serve the folder (`python -m http.server`) and open `web/index.html`: "
                    "onnxruntime-web runs the model in the visitor's browser |")  # fmt: skip
    if report["gpt2_compatible"] and tokenizer:
        rows.append("| transformers | `AutoTokenizer.from_pretrained(folder)`; the PyTorch weights are the "
                    "training checkpoint's: `GPT2LMHeadModel.from_pretrained(checkpoint)` |")  # fmt: skip
    return "## Use it\n\n" + "\n".join(rows)
