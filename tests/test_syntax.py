"""The parser: text to AST (DESIGN.md §3). Expected trees are written out node by node."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.syntax import ast
from lossdsl.syntax.ast import (
    Binding,
    Bool,
    Call,
    InputRef,
    Keyword,
    ListValue,
    Neg,
    NoneValue,
    Number,
    Power,
    Product,
    Program,
    String,
    Sum,
)


def N(v):
    return Number(value=v)


def C(name, *args, **kwargs):
    kws = tuple(Keyword(name=k, value=v) for k, v in kwargs.items())
    return Call(name=name, args=args, kwargs=kws)


def expr(text):
    program = lossdsl.parse(text)
    assert program.bindings == ()
    return program.expr


def test_design_card_program():
    program = lossdsl.parse(
        "recon  = huber(delta=1)            # binding\n"
        "smooth = temporal_diff(order=1)\n"
        "0.7*recon + 0.3*smooth + 1e-4*l2_reg + watch(mae)\n"
    )
    assert program == Program(
        bindings=(
            Binding(name="recon", value=C("huber", delta=N(1))),
            Binding(name="smooth", value=C("temporal_diff", order=N(1))),
        ),
        expr=Sum(
            operands=(
                Product(operands=(N(0.7), C("recon")), ops=("*",)),
                Product(operands=(N(0.3), C("smooth")), ops=("*",)),
                Product(operands=(N(1e-4), C("l2_reg")), ops=("*",)),
                C("watch", C("mae")),
            ),
            ops=("+", "+", "+"),
        ),
    )


@pytest.mark.parametrize(
    "text, value",
    [("1", 1), ("0.3", 0.3), ("1e-3", 0.001), (".5", 0.5), ("2.", 2.0), ("1E+2", 100.0), ("007", 7)],
)
def test_numbers(text, value):
    node = expr(f"{text}*mse").operands[0]
    assert node == N(value)
    assert type(node.value) is type(value)  # integers stay int so order=1 keeps its type


def test_huge_integer_becomes_float():
    assert type(expr("12345678901234567890*mse").operands[0].value) is float


def test_precedence_and_associativity():
    a, b, c = C("a"), C("b"), C("c")
    assert expr("a + b * c") == Sum(operands=(a, Product(operands=(b, c), ops=("*",))), ops=("+",))
    assert expr("a - b + c") == Sum(operands=(a, b, c), ops=("-", "+"))
    assert expr("a / b * c") == Product(operands=(a, b, c), ops=("/", "*"))
    # '^' is right-associative and binds tighter than unary minus: -2^2 = -(2^2)
    assert expr("a ^ b ^ c") == Power(base=a, exponent=Power(base=b, exponent=c))
    assert expr("-2^2") == Neg(operand=Power(base=N(2), exponent=N(2)))
    assert expr("a ^ -b") == Power(base=a, exponent=Neg(operand=b))
    assert expr("--a") == Neg(operand=Neg(operand=a))


def test_double_star_is_power():
    assert expr("mse ** 2") == expr("mse ^ 2") == Power(base=C("mse"), exponent=N(2))


def test_brackets_keep_nested_chains():
    a, b, c = C("a"), C("b"), C("c")
    inner = Sum(operands=(a, b), ops=("+",))
    assert expr("(a + b) + c") == Sum(operands=(inner, c), ops=("+",))
    assert expr("a - (b - c)") == Sum(operands=(a, Sum(operands=(b, c), ops=("-",))), ops=("-",))
    assert expr("2 * (a + b)") == Product(operands=(N(2), inner), ops=("*",))
    assert expr("((a))") == a


def test_calls_and_arguments():
    assert expr("mse") == expr("mse()") == C("mse")
    assert expr("clamp(mse, min=0, max=2.5)") == C("clamp", C("mse"), min=N(0), max=N(2.5))
    assert expr("quantile(0.9)") == C("quantile", N(0.9))
    assert expr("f(a, b,)") == C("f", C("a"), C("b"))  # trailing comma


def test_keyword_values():
    call = expr('f(s="ema", t=true, u=false, n=none, l=[1, -2.5, "x", [true]], r=out.depth, k=-3)')
    values = {kw.name: kw.value for kw in call.kwargs}
    assert values == {
        "s": String(value="ema"),
        "t": Bool(value=True),
        "u": Bool(value=False),
        "n": NoneValue(),
        "l": ListValue(
            items=(N(1), N(-2.5), String(value="x"), ListValue(items=(Bool(value=True),)))
        ),
        "r": InputRef(path=("out", "depth")),
        "k": N(-3),
    }


def test_string_escapes_follow_json():
    call = expr(r'f(s="a\"b\\c\n\u00e9")')
    assert call.kwargs[0].value == String(value='a"b\\c\né')
    # a raw tab inside the quotes is kept as it is
    assert expr('f(s="a\tb")').kwargs[0].value == String(value="a\tb")


def test_single_quoted_strings_mean_what_double_quoted_ones_do():
    # YAML and Python users write either; the README, `lossdsl terms` and hints show 'mean'
    assert expr("mse(reduction='sum')") == expr('mse(reduction="sum")') == C("mse", reduction=String(value="sum"))
    # inside single quotes a double quote needs no escape and \' is a single quote
    assert expr("""f(s='say "hi"')""").kwargs[0].value == String(value='say "hi"')
    assert expr(r"f(s='it\'s')").kwargs[0].value == String(value="it's")
    assert expr(r"f(s='a\\b\n\u00e9', t='')").kwargs[0].value == String(value="a\\b\né")
    assert expr("f(s='')").kwargs[0].value == String(value="")
    assert expr("f(l=['x', \"y\"])").kwargs[0].value == ListValue(items=(String(value="x"), String(value="y")))
    # and the same JSON escapes are refused
    with pytest.raises(lossdsl.LossSyntaxError, match="bad escape"):
        lossdsl.parse(r"f(s='\q')")


def test_single_quoted_strings_compile():
    pred, target = torch.randn(4, 3), torch.randn(4, 3)
    crit = lossdsl.compile("mse(reduction='sum') + balance(mae, huber, method='ema')")
    assert crit.canonical == 'mse(reduction="sum") + balance(mae, huber, method="ema")'
    torch.testing.assert_close(
        crit(pred, target), F.mse_loss(pred, target, reduction="sum") + 2 * torch.tensor(1.0)
    )


def test_names_that_start_like_reserved_words_are_names():
    # a reserved word is the whole word; after a dot any word is a key of the input
    assert expr("truex + none_term") == Sum(operands=(C("truex"), C("none_term")), ops=("+",))
    assert expr("f(k=x.true)").kwargs[0].value == InputRef(path=("x", "true"))


def test_separators_comments_and_continuation_lines():
    one_line = lossdsl.parse("a = mse; b = mae; a + b")
    assert lossdsl.parse("a = mse\nb = mae\na + b") == one_line
    assert lossdsl.parse("# header\n\na = mse   # first\r\nb = mae;\n\na + b\n\n# end\n") == one_line
    # a new line after an operator, '=' or ',' or inside brackets continues the statement
    assert lossdsl.parse("a =\n mse\nb = mae\na +\n b") == one_line
    assert expr("huber(\n  delta=1,\n) *\n 2") == Product(operands=(C("huber", delta=N(1)), N(2)), ops=("*",))
    assert expr("(mse\n + mae)") == Sum(operands=(C("mse"), C("mae")), ops=("+",))


def test_spans_point_into_the_source():
    text = "recon = huber(delta=1)\n0.7*recon + 0.3*temporal_diff(order=2)"
    program = lossdsl.parse(text)

    def at(node):
        return text[node.span.start : node.span.end]

    binding = program.bindings[0]
    assert at(binding) == "recon = huber(delta=1)"
    assert text[slice(*binding.name_span)] == "recon"
    assert at(binding.value) == "huber(delta=1)"
    assert at(binding.value.kwargs[0]) == "delta=1"
    assert at(program.expr) == "0.7*recon + 0.3*temporal_diff(order=2)"
    second = program.expr.operands[1]
    assert at(second) == "0.3*temporal_diff(order=2)"
    assert at(second.operands[1]) == "temporal_diff(order=2)"
    assert at(second.operands[1].kwargs[0].value) == "2"


def test_equality_ignores_spans_and_nodes_hash():
    a, b = lossdsl.parse("mse + mae"), lossdsl.parse("  mse   +   mae  ")
    assert a.expr.span != b.expr.span
    assert a == b and hash(a) == hash(b)
    assert a != lossdsl.parse("mae + mse")


def test_ast_rejects_malformed_nodes():
    with pytest.raises(ValueError):
        Number(value=float("inf"))
    with pytest.raises(ValueError):
        Number(value=True)
    with pytest.raises(ValueError):
        Sum(operands=(C("a"), C("b")), ops=("+", "+"))
    with pytest.raises(ValueError):
        InputRef(path=())
    with pytest.raises(Exception):
        C("a").name = "b"  # frozen


def test_parse_is_cached_and_rejects_non_text():
    assert lossdsl.parse("mse + mae") is lossdsl.parse("mse + mae")
    with pytest.raises(lossdsl.LossDSLError, match="a loss program is text, got bytes"):
        lossdsl.parse(b"mse")
    with pytest.raises(lossdsl.LossDSLError, match="a loss program is text, got list"):
        lossdsl.parse(["mse"])  # not hashable: refused before the cache


def test_grammar_file_is_the_parsers_grammar():
    from lossdsl.syntax import grammar_text

    text = grammar_text()
    assert "start:" in text and "NAME:" in text
    assert isinstance(lossdsl.parse("mse"), ast.Program)
