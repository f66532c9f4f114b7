"""Fuzzing the whole compile path (DESIGN.md §8): any text at all gives a ``Loss`` or a
``LossDSLError``, nothing else; a program that compiles, called once, gives a 0-dim tensor or
a ``LossDSLError``.

About 23,700 inputs in all:
- hypothesis: programs generated from the grammar (``hypothesis.extra.lark.from_lark`` on
  ``grammar_text()``), arbitrary text, bytes decoded as unicode, lists of tokens (3,515);
- a seeded plain-Python walk over the grammar's own rules (names drawn from the catalogue, so
  that many programs resolve and build a module), sometimes damaged by a deleted, inserted or
  swapped token (10,000);
- seeded token soup: names, numbers, operators, brackets, strings, dunders, stray characters
  and arbitrary code points (10,000);
- seeded hostile shapes: long chains of bindings, bindings shared by many uses, long products
  and sums, long tokens and text near the 64 KiB limit (see ``test_fuzz_shapes.py``).

Each test counts the inputs it ran, asserts a minimum and prints the count (``pytest -rP``).
"""

import random
import string

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Lark
from test_grammar_fuzz import BoundedLark

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
           r'"\u00e9"', r'"\q"', '"é#;"', "'ema'", "'sum'", "''", r"'it\'s'", """'say "hi"'""", r"'\q'"]


def _outcome(text) -> object:
    """Compile ``text``: the Loss, or the LossDSLError raised (any other exception fails)."""
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
# reserved words with spaces, so that they do not run into a neighbouring name
_RESERVED = ("true", "false", "none", "and", "or", "not", "input")
_TERMINALS.update({word.upper(): st.just(f" {word} ") for word in _RESERVED})
grammar_programs = BoundedLark(Lark(grammar_text(), parser="lalr"), _TERMINALS, budget=80)


# from_lark draws every rule choice through hypothesis (BoundedLark keeps the programs
# finite), so one example costs hundredths of a second; the seeded grammar walk gives volume.
def ran(label: str, count: int, least: int) -> None:
    """Report how many inputs a fuzz test ran (shown by ``pytest -rP``) and that it ran enough."""
    print(f"{label}: {count} inputs")
    assert count >= least, (label, count)


def test_grammar_generated_programs_compile_or_refuse():
    count = 0

    @fuzz(15)
    @given(grammar_programs)
    def one(text):
        nonlocal count
        count += 1
        result = _outcome(text)
        if isinstance(result, lossdsl.Loss):
            # the canonical text of a program that compiles compiles to the same program
            again = lossdsl.compile(result.canonical)
            assert again.canonical == result.canonical and again.term_names == result.term_names
            _call_once(result)

    one()
    ran("grammar-generated programs", count, 15)


# --- arbitrary text -----------------------------------------------------------------------


def test_arbitrary_text():
    count = 0

    @fuzz(1500)
    @given(st.text(max_size=200))
    def one(text):
        nonlocal count
        count += 1
        _outcome(text)

    one()
    ran("arbitrary text", count, 1000)


def test_arbitrary_bytes_decoded_as_unicode():
    count = 0

    @fuzz(1000)
    @given(st.binary(max_size=200), st.sampled_from(["utf-8", "latin-1", "utf-16-le"]))
    def one(data, codec):
        nonlocal count
        count += 1
        _outcome(data.decode(codec, errors="surrogateescape" if codec == "utf-8" else "replace"))

    one()
    ran("bytes decoded as unicode", count, 700)


def test_token_lists():
    count = 0

    @fuzz(1000)
    @given(st.lists(st.sampled_from(NAMES + NUMBERS + STRINGS + list("+-*/^(),=.[];#\n ")), max_size=30))
    def one(tokens):
        nonlocal count
        count += 1
        _outcome(" ".join(tokens))

    one()
    ran("token lists", count, 700)


# --- seeded generators: a walk over the grammar's rules, and token soup --------------------

_PARSER = Lark(grammar_text(), parser="lalr")
_RULES: dict = {}
for _rule in _PARSER.rules:
    _RULES.setdefault(_rule.origin.name, []).append([(s.is_term, s.name) for s in _rule.expansion])
_LITERALS = {t.name: t.pattern.value for t in _PARSER.terminals if t.pattern.type == "str"}
_WORDS = {"TRUE", "FALSE", "NONE", "AND", "OR", "NOT", "INPUT"}


def _heights() -> dict:
    """The least number of nested rule expansions that ends each nonterminal."""
    height: dict = {}
    changed = True
    while changed:
        changed = False
        for name, expansions in _RULES.items():
            for expansion in expansions:
                inner = [0 if term else height.get(sym) for term, sym in expansion]
                if None not in inner:
                    h = 1 + max(inner, default=0)
                    if h < height.get(name, 10**9):
                        height[name], changed = h, True
    return height


_HEIGHT = _heights()
_NAMES_BY_RULE = {
    "call": TERM_NAMES * 2 + BUILTIN_NAMES + ["a", "b", "recon"] * 4 + HOSTILE_NAMES,
    "argument": PARAM_NAMES + HOSTILE_NAMES,
    "binding": ["a", "b", "recon"] * 3 + ["mse", "log", "_x"],
    "declaration": ["w", "m", "depth"] * 3 + ["pred", "mse"],
}
_REFERENCE_NAMES = ["pred", "target", "w", "out", "depth", "model", "__class__", "_secret"]


