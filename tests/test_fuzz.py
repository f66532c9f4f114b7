"""Fuzzing the whole compile path (DESIGN.md §8): any text at all gives a ``Loss`` or a
``LossDSLError``, nothing else.

Three sources, together over 20,000 inputs:
- programs generated from the grammar itself (``hypothesis.extra.lark.from_lark``) with names
  drawn from the real catalogue, so that many of them resolve and build a module, which is
  then called once;
- arbitrary text and bytes decoded as unicode (hypothesis);
- a seeded plain-Python generator of program-like token soup (names, numbers, operators,
  brackets, strings, dunders and stray characters), which is cheap enough to run by the
  ten thousand.
"""

import random
import string

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

import lossdsl
from lossdsl.syntax import grammar_text

def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no example database written into the tree
        suppress_health_check=list(HealthCheck),
    )

TERM_NAMES = sorted(lossdsl.registry.names())
BUILTIN_NAMES = ["log", "exp", "sqrt", "abs", "min", "max", "clamp", "detach", "watch",
                 "linear", "cosine", "piecewise", "cyclic", "after", "balance"]
PARAM_NAMES = ["pred", "target", "weight", "mask", "delta", "beta", "reduction", "order", "dim",
               "p", "q", "min", "max", "start", "end", "steps", "delay", "method", "period",
               "boundaries", "values", "margin", "eps", "gamma", "alpha", "model"]
HOSTILE_NAMES = ["__import__", "__class__", "_x", "eval", "exec", "os", "system", "open",
                 "__globals__", "__builtins__", "globals", "lambda", "import"]
NAMES = TERM_NAMES + BUILTIN_NAMES + PARAM_NAMES + HOSTILE_NAMES + ["a", "b", "recon", "out"]

NUMBERS = ["0", "1", "2", "0.5", ".25", "3.", "1e-3", "1E+2", "1e308", "9.99e300", "007",
           "12345678901234567890"]
STRINGS = ['"ema"', '"uncertainty"', '"dwa"', '"cov"', '"mean"', '"sum"', '""', r'"a\"b"',
           r'"\u00e9"', r'"\q"', '"é#;"']


def _outcome(text) -> object:
    """Compile ``text``; a module is called once. Returns the Loss, or the error raised."""
    try:
        crit = lossdsl.compile(text)
    except lossdsl.LossDSLError as err:
        message = str(err)  # rendering the caret must not fail either
        assert message and err.message
        if err.source is not None and err.span is not None:
            assert err.line >= 1 and err.column >= 1
        return err
    assert isinstance(crit, lossdsl.Loss)
    return crit


def _call_once(crit: lossdsl.Loss) -> None:
    """A compiled program is called with a small batch: a 0-dim tensor or a LossDSLError
    (a missing input, a shape the term refuses, a non-finite value)."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 3, generator=gen, requires_grad=True)
    target = torch.rand(2, 4, 3, generator=gen)
    try:
        loss = crit(pred, target)
    except lossdsl.LossDSLError as err:
        assert str(err)
        return
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0


# --- grammar-generated programs -----------------------------------------------------------

_TERMINALS = {
    "NAME": st.sampled_from(NAMES),
    "NUMBER": st.sampled_from(NUMBERS),
    "SIGNED_NUMBER": st.sampled_from(NUMBERS + ["-" + n for n in NUMBERS]),
    "STRING": st.sampled_from(STRINGS),
    "_SEP": st.sampled_from(["\n", ";", "\r\n", "  # note\n"]),
    "COMMENT": st.just(""),
    "WS": st.sampled_from([" ", "\t"]),
}
grammar_programs = from_lark(Lark(grammar_text(), parser="lalr"), explicit=_TERMINALS)

@fuzz(2500)
@given(grammar_programs)
def test_grammar_generated_programs_compile_or_refuse(text):
    result = _outcome(text)
    if isinstance(result, lossdsl.Loss):
        # the canonical text of a program that compiles compiles to the same program
        again = lossdsl.compile(result.canonical)
        assert again.canonical == result.canonical and again.term_names == result.term_names
        _call_once(result)


# --- arbitrary text -----------------------------------------------------------------------


@fuzz(1500)
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    _outcome(text)


@fuzz(1000)
@given(st.binary(max_size=200), st.sampled_from(["utf-8", "latin-1", "utf-16-le"]))
def test_arbitrary_bytes_decoded_as_unicode(data, codec):
    _outcome(data.decode(codec, errors="surrogateescape" if codec == "utf-8" else "replace"))


@fuzz(1000)
@given(st.lists(st.sampled_from(NAMES + NUMBERS + STRINGS + list("+-*/^(),=.[];#\n ")), max_size=30))
def test_token_lists(tokens):
    _outcome(" ".join(tokens))


# --- seeded token soup --------------------------------------------------------------------

_SOUP_TOKENS = (
    NAMES * 2
    + NUMBERS
    + STRINGS
    + ["+", "-", "*", "/", "^", "**", "(", ")", "(", ")", "[", "]", ",", "=", ".", ";", "\n",
       "#", " ", "\t", "'x'", "`", "{", "}", ":", "@", "!", "~", "%", "&", "|", "\\", "\x00",
       "\ud800", "é", "λ", "1e999", "0x10", "-.5e-3", "f\"{x}\"", "()", "[]", "__", "..."]
)
SOUP_CASES = 16_000


def _soup(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.7:  # program-like: tokens with an occasional call or keyword shape
        parts = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.15:
                parts.append(f"{rng.choice(NAMES)}({rng.choice(PARAM_NAMES)}={rng.choice(NUMBERS + STRINGS + NAMES)})")
            elif r < 0.25:
                parts.append(f"{rng.choice(NUMBERS)}*{rng.choice(TERM_NAMES)}")
            else:
                parts.append(rng.choice(_SOUP_TOKENS))
        return ("" if rng.random() < 0.5 else " ").join(parts)
    if shape < 0.85:  # printable noise
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    # any code points, surrogates included
    return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 12)))


def test_seeded_token_soup_gives_a_loss_or_an_error():
    rng = random.Random(20240611)
    kinds = {"built": 0, "refused": 0}
    for _ in range(SOUP_CASES):
        result = _outcome(_soup(rng))
        kinds["built" if isinstance(result, lossdsl.Loss) else "refused"] += 1
    assert kinds["built"] + kinds["refused"] == SOUP_CASES
    assert kinds["built"] > 0 and kinds["refused"] > 0, kinds

