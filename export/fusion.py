"""Fuse the exported graph's residual adds, layer norms and GELUs into onnxruntime contrib ops.

At batch-1 decode sizes onnxruntime's cost is per node, and its load-time optimizer fuses only
part of this graph: `Add` + `LayerNormalization` becomes `SkipLayerNormalization` only where the
sum has no other reader (in a pre-norm transformer it also feeds the next residual add), and the
bias `Add` before a tanh `Gelu` stays a node of its own. So, on the exported graph:

- `LayerNormalization(x + skip [+ bias])` -> `com.microsoft.SkipLayerNormalization`, whose
  fourth output is the sum for the residual stream (onnxscript's rules; they need the layer
  norm's own bias, so models built with `bias=False` keep plain `LayerNormalization`);
- `Gelu(x + bias)` -> `com.microsoft.BiasGelu(x, bias)` for the exact (erf) GELU, and
  `Gelu(x + bias, approximate="tanh")` -> `com.microsoft.FastGelu(x, bias)` (the same tanh
  formula). onnxruntime's own offline optimizer (`onnxruntime.transformers.optimizer`, model type
  "gpt2") is not used: it turns the tanh `Gelu` into the erf-based `BiasGelu`, another function.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.skip_normalization import skip_layer_normalization_ruleset


def _erf_gelu_after_bias(op, x, bias):
    return op.Gelu(op.Add(x, bias), approximate="none")


def _bias_gelu(op, x, bias):
    return op.BiasGelu(x, bias, _domain="com.microsoft")


def _tanh_gelu_after_bias(op, x, bias):
    return op.Gelu(op.Add(x, bias), approximate="tanh")


def _fast_gelu(op, x, bias):
    return op.FastGelu(x, bias, _domain="com.microsoft")


def _is_vector_constant(context, x, bias, **_) -> bool:
    """The fused ops' bias must be a constant vector over the last axis."""
    return bias.const_value is not None and len(bias.const_value.shape) == 1


_GELU_RULES = {
    "BiasGelu": pattern.RewriteRuleSet(
        pattern.RewriteRule(_erf_gelu_after_bias, _bias_gelu, _is_vector_constant, name="BiasGelu").commute()
    ),
    "FastGelu": pattern.RewriteRuleSet(
        pattern.RewriteRule(_tanh_gelu_after_bias, _fast_gelu, _is_vector_constant, name="FastGeluBias").commute()
    ),
}


def fuse(model: ir.Model) -> dict[str, int]:
    """Apply the fusions to `model` in place; return how many of each were made."""
    return {
        "SkipLayerNormalization": skip_layer_normalization_ruleset.apply_to_model(model),
        **{op: rules.apply_to_model(model) for op, rules in _GELU_RULES.items()},
    }
