"""simple-llm's model library: a small GPT with a KV cache, its tokenizer, training and generation."""

from gpt.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar, WeightEMA
from gpt.checkpoint import (
    CONFIG_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    CheckpointError,
    latest_checkpoint,
    read_config,
    read_weights,
)
from gpt.config import GPTConfig, count_parameters
from gpt.data import GetData, ShiftingWindows, check_vocabulary, encode_corpus, make_loaders, read_texts, split_ids
from gpt.evaluation import DEFAULT_EVAL_BATCH, TextScore, evaluate_text, token_losses
from gpt.files import atomic_folder
from gpt.generation import DEFAULT_DECODE_THREADS, PRESETS, SamplingConfig, TokenScores
from gpt.memory import MemoryEstimate, estimate_evaluation_memory, estimate_training_memory, evaluation_batch_size
from gpt.model import GPT
from gpt.modes import evaluating
from gpt.texts import (
    PROMPT_CHARS,
    TEXT_SUFFIXES,
    TextFileError,
    check_text_file,
    decode_text,
    read_text_file,
    text_start,
)
from gpt.tokenizer import TOKENIZER_FILE, Tokenizer
from gpt.training import Trainer, TrainingHistory, fit

__all__ = [
    "DEFAULT_EVAL_BATCH",
    "CONFIG_FILE",
    "DEFAULT_DECODE_THREADS",
    "GPT",
    "MODEL_FILES",
    "PRESETS",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "Callback",
    "CheckpointError",
    "EarlyStopping",
    "GPTConfig",
    "GetData",
    "ShiftingWindows",
    "MemoryEstimate",
    "ModelCheckpoint",
    "ProgressBar",
    "SamplingConfig",
    "TEXT_SUFFIXES",
    "TextFileError",
    "TextScore",
    "TokenScores",
    "Tokenizer",
    "Trainer",
    "TrainingHistory",
    "WeightEMA",
    "atomic_folder",
    "check_text_file",
    "check_vocabulary",
    "count_parameters",
    "decode_text",
    "encode_corpus",
    "estimate_evaluation_memory",
    "estimate_training_memory",
    "evaluation_batch_size",
    "evaluate_text",
    "evaluating",
    "fit",
    "latest_checkpoint",
    "make_loaders",
    "read_config",
    "read_text_file",
    "read_texts",
    "PROMPT_CHARS",
    "text_start",
    "read_weights",
    "split_ids",
    "token_losses",
]
