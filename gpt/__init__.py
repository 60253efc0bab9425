"""simple-llm's model library: a small GPT with a KV cache, its tokenizer, training and generation."""

from gpt.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from gpt.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    latest_checkpoint,
    read_config,
    read_weights,
)
from gpt.config import GPTConfig, count_parameters
from gpt.data import GetData, encode_corpus, make_loaders, read_texts, split_ids
from gpt.generation import PRESETS, SamplingConfig
from gpt.memory import MemoryEstimate, estimate_training_memory
from gpt.model import GPT
from gpt.tokenizer import Tokenizer
from gpt.training import Trainer, TrainingHistory, fit

__all__ = [
    "CONFIG_FILE",
    "GPT",
    "PRESETS",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "GPTConfig",
    "GetData",
    "MemoryEstimate",
    "ModelCheckpoint",
    "ProgressBar",
    "SamplingConfig",
    "Tokenizer",
    "Trainer",
    "TrainingHistory",
    "count_parameters",
    "encode_corpus",
    "estimate_training_memory",
    "fit",
    "latest_checkpoint",
    "make_loaders",
    "read_config",
    "read_texts",
    "read_weights",
    "split_ids",
]
