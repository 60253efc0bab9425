"""Looking inside a model: its generated text coloured by how likely each token was, with the
alternatives it weighed, and any text coloured by how much each token surprised it.

Both views are `gr.HighlightedText` values: (piece of text, surprise) pairs with surprise
`1 - p(token)` in [0, 1], so the two read the same way (red: the model did not expect it). The
probabilities are the model's own distribution (`gpt.TokenScores`, `gpt.token_losses`), before
the repetition penalty, temperature and filters of sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from gpt import Tokenizer, TokenScores
from webapp.i18n import t

ALTERNATIVES = 5
MAX_VIEW_TOKENS = 2000  # a text's surprise view shows its first tokens only (the figures cover all)


@dataclass(frozen=True)
class TokenPiece:
    """One piece of the shown text: what its token(s) decoded to, and what the model thought."""

    text: str
    probability: float
    alternatives: tuple[tuple[str, float], ...] = ()  # (decoded token, probability), most likely first


def generated_pieces(steps: list[TokenScores], tokenizer: Tokenizer, text: str) -> list[TokenPiece]:
    """The pieces of a batch-1 generation whose continuation is `text` (cut where it stopped)."""
    ids = [int(s.tokens[0]) for s in steps]
    pieces = []
    for first, last, piece in _decoded(ids, tokenizer):
        scores = steps[first]  # the alternatives to the piece's first token
        alternatives = tuple(
            (tokenizer.decode([int(token)]), math.exp(float(logprob)))
            for token, logprob in zip(scores.top_tokens[0], scores.top_logprobs[0])
        )
        logprob = sum(float(s.logprobs[0]) for s in steps[first : last + 1])
        pieces.append(TokenPiece(piece, math.exp(logprob), alternatives))
    return _cut(pieces, len(text))


def surprise_pieces(ids: list[int], losses: Tensor, tokenizer: Tokenizer) -> list[TokenPiece]:
    """The first `MAX_VIEW_TOKENS` tokens of a text (`gpt.token_losses`), each with the
    probability the model gave it."""
    ids = ids[:MAX_VIEW_TOKENS]
    return [
        TokenPiece(piece, math.exp(-float(losses[first : last + 1].sum())))
        for first, last, piece in _decoded(ids, tokenizer)
    ]


def highlighted(pieces: list[TokenPiece]) -> list[tuple[str, float]]:
    """The `gr.HighlightedText` value: each piece with its surprise, `1 - p`."""
    return [(piece.text, round(1.0 - piece.probability, 3)) for piece in pieces]


def describe(piece: TokenPiece, lang: str) -> str:
    """Markdown: a selected piece's probability and the alternatives the model weighed."""
    lines = [t(lang, "look.chosen", token=_shown(piece.text), p=f"{piece.probability:.1%}")]
    lines += [f"{rank}. `{_shown(text)}` {p:.1%}" for rank, (text, p) in enumerate(piece.alternatives, 1)]
    return "\n".join(lines)


def _decoded(ids: list[int], tokenizer: Tokenizer) -> list[tuple[int, int, str]]:
    """(positions of its first and last token, text) per piece: a token that ends inside a
    multi-byte character joins the next one (a piece's probability is then their product)."""
    pieces, start = [], 0
    for position in range(len(ids)):
        text = tokenizer.decode(ids[start : position + 1])  # byte-level: pieces decode on their own
        if text.endswith("\ufffd") and position + 1 < len(ids):
            continue
        pieces.append((start, position, text))
        start = position + 1
    return pieces


def _cut(pieces: list[TokenPiece], length: int) -> list[TokenPiece]:
    """The pieces that make up the first `length` characters (a stop string cut the text there)."""
    kept, used = [], 0
    for piece in pieces:
        if used >= length:
            break
        kept.append(TokenPiece(piece.text[: length - used], piece.probability, piece.alternatives))
        used += len(piece.text)
    return kept


def _shown(text: str) -> str:
    return text.replace("`", "'").replace("\n", "⏎")
