"""simple-llm's model library: a small GPT with a KV cache, its tokenizer, training and generation."""

from gpt.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from gpt.checkpoint import CheckpointError, latest_checkpoint
from gpt.config import GPTConfig
from gpt.data import GetData, encode_corpus, make_loaders, read_texts, split_ids
from gpt.generation import PRESETS, SamplingConfig
from gpt.model import GPT
from gpt.tokenizer import Tokenizer
from gpt.training import TrainingHistory, fit

__all__ = [
    "GPT",
    "PRESETS",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "GPTConfig",
    "GetData",
    "ModelCheckpoint",
    "ProgressBar",
    "SamplingConfig",
    "Tokenizer",
    "TrainingHistory",
    "encode_corpus",
    "fit",
    "latest_checkpoint",
    "make_loaders",
    "read_texts",
    "split_ids",
]
