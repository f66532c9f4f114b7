"""Errors in user words with a caret under the place (DESIGN.md §8), and the size limits.

Each row of the table is the whole text a user sees, written out here as the contract.
"""

import pickle
from typing import Annotated, Literal

import pytest
from annotated_types import Gt

import lossdsl
from lossdsl import (
    LossArgumentError,
    LossDSLError,
    LossNameError,
    LossSyntaxError,
    LossTypeError,
)


def smooth(pred, target, *, beta: Annotated[float, Gt(0)] = 1.0, reduction: Literal["mean", "sum"] = "mean"):
    """A term with a fixed signature, so these messages do not follow the catalogue."""
    return (pred - target).abs().mean() * beta


TERMS = {"smooth": smooth}

# (source, error class, line, column, the whole str(err))
TABLE = [
    (
        "0.7*hubr(delta=1) + 0.3*temporal_diff",
        LossNameError, 1, 5,
        "unknown loss term 'hubr' (line 1, column 5)\n"
        "  0.7*hubr(delta=1) + 0.3*temporal_diff\n"
        "      ^^^^\n"
        "hint: did you mean 'huber'?",
    ),
    (
        "smooth(bta=1)",
        LossArgumentError, 1, 8,
        "smooth has no parameter 'bta' (line 1, column 8)\n"
        "  smooth(bta=1)\n"
        "         ^^^^^\n"
        "hint: did you mean 'beta'? smooth takes beta, reduction; inputs: pred, target",
    ),
    (
        "smooth(beta=-1)",
        LossArgumentError, 1, 8,
        "smooth: beta=-1 is not allowed (line 1, column 8)\n"
        "  smooth(beta=-1)\n"
        "         ^^^^^^^\n"
        "hint: beta must be greater than 0 (beta: float > 0)",
    ),
    (
        "smooth(beta=true)",
        LossArgumentError, 1, 8,
        "smooth: beta=true is not allowed (line 1, column 8)\n"
        "  smooth(beta=true)\n"
        "         ^^^^^^^^^\n"
        "hint: beta must be a valid number (beta: float > 0)",
    ),
    (
        "smooth(beta=d)",
        LossArgumentError, 1, 8,
        "'beta' of smooth is a hyperparameter; it needs a value, not an input name (line 1, column 8)\n"
        "  smooth(beta=d)\n"
        "         ^^^^^^\n"
        "hint: write a literal such as beta=1, or bind a number first: k = 1; ...(beta=k)",
    ),
    (
        "mse(pred=1)",
        LossArgumentError, 1, 5,
        "'pred' is a tensor input of mse; it needs an input name, not a value (line 1, column 5)\n"
        "  mse(pred=1)\n"
        "      ^^^^^^\n"
        "hint: name the input to read, e.g. pred=pred or pred=outputs.pred",
    ),
    (
        "huber(delta=1",
        LossSyntaxError, 1, 14,
        "expected ')' or ',', found end of input (line 1, column 14)\n"
        "  huber(delta=1\n"
        "               ^\n"
        "hint: close the bracket with ')'",
    ),
    (
        "mse +",
        LossSyntaxError, 1, 6,
        "expected a term after '+', found end of input (line 1, column 6)\n"
        "  mse +\n"
        "       ^\n"
        "hint: a term is a name such as mse, a call such as huber(delta=1), or a number",
    ),
    (
        # at the end of input the caret stands after the last character
        "(mse + mae",
        LossSyntaxError, 1, 11,
        "expected ')', found end of input (line 1, column 11)\n"
        "  (mse + mae\n"
        "            ^\n"
        "hint: close the bracket with ')'",
    ),
    (
        "mse $ mae",
        LossSyntaxError, 1, 5,
        "unexpected character '$' (line 1, column 5)\n"
        "  mse $ mae\n"
        "      ^\n"
        "hint: a program is made of names, numbers, operators (+ - * / ^ < <= > >= == != and or not), "
        "brackets, ',' ':' '=' and ';'",
    ),
    (
        "balance(mse, mae, method='ema)",
        LossSyntaxError, 1, 26,
        "unterminated string (line 1, column 26)\n"
        "  balance(mse, mae, method='ema)\n"
        "                           ^\n"
        "hint: close the string with ' on the same line",
    ),
    (
        'mse(pred="abc',
        LossSyntaxError, 1, 10,
        "unterminated string (line 1, column 10)\n"
        '  mse(pred="abc\n'
        "           ^\n"
        'hint: close the string with " on the same line',
    ),
    (
        "huber(delta=1, delta=2)",
        LossSyntaxError, 1, 16,
        "keyword argument 'delta' is given twice (line 1, column 16)\n"
        "  huber(delta=1, delta=2)\n"
        "                 ^^^^^^^\n"
        "hint: give each keyword once",
    ),
    (
        "clamp(min=0, mse)",
        LossSyntaxError, 1, 14,
        "positional argument after a keyword argument (line 1, column 14)\n"
        "  clamp(min=0, mse)\n"
        "               ^^^\n"
        "hint: put positional arguments first, e.g. clamp(x, min=0)",
    ),
    (
        "mse\nmae",
        LossSyntaxError, 2, 1,
        "expected the end of the program, found 'mae' (line 2, column 1)\n"
        "  mae\n"
        "  ^^^\n"
        "hint: statements before the last must be bindings such as recon = mse; "
        "join terms with an operator such as '+'",
    ),
    (
        "a = mse\nmae",
        LossNameError, 1, 1,
        "binding 'a' is never used (line 1, column 1)\n"
        "  a = mse\n"
        "  ^\n"
        "hint: use it in the expression, or write watch(a) to only log it",
    ),
    (
        "a = b\nb = mse\na",
        LossNameError, 1, 5,
        "'b' is used before it is defined (line 1, column 5)\n"
        "  a = b\n"
        "      ^\n"
        "hint: define a binding on an earlier line than its first use",
    ),
    (
        "log = mse\nlog",
        LossNameError, 1, 1,
        "'log' is a built-in function and cannot be rebound (line 1, column 1)\n"
        "  log = mse\n"
        "  ^^^\n"
        "hint: pick another name, e.g. 'log_term'",
    ),
    (
        "0.5*linear(0,1,steps=10)",
        LossTypeError, 1, 1,
        "the expression has no loss term (line 1, column 1)\n"
        "  0.5*linear(0,1,steps=10)\n"
        "  ^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "hint: a program needs at least one term, e.g. mse or 0.5*huber(delta=1)",
    ),
    (
        "watch(mse)",
        LossTypeError, 1, 1,
        "every term is inside watch(...), so the loss is always 0 (line 1, column 1)\n"
        "  watch(mse)\n"
        "  ^^^^^^^^^^\n"
        "hint: add a term outside watch, e.g. mse + watch(mae)",
    ),
    (
        "linear(0, 1, steps=0)*mse",
        LossArgumentError, 1, 14,
        "linear: steps=0 is not allowed (line 1, column 14)\n"
        "  linear(0, 1, steps=0)*mse\n"
        "               ^^^^^^^\n"
        "hint: steps must be greater than 0",
    ),
    (
        'balance(mse, method="ema")',
        LossArgumentError, 1, 1,
        "balance needs at least 2 operands, got 1 (line 1, column 1)\n"
        '  balance(mse, method="ema")\n'
        "  ^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "hint: balance(a, b, ..., method=...)",
    ),
    (
        'balance(mse, mae, method="emma")',
        LossArgumentError, 1, 19,
        'unknown balance method "emma" (line 1, column 19)\n'
        '  balance(mse, mae, method="emma")\n'
        "                    ^^^^^^^^^^^^^\n"
        "hint: did you mean 'ema'? methods: \"uncertainty\", \"ema\", \"dwa\", \"cov\", "
        '"softadapt", "relobralo", "gradnorm", "lra", "upgrad", "mgda", "pcgrad", "cagrad", '
        '"imtl_g", "aligned_mtl", "nash_mtl", "dualproj", "graddrop", "mean"',
    ),
    (
        "mse(pred=x._y)",
        LossArgumentError, 1, 10,
        "input reference 'x._y' reads a private name '_y' (line 1, column 10)\n"
        "  mse(pred=x._y)\n"
        "           ^^^^\n"
        "hint: input references read mapping keys or public attributes only",
    ),
    (
        "a = mse\nb = mae\nc = hubr\na+b+c",
        LossNameError, 3, 5,
        "unknown loss term 'hubr' (line 3, column 5)\n"
        "  c = hubr\n"
        "      ^^^^\n"
        "hint: did you mean 'huber'?",
    ),
    (
        "mse(pred=out.)",
        LossSyntaxError, 1, 14,
        "expected a name after '.', found ')' (line 1, column 14)\n"
        "  mse(pred=out.)\n"
        "               ^\n"
        "hint: an input reference is a dotted name such as out.depth",
    ),
    (
        "1e999*mse",
        LossSyntaxError, 1, 1,
        "number '1e999' is out of range (line 1, column 1)\n"
        "  1e999*mse\n"
        "  ^^^^^\n"
        "hint: numbers must be finite double-precision values",
    ),
    (
        "(1/0)*mse",
        LossArgumentError, 1, 2,
        "this constant expression has no finite value: it divides by zero (line 1, column 2)\n"
        "  (1/0)*mse\n"
        "   ^^^\n"
        "hint: check for division by zero, log of a negative number or overflow",
    ),
    (
        "# only a comment; nothing else",
        LossSyntaxError, 1, 1,
        "the program is empty (line 1, column 1)\n"
        "  # only a comment; nothing else\n"
        "  ^\n"
        "hint: write an expression such as mse or 0.7*huber(delta=1) + 0.3*temporal_diff",
    ),
    (
        "mse\n  * 2",
        LossSyntaxError, 2, 3,
        "expected a term, found '*' (line 2, column 3)\n"
        "    * 2\n"
        "    ^\n"
        "hint: a new line ends the statement; to go on, end the line before with the operator",
    ),
    (
        # a tab before the caret is kept, so the caret lines up in a terminal
        "mse +\t)",
        LossSyntaxError, 1, 7,
        "expected a term after '+', found ')' (line 1, column 7)\n"
        "  mse +\t)\n"
        "       \t^\n"
        "hint: a term is a name such as mse, a call such as huber(delta=1), or a number",
    ),
]


