"""simple-llm's model library: a small GPT with a KV cache, its tokenizer, training and generation."""

from gpt.checkpoint import CheckpointError
from gpt.config import GPTConfig
from gpt.data import GetData, encode_corpus, make_loaders, read_texts, split_ids
from gpt.generation import PRESETS, SamplingConfig
from gpt.model import GPT
from gpt.tokenizer import Tokenizer

__all__ = [
    "GPT",
    "PRESETS",
    "CheckpointError",
    "GPTConfig",
    "GetData",
    "SamplingConfig",
    "Tokenizer",
    "encode_corpus",
    "make_loaders",
    "read_texts",
    "split_ids",
]
