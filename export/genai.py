"""`genai_config.json`: what onnxruntime-genai reads beside the fast graph (with `tokenizer.json`
and `tokenizer_config.json`, which `gpt.hub` writes).

The model type is "decoder", genai's generic decoder-only model with one key and one value
cache tensor per layer; its "gpt2" type expects the older combined `past_{i}` layout instead.
With cache buffers (`export.attention`) past and present share one buffer of the whole context
("past_present_share_buffer": true); a graph with plain attention concatenates, so each present
is one token longer than its past (false).
"""

from __future__ import annotations

from typing import Any

from export import signature
from gpt.config import GPTConfig
from gpt.tokenizer import Tokenizer

GENAI_CONFIG_FILE = "genai_config.json"


def genai_config(
    config: GPTConfig, tokenizer: Tokenizer, model_file: str, cache_buffers: bool, provider: str = "cpu"
) -> dict[str, Any]:
    """`genai_config.json` for the graph `model_file` exported from a model of `config`, with or
    without cache buffers, for `provider` ("cpu" or "cuda": then genai runs it on CUDA)."""
    eos = tokenizer.eos_token_id
    return {
        "model": {
            "type": "decoder",
            "vocab_size": config.vocab_size,
            "context_length": config.max_seq_len,
            "bos_token_id": eos,  # GPT-2 convention: one end-of-text token for everything
            "eos_token_id": eos,
            "pad_token_id": eos,
            "decoder": {
                "filename": model_file,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": _provider_options(provider)},
                "head_size": config.head_size,
                "hidden_size": config.emb_size,
                "num_attention_heads": config.num_heads,
                "num_key_value_heads": config.num_heads,
                "num_hidden_layers": config.num_layers,
                "inputs": {
                    "input_ids": signature.INPUT_IDS,
                    "attention_mask": signature.ATTENTION_MASK,
                    "position_ids": signature.POSITION_IDS,
                    "past_key_names": signature.PAST_KEY,
                    "past_value_names": signature.PAST_VALUE,
                },
                "outputs": {
                    "logits": signature.LOGITS,
                    "present_key_names": signature.PRESENT_KEY,
                    "present_value_names": signature.PRESENT_VALUE,
                },
            },
        },
        "search": {
            "max_length": config.max_seq_len,
            "min_length": 0,
            "do_sample": False,
            "num_beams": 1,
            "num_return_sequences": 1,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "length_penalty": 1.0,
            "diversity_penalty": 0.0,
            "no_repeat_ngram_size": 0,
            "early_stopping": True,
            "past_present_share_buffer": cache_buffers,
        },
    }


def _provider_options(provider: str) -> list[dict[str, dict[str, str]]]:
    """genai's execution providers in order of preference; none means the CPU."""
    return [{"cuda": {}}] if provider == "cuda" else []
