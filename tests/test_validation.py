"""webapp/validation.py on its own: every bad number any endpoint may receive through the API is
refused with a message naming the setting, the value and the range; and the rules the endpoints
apply with it (`training.make_config`, `generation.make_options`), each field without a handler
(the endpoints' own wiring: one call each in test_webapp_safety.py)."""

import math
from pathlib import Path

import pytest
from webapp_common import GENERATE_DEFAULTS

from webapp import generation, training, validation
from webapp.i18n import UserError
from webapp.settings import Settings

BAD_NUMBERS = [math.nan, math.inf, -math.inf, "nan", "inf", "-inf", "1e999", -1, 10**30, "abc", [1], {"a": 1}, True]


def message(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    return str(info.value)  # the English message


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_bad_integers_are_refused_with_the_name_and_the_range(value):
    text = message(lambda: validation.integer("batch_size", value, 1, 1024))
    assert "batch_size" in text and "not valid" in text and "1..1024" in text, text


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_bad_reals_are_refused_with_the_name_and_the_range(value):
    text = message(lambda: validation.real("top_p", value, 0.0, 1.0, open_low=True))
    assert "top_p" in text and "not valid" in text and "(0, 1]" in text, text


@pytest.mark.parametrize("value", [0, 1025, 2.5, "2.5", "", None])
def test_integers_out_of_range_or_fractional(value):
    assert "batch_size" in message(lambda: validation.integer("batch_size", value, 1, 1024))


def test_good_numbers_and_their_text():
    assert validation.integer("steps", "  12 ", 1, 100) == 12 and validation.integer("steps", 3.0, 1, 100) == 3
    assert validation.integer("seed", str(2**63 - 1), 0, 2**63 - 1) == 2**63 - 1  # exact, however large
    assert validation.real("temperature", "0.5", 0.0, 10.0) == 0.5 and validation.real("min_p", 1, 0.0, 1.0) == 1.0
    with pytest.raises(UserError):
        validation.real("top_p", 0, 0.0, 1.0, open_low=True)
    assert validation.optional(None) and validation.optional("  ") and not validation.optional(0)


def test_a_huge_value_is_echoed_back_shortened():
    text = message(lambda: validation.integer("steps", [1] * 1000, 1, 10))
    assert "…" in text and len(text) < 300


def test_text_fields():
    assert validation.text("prompt", None, 10) == ""
    assert "prompt" in message(lambda: validation.text("prompt", 5, 10))
    assert "prompt" in message(lambda: validation.text("prompt", "x" * 11, 10))
    assert "prompt" in message(lambda: validation.text("prompt", "\ud800", 10))  # a lone surrogate: not Unicode
    assert "prompt" in message(lambda: validation.text("prompt", "я" * 6, 10, max_bytes=10))


# the rules each endpoint applies, field by field ---------------------------------------------------
SETTINGS = Settings(artifacts=Path("/nonexistent/unused"))  # make_config reads only the caps
VALID_TRAINING = dict(
    num_layers=1,
    num_heads=2,
    emb_size=16,
    context=16,
    vocab_size=300,
    learning_rate=1e-2,
    batch_size=8,
    steps=30,
    dropout=0.0,
    rotary=False,
    device="cpu",
)
GENERATION_FIELDS = ["max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"]
VALID_GENERATION = {**GENERATE_DEFAULTS, "mode": "sampling", "max_allowed": 64}


def test_the_valid_baselines_pass():
    assert training.make_config(SETTINGS, **VALID_TRAINING).steps == 30
    assert generation.make_options(**VALID_GENERATION).sampling.max_new_tokens == 20


NUMBER_SETTINGS = [name for name in training.SETTING_FIELDS if name != "rotary"]


@pytest.mark.parametrize("name", NUMBER_SETTINGS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_every_training_setting_refuses_a_bad_number_by_name(name, value):
    text = message(lambda: training.make_config(SETTINGS, **{**VALID_TRAINING, name: value}))
    assert name in text and "not valid" in text, text


@pytest.mark.parametrize("value", [0, 1, "true", None, math.nan, [True]], ids=repr)
def test_rotary_takes_only_true_or_false(value):
    text = message(lambda: training.make_config(SETTINGS, **{**VALID_TRAINING, "rotary": value}))
    assert "rotary" in text and "not valid" in text, text
    config = training.make_config(SETTINGS, **{**VALID_TRAINING, "rotary": True})
    assert config.gpt_config(300).rotary and not training.make_config(SETTINGS, **VALID_TRAINING).gpt_config(300).rotary


@pytest.mark.parametrize("name", training.LIMITS)
@pytest.mark.parametrize("value", [0, -5, 0.5])
def test_zero_negative_and_fractional_training_integers(name, value):
    text = message(lambda: training.make_config(SETTINGS, **{**VALID_TRAINING, name: value}))
    assert name in text and "not valid" in text, text


@pytest.mark.parametrize("name", GENERATION_FIELDS)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_every_generation_number_refuses_a_bad_number_by_name(name, value):
    text = message(lambda: generation.make_options(**{**VALID_GENERATION, name: value}))
    assert name in text and "not valid" in text, text


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_new_tokens", 0),
        ("max_new_tokens", 65),  # over the server's cap (max_allowed)
        ("temperature", -0.1),
        ("temperature", 11),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 0),
        ("top_p", 1.01),
        ("min_p", -0.01),
        ("min_p", 1.01),
        ("repetition_penalty", 0),
        ("repetition_penalty", 11),
        ("seed", -1),
        ("seed", 2**63),
    ],
)
def test_generation_numbers_out_of_range(name, value):
    text = message(lambda: generation.make_options(**{**VALID_GENERATION, name: value}))
    assert name in text and "not valid" in text, text