@pytest.mark.parametrize("source, cls, line, column, message", TABLE, ids=[row[0][:30] for row in TABLE])
def test_error_message(source, cls, line, column, message):
    with pytest.raises(LossDSLError) as caught:
        lossdsl.compile(source, terms=TERMS)
    err = caught.value
    assert type(err) is cls
    assert isinstance(err, ValueError)
    assert (err.line, err.column) == (line, column)
    assert err.source == source
    assert str(err) == message
    # the caret stands under the column the error names
    caret_line = str(err).splitlines()[2]
    assert caret_line.index("^") - 2 + 1 == column
    assert err.hint == message.rsplit("hint: ", 1)[1]


def test_table_is_large_enough():
    assert len(TABLE) >= 20


def test_errors_say_lossdsl_in_tracebacks_and_pickle():
    with pytest.raises(LossNameError) as caught:
        lossdsl.compile("hubr")
    err = caught.value
    assert type(err).__module__ == "lossdsl"
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is LossNameError and str(copy) == str(err)


def test_a_syntax_error_in_parse_alone_carries_the_source():
    with pytest.raises(LossSyntaxError) as caught:
        lossdsl.parse("a = (mse")
    assert caught.value.source == "a = (mse" and caught.value.column == 9


# --- limits (DESIGN.md §8) -----------------------------------------------------------------