def _terminal(rng: random.Random, name: str, rule: str) -> str:
    if name in _WORDS:  # a word, even where the tokens are joined without spaces
        return f" {_LITERALS[name]} "
    if name in _LITERALS:
        return _LITERALS[name]
    if name == "NAME":
        return rng.choice(_NAMES_BY_RULE.get(rule, _REFERENCE_NAMES))
    if name == "NUMBER":
        return rng.choice(NUMBERS)
    if name == "SIGNED_NUMBER":
        return rng.choice(["", "-", "+"]) + rng.choice(NUMBERS)
    if name == "STRING":
        return rng.choice(STRINGS)
    return rng.choice(["\n", ";", "\n# note\n"])  # _SEP


# Weights of the alternatives (in the parser's order) where uniform choice would give
# mostly numbers, minus signs and conditions; the other rules choose uniformly.
_WEIGHTS = {
    "_statement": [4, 1],
    "disjunction": [12, 1],
    "conjunction": [12, 1],
    "negation": [12, 1],
    "comparison": [12, 1],
    "sum": [2, 2, 1],
    "product": [3, 2, 1],
    "unary": [6, 1],
    "power": [6, 1, 1],
    "postfix": [20, 1],
    "argument": [1, 2],
}
# Weights by an alternative's first symbol, for rules whose optional parts lark expands into
# many alternatives.
_FIRST_WEIGHTS = {
    "atom": {"NUMBER": 1, "call": 4, "NAME": 1, "TRUE": 0.2, "FALSE": 0.2, "LSQB": 0.1, "LPAR": 1},
}


def _walk(rng: random.Random, rule: str, budget: int, out: list) -> None:
    expansions = _RULES[rule]
    if budget <= 0 and rule == "atom":  # out of budget: a bare name, sometimes a number
        chosen = expansions[rng.choices([0, 1], weights=[1, 4])[0]]
    elif budget <= 0:  # out of budget: the shortest way to finish
        chosen = min(expansions, key=lambda e: max([0 if t else _HEIGHT[s] for t, s in e], default=0))
    else:
        weights = _WEIGHTS.get(rule)
        if rule in _FIRST_WEIGHTS:
            weights = [_FIRST_WEIGHTS[rule][e[0][1]] for e in expansions]
        chosen = rng.choices(expansions, weights=weights)[0]
    for term, sym in chosen:
        if term:
            out.append(_terminal(rng, sym, rule))
        else:
            _walk(rng, sym, budget - 1, out)


def grammar_walk(rng: random.Random) -> str:
    """A program from a random walk over the grammar's rules, sometimes damaged a little."""
    tokens: list = []
    # the budget counts rule levels; or, and, not, comparisons and indexing stand above atoms
    _walk(rng, "start", rng.randint(6, 12), tokens)
    for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
        i = rng.randrange(len(tokens) + 1)
        how = rng.random()
        if how < 0.4 and i < len(tokens):
            del tokens[i]
        elif how < 0.7:
            tokens.insert(i, rng.choice(_SOUP_TOKENS))
        elif i + 1 < len(tokens):
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    return rng.choice([" ", "", " "]).join(tokens)


_SOUP_TOKENS = (
    NAMES * 2
    + NUMBERS
    + STRINGS
    + ["+", "-", "*", "/", "^", "**", "(", ")", "(", ")", "[", "]", ",", "=", ".", ";", "\n",
       "#", " ", "\t", "'x'", "`", "{", "}", ":", "@", "!", "~", "%", "&", "|", "\\", "\x00",
       "\ud800", "é", "λ", "1e999", "0x10", "-.5e-3", "f\"{x}\"", "()", "[]", "__", "..."]
)


def token_soup(rng: random.Random) -> str:
    """Program-like token soup, printable noise, or any code points (surrogates included)."""
    shape = rng.random()
    if shape < 0.7:
        return rng.choice(["", " "]).join(rng.choice(_SOUP_TOKENS) for _ in range(rng.randint(1, 16)))
    if shape < 0.85:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40)))
    return "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 12)))


WALK_CASES = 10_000
SOUP_CASES = 10_000


def test_seeded_grammar_walks_give_a_loss_or_an_error():
    rng = random.Random(20240611)
    built = count = 0
    for _ in range(WALK_CASES):
        count += 1
        result = _outcome(grammar_walk(rng))
        if isinstance(result, lossdsl.Loss):
            built += 1
            if built % 10 == 0:
                _call_once(result)
    ran(f"grammar walks ({built} compiled)", count, WALK_CASES)
    # the walk reaches the module builder often, not only the parser's error path
    assert built > WALK_CASES // 20, built


def test_seeded_token_soup_gives_a_loss_or_an_error():
    rng = random.Random(1234)
    count = 0
    for _ in range(SOUP_CASES):
        count += 1
        _outcome(token_soup(rng))
    ran("token soup", count, SOUP_CASES)
