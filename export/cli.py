"""Command line: export a checkpoint to ONNX, check its parity, generate with onnxruntime.

    python -m export --model CHECKPOINT_DIR --out DIR [--precision fp32|fp16|int8] [--provider cpu|cuda] [--opset N]
    python -m export verify --model CHECKPOINT_DIR --onnx DIR
    python -m export generate --onnx DIR --prompt TEXT [sampling flags] [--provider cpu|cuda]
    python -m export eval --onnx DIR --data FILE [--provider cpu|cuda]

Without a subcommand the arguments are those of `export`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from export import runtime, verify
from export.onnx_export import DEFAULT_OPSET, REPORT_FILE, SUPPORTED_OPSETS, ExportError, to_onnx
from export.precision import PRECISIONS
from export.runtime import OnnxGPT, ProviderError
from gpt.checkpoint import CheckpointError
from gpt.cli import add_eval_arguments, add_sampling_arguments, print_evaluation, print_generation
from gpt.model import GPT

COMMANDS = ("export", "verify", "generate", "eval")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["export", *argv]  # the default subcommand
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # ours only: the ONNX optimizer logs a lot at INFO
    torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as err:  # bad input (CheckpointError is a ValueError), as in `python -m gpt`
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ExportError, ProviderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a simple-llm checkpoint to ONNX and run it with onnxruntime. "
        "Without a subcommand, the arguments are those of 'export'.",
    )
    commands = parser.add_subparsers(title="commands", metavar="{export,verify,generate,eval}")

    export_cmd = commands.add_parser("export", help="export a checkpoint folder to an ONNX folder (the default)")
    export_cmd.add_argument(
        "--model",
        required=True,
        metavar="CHECKPOINT_DIR",
        help="checkpoint folder (config.json, model.safetensors, tokenizer.json)",
    )
    export_cmd.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder; built beside it and renamed into place when every check passes",
    )
    export_cmd.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default), fp16 (for the CUDA provider) or int8 (8-bit weights in blocks, for the CPU provider)",
    )
    export_cmd.add_argument(
        "--provider",
        choices=tuple(runtime.PROVIDERS),
        default=None,
        help="execution provider the graph is built for: its attention op and cache layout (default: cuda for fp16, cpu otherwise)",
    )
    export_cmd.add_argument(
        "--opset",
        type=int,
        default=None,
        metavar="N",
        help=f"ONNX opset, {SUPPORTED_OPSETS[0]}-{SUPPORTED_OPSETS[-1]} (default {DEFAULT_OPSET})",
    )
    export_cmd.add_argument(
        "--no-portable",
        dest="portable",
        action="store_false",
        help="skip the portable graphs under onnx/ (what optimum and transformers.js load)",
    )
    export_cmd.add_argument(
        "--no-web", dest="web", action="store_false", help="skip web/, the page that runs the model in a browser"
    )
    _add_threads(export_cmd)
    export_cmd.set_defaults(run=_export)

    verify_cmd = commands.add_parser("verify", help="print a parity report: ONNX export vs its torch checkpoint")
    verify_cmd.add_argument(
        "--model", required=True, metavar="CHECKPOINT_DIR", help="the checkpoint folder that was exported"
    )
    verify_cmd.add_argument("--onnx", required=True, metavar="DIR", help="the export folder")
    verify_cmd.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="cached decode steps to compare (default: up to 32, as the export check)",
    )
    _add_runtime(verify_cmd)
    verify_cmd.set_defaults(run=_verify)

    generate_cmd = commands.add_parser("generate", help="generate text with onnxruntime from an export folder")
    generate_cmd.add_argument("--onnx", required=True, metavar="DIR", help="the export folder")
    generate_cmd.add_argument("--prompt", required=True, help="text to continue")
    add_sampling_arguments(generate_cmd)
    generate_cmd.add_argument("--stream", action="store_true", help="print text as it is generated")
    _add_runtime(generate_cmd)
    generate_cmd.set_defaults(run=_generate)

    _add_eval_command(commands)
    return parser


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    eval_cmd = commands.add_parser(
        "eval", help="score a text with onnxruntime: loss per token, perplexity, nats and bits per byte"
    )
    eval_cmd.add_argument("--onnx", required=True, metavar="DIR", help="the export folder")
    add_eval_arguments(eval_cmd)
    _add_runtime(eval_cmd)
    eval_cmd.set_defaults(run=_eval)


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=runtime.DEFAULT_THREADS,
        metavar="N",
        help=f"threads for torch and onnxruntime (default {runtime.DEFAULT_THREADS}: on busy cores more threads "
        "can make small-batch decoding many times slower; benchmark before raising it)",
    )


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--provider",
        choices=tuple(runtime.PROVIDERS),
        default="cpu",
        help="onnxruntime execution provider (default cpu); cuda fails clearly where it cannot run",
    )
    _add_threads(parser)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _export(args: argparse.Namespace) -> int:
    out = to_onnx(
        args.model,
        args.out,
        precision=args.precision,
        provider=args.provider,
        opset=args.opset,
        threads=args.threads,
        portable=args.portable,
        web=args.web,
    )
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    print(
        f"wrote {out} ({report['precision']} for the {report['provider']} provider, opset {report['opset']}, "
        f"{report['exporter']} exporter) in {report['export_seconds']:.1f} s"
    )
    for name, graph in report["graphs"].items():
        parity = graph["parity"]
        print(
            f"  {name} ({graph['precision']}): logits max abs diff {parity['prefill_max_abs']:.3g} (prefill), "
            f"{parity['decode_max_abs']:.3g} (decode), top-1 agreement {parity['top1_agreement']:.1%}"
        )
    return 0  # what the folder leaves out was logged as a warning before the export


def _verify(args: argparse.Namespace) -> int:
    model = GPT.load(args.model)
    onnx_model = OnnxGPT.load(args.onnx, provider=args.provider, threads=args.threads)
    if onnx_model.config != model.config:
        raise CheckpointError(f"{args.onnx} was not exported from {args.model}: their config.json files differ")
    input_ids, attention_mask, steps = verify.probe_inputs(model.config)
    report = verify.compare(
        model,
        onnx_model,
        input_ids,
        attention_mask,
        decode_steps=steps if args.steps is None else args.steps,
        tolerance=verify.TOLERANCES[_precision(args.onnx)],
    )
    print(report.format())
    return 0 if report.passed else 1


def _precision(folder: str) -> str:
    """The precision an export folder was written in, from its report."""
    report = Path(folder) / REPORT_FILE
    if not report.is_file():
        raise FileNotFoundError(f"{report}: missing from the export folder (run `python -m export` first)")
    return json.loads(report.read_text(encoding="utf-8"))["precision"]


def _generate(args: argparse.Namespace) -> int:
    model = OnnxGPT.load(args.onnx, provider=args.provider, threads=args.threads)
    logging.getLogger(__name__).info("running on %s", model.provider)
    print_generation(model, args)
    return 0


def _eval(args: argparse.Namespace) -> int:
    print_evaluation(OnnxGPT.load(args.onnx, provider=args.provider, threads=args.threads), args)
    return 0