def test_source_over_64_kib():
    source = "mse + " * 11000 + "mse"  # 66003 bytes on one line
    with pytest.raises(LossDSLError) as caught:
        lossdsl.compile(source)
    err = caught.value
    assert (err.line, err.column) == (1, 65537)
    # a long line is cut to 120 characters around the caret, 60 before it
    shown = "..." + source[65536 - 60 : 65536 + 60] + "..."
    assert str(err) == (
        "the program is 66003 bytes long; the limit is 65536 bytes (64 KiB) (line 1, column 65537)\n"
        f"  {shown}\n"
        "  " + " " * 63 + "^\n"
        "hint: the text from here on is past the limit of 65536 bytes of UTF-8; shorten the program"
    )


def test_size_is_counted_in_bytes():
    source = "mse # " + "é" * 32766  # 32772 characters, 65538 bytes
    assert len(source) < 65536 < len(source.encode("utf-8"))
    with pytest.raises(LossDSLError, match="the program is 65538 bytes long"):
        lossdsl.parse(source)
    assert lossdsl.parse("mse # " + "é" * 32700).expr.name == "mse"


def test_nesting_depth_65_is_refused_and_64_allowed():
    # a call counts as a level, so 63 brackets around mse make 64 levels
    assert lossdsl.compile("(" * 63 + "mse" + ")" * 63).term_names == ["mse"]
    source = "(" * 64 + "mse" + ")" * 64
    with pytest.raises(LossDSLError) as caught:
        lossdsl.compile(source)
    assert str(caught.value) == (
        "the program nests 65 levels deep; the limit is 64 (line 1, column 64)\n"
        f"  {source}\n"
        "  " + " " * 63 + "^\n"
        "hint: flatten the expression or name parts of it with bindings"
    )


@pytest.mark.parametrize(
    "source",
    [
        # 5000 levels: five times Python's default recursion limit
        "(" * 5000 + "mse" + ")" * 5000,
        "-" * 5000 + "mse",
        "2^" * 5000 + "mse",
        "mse ** " * 5000 + "mse",
        "exp(" * 5000 + "mse" + ")" * 5000,
        "mse(w=" + "[" * 5000 + "]" * 5000 + ")",
        "(" * 5000,
        "a" + "(" * 5000,
    ],
    ids=["brackets", "unary", "power", "double-star", "calls", "lists", "open", "open-call"],
)
def test_deep_input_is_a_loss_dsl_error_not_a_recursion_error(source):
    with pytest.raises(LossDSLError):
        lossdsl.compile(source)


def test_more_than_256_terms():
    source = "+".join(["mse"] * 257)
    with pytest.raises(LossDSLError) as caught:
        lossdsl.compile(source)
    err = caught.value
    start = 256 * 4  # the 257th term
    assert (err.line, err.column) == (1, start + 1)
    assert str(err) == (
        f"the program has more than 256 terms (line 1, column {start + 1})\n"
        f"  ...{source[start - 60:]}\n"
        "  " + " " * 63 + "^^^\n"
        "hint: combine terms into fewer calls or split the loss"
    )
    assert len(lossdsl.compile("+".join(["mse"] * 256)).term_names) == 256


def test_flat_chain_of_250_terms_and_2000_numbers_compiles_and_runs():
    import torch

    source = "+".join(["mae"] * 250) + "+" + "+".join(["1"] * 2000)
    crit = lossdsl.compile(source)
    assert len(crit.term_names) == 250
    pred, target = torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    # 250 * mean|pred - target| + 2000 * 1
    assert float(crit(pred, target)) == pytest.approx(250 * 0.5 + 2000, rel=1e-12)
