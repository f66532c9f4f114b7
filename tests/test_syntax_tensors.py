"""The syntax of tensor expressions (DESIGN.md §3.1): declarations, conditions, comparisons,
indexing, list literals, reserved words. Expected trees are written out node by node; the
§3.1 examples are compiled and checked against PyTorch in ``test_tensor_examples.py``."""

import pytest
import lossdsl
from lossdsl.syntax.ast import Binding, Bool, BoolOp, Call, Compare, Declaration, EllipsisItem, Index
from lossdsl.syntax.ast import InputRef, ListValue, Neg, NewAxis, Not, Number, Power, Product, Program
from lossdsl.syntax.ast import Slice, Sum

# The examples of DESIGN.md §3.1, as written there.
HINGE = """\
# bounded hinge: penalise only where pred leaves [lower, upper]
lower = 0; upper = 1
hinge = mean(where(pred < lower or pred > upper, relu(1 - abs(pred - target)), 0))
mse + 0.5*hinge
"""
SEQUENCE = """\
# sequence cross entropy plus the variance of the per-step loss (pred (N, T, C), target (N, T))
step_ce = mean(cross_entropy(class_dim=-1, reduction="none"), dim=0)      # (N, T) -> (T,)
mean(step_ce) + 0.1*var(step_ce, correction=0)
"""
HUBER = """\
# adaptive Huber whose threshold is differentiated too
a = abs(pred - target); delta = 0.5*mean(a)
mean(where(a <= delta, 0.5*a^2, delta*(a - 0.5*delta)))
"""
WEIGHTS = """\
# per-point weights given with the batch, per-channel weights written in the text
input w
mean(w * (pred - target)^2) + 0.1*mean([1, 2, 0.5] * abs(pred - target))
"""
RANKING = """\
# pairwise ranking over a list: every pair whose targets are ordered, hinge with margin 1
d = pred[:, none] - pred[none, :]
n = size(pred, 0)
sum(where(target[:, none] > target[none, :], relu(1 - d), 0)) / (n*(n - 1)/2)
"""
EXAMPLES = {"hinge": HINGE, "sequence": SEQUENCE, "huber": HUBER, "weights": WEIGHTS, "ranking": RANKING}


def N(v):
    return Number(value=v)


def C(name, *args):
    return Call(name=name, args=args)


def S(*parts):
    """A flat sum from operands and operators: S(a, "+", b, "-", c)."""
    return Sum(operands=parts[::2], ops=parts[1::2])


def P(*parts):
    return Product(operands=parts[::2], ops=parts[1::2])


def expr(text):
    return lossdsl.parse(text).expr


a, b, c, d, x, pred, target = (C(n) for n in ("a", "b", "c", "d", "x", "pred", "target"))


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_design_examples_parse_and_round_trip(name):
    program = lossdsl.parse(EXAMPLES[name])
    canonical = lossdsl.unparse(program)
    assert lossdsl.parse(canonical) == program
    assert lossdsl.unparse(lossdsl.parse(canonical)) == canonical


def test_ranking_example_tree():
    def outer(v):  # v[:, none] - v[none, :]
        return Index(base=v, items=(Slice(), NewAxis())), Index(base=v, items=(NewAxis(), Slice()))

    t_col, t_row = outer(target)
    p_col, p_row = outer(pred)
    pairs = P(C("n"), "*", S(C("n"), "-", N(1)), "/", N(2))
    assert lossdsl.parse(RANKING) == Program(
        bindings=(
            Binding(name="d", value=S(p_col, "-", p_row)),
            Binding(name="n", value=C("size", pred, N(0))),
        ),
        expr=P(
            C("sum", C("where", Compare(op=">", left=t_col, right=t_row), C("relu", S(N(1), "-", d)), N(0))),
            "/",
            pairs,
        ),
    )


def test_weights_example_tree():
    e = S(pred, "-", target)
    assert lossdsl.parse(WEIGHTS) == Program(
        declarations=(Declaration(names=("w",)),),
        expr=S(
            C("mean", P(C("w"), "*", Power(base=e, exponent=N(2)))),
            "+",
            P(N(0.1), "*", C("mean", P(ListValue(items=(N(1), N(2), N(0.5))), "*", C("abs", e)))),
        ),
    )


def test_precedence_of_conditions():
    lt = Compare(op="<", left=a, right=b)
    # lowest first: or, and, not, comparisons, + -, * /, unary -, ^, calls and indexing
    assert expr("not a < b and c") == BoolOp(op="and", operands=(Not(operand=lt), c))
    assert expr("a or b and c") == BoolOp(op="or", operands=(a, BoolOp(op="and", operands=(b, c))))
    assert expr("a and b or c") == BoolOp(op="or", operands=(BoolOp(op="and", operands=(a, b)), c))
    assert expr("not a and b") == BoolOp(op="and", operands=(Not(operand=a), b))
    assert expr("not (a and b)") == Not(operand=BoolOp(op="and", operands=(a, b)))
    assert expr("not not a") == Not(operand=Not(operand=a))
    assert expr("a + b < c * d") == Compare(op="<", left=S(a, "+", b), right=P(c, "*", d))
    assert expr("-a <= -b") == Compare(op="<=", left=Neg(operand=a), right=Neg(operand=b))
    assert expr("(a < b) == (c > d)") == Compare(
        op="==", left=lt, right=Compare(op=">", left=c, right=d)
    )
    assert expr("-x[0] ^ 2") == Neg(operand=Power(base=Index(base=x, items=(N(0),)), exponent=N(2)))
    assert expr("f(a < b, x != 1)") == C("f", lt, Compare(op="!=", left=x, right=N(1)))
    for op in ("<", "<=", ">", ">=", "==", "!="):
        assert expr(f"a {op} b") == Compare(op=op, left=a, right=b)


def test_flat_condition_chains():
    assert expr("a and b and c") == BoolOp(op="and", operands=(a, b, c))
    assert expr("a or b or c or d") == BoolOp(op="or", operands=(a, b, c, d))
    # brackets keep a nested chain nested, as for sums
    assert expr("(a and b) and c") == BoolOp(op="and", operands=(BoolOp(op="and", operands=(a, b)), c))
    assert expr("a or (b or c)") == BoolOp(op="or", operands=(a, BoolOp(op="or", operands=(b, c))))


def test_index_items():
    def items(text):
        node = expr(text)
        assert node.base == x
        return node.items

    assert items("x[1:3]") == (Slice(start=N(1), stop=N(3)),)
    assert items("x[::2]") == (Slice(step=N(2)),)
    assert items("x[:]") == items("x[::]") == (Slice(),)
    assert items("x[1:]") == (Slice(start=N(1)),)
    assert items("x[:-1]") == (Slice(stop=Neg(operand=N(1))),)
    assert items("x[1::2]") == (Slice(start=N(1), step=N(2)),)
    assert items("x[..., 0]") == (EllipsisItem(), N(0))
    assert items("x[:, none]") == (Slice(), NewAxis())
    assert items("x[-1]") == (Neg(operand=N(1)),)
    # integers may be computed; the resolver checks that they are whole numbers
    assert items("x[n - 1, 2*k]") == (S(C("n"), "-", N(1)), P(N(2), "*", C("k")))
    assert items("x[0,]") == (N(0),)
    assert items("x[\n  0,\n  1:2\n]") == (N(0), Slice(start=N(1), stop=N(2)))


def test_indexing_is_postfix_and_chains():
    first = Index(base=x, items=(N(0),))
    assert expr("x[0][1]") == Index(base=first, items=(N(1),))
    assert expr("f(x)[0]") == Index(base=C("f", x), items=(N(0),))
    assert expr("out.depth[0]") == Index(base=InputRef(path=("out", "depth")), items=(N(0),))
    assert expr("(a + b)[0]") == Index(base=S(a, "+", b), items=(N(0),))
    assert expr("x[0] ^ 2") == Power(base=first, exponent=N(2))


def test_list_literals_truth_values_and_dotted_names():
    assert expr("[1, -2, 0.5, 1e-3]") == ListValue(items=(N(1), N(-2), N(0.5), N(0.001)))
    assert expr("[1,\n 2,]") == ListValue(items=(N(1), N(2)))
    assert expr("true") == Bool(value=True)
    assert expr("where(m, 1, false)") == C("where", C("m"), N(1), Bool(value=False))
    assert expr("out.depth") == InputRef(path=("out", "depth"))
    assert expr("a.b.c") == InputRef(path=("a", "b", "c"))
    assert expr("out") == C("out")  # a bare name stays a call
    # a key after a dot may be any word: out.none reads inputs["out"]["none"]
    assert expr("out.none + out.and") == S(InputRef(path=("out", "none")), "+", InputRef(path=("out", "and")))


def test_declarations():
    program = lossdsl.parse("input w, mask\na = mse; input k\nmean(w * a)")
    assert program.declarations == (Declaration(names=("w", "mask")), Declaration(names=("k",)))
    assert program.bindings == (Binding(name="a", value=C("mse")),)
    text = "input  w,mask\nmse"
    declaration = lossdsl.parse(text).declarations[0]
    assert [text[slice(*declaration.name_span(i))] for i in range(2)] == ["w", "mask"]
    assert text[slice(*declaration.offsets)] == "input  w,mask"
    # unparse writes the declarations first, each as one statement
    canonical = lossdsl.unparse(lossdsl.parse("a = mse; input w\ninput k, j; a"))
    assert canonical == "input w\ninput k, j\na = mse\na"


def test_operators_and_brackets_continue_a_line():
    assert expr("a <\n b") == Compare(op="<", left=a, right=b)
    assert expr("a and\n b") == expr("a and b")
    assert expr("a or  # why\n b") == expr("a or b")
    assert expr("not\n a") == Not(operand=a)
    assert expr("x[\n0]") == Index(base=x, items=(N(0),))
    assert lossdsl.parse("input a,\n b\na").declarations == (Declaration(names=("a", "b")),)
    # a word after '.' is a key, not an operator: the line ends there
    program = lossdsl.parse("k = out.or\nmse")
    assert program.bindings == (Binding(name="k", value=InputRef(path=("out", "or"))),)


def test_names_that_contain_reserved_words_are_names():
    for name in ("truex", "nota", "inputs", "order", "android", "none_"):
        assert expr(f"{name} + 1") == S(C(name), "+", N(1))


def _error(text):
    with pytest.raises(lossdsl.LossSyntaxError) as caught:
        lossdsl.parse(text)
    return caught.value


@pytest.mark.parametrize(
    "text, word, column",
    [
        ("and = mse; and", "and", 1),
        ("none = mse; none", "none", 1),
        ("true = mse", "true", 1),
        ("not = mse", "not", 1),
        ("input = mse", "input", 1),
        ("f(true=1)", "true", 3),
        ("f(or=1)", "or", 3),
        ("f(k=input)", "input", 5),
        ("input w, not; mse", "not", 10),
        ("input false; mse", "false", 7),
        ("mse + none", "none", 7),
        ("mse + and", "and", 7),
        ("a + not b", "not", 5),
        ("true(x)", "true", 1),
        ("input(x)", "input", 1),
        ("or.x", "or", 1),
        ("true.x", "true", 1),
    ],
)
def test_reserved_words_are_not_names(text, word, column):
    err = _error(text)
    assert err.message == f"'{word}' is a reserved word"
    assert (err.line, err.column) == (1, column)
    assert err.span == (column - 1, column - 1 + len(word))
    assert f"e.g. {word}_" in err.hint


def test_chained_comparison_is_refused_with_its_rewrite():
    err = _error("0 < pred < 1")
    assert str(err) == (
        "comparisons cannot be chained (line 1, column 10)\n"
        "  0 < pred < 1\n"
        "           ^\n"
        "hint: join the comparisons with 'and': 0 < pred and pred < 1"
    )
    err = _error("mean(where(a <= b+1 != (c), 1, 0))")
    assert err.span == (20, 22)
    assert err.hint == "join the comparisons with 'and': a <= b + 1 and b + 1 != c"


@pytest.mark.parametrize(
    "text, message, caret",
    [
        ("x[1 2]", "expected an operator, ']' or ',', found '2'", 4),
        ("x[", "expected a term after '[', found end of input", 2),
        ("x[0", "expected ']' or ',', found end of input", 3),
        ("[1, a]", "expected a number, found 'a'", 4),
        ("a <", "expected a term after '<', found end of input", 3),
        ("a >=\n", "expected a term after '>=', found end of input", 4),
        ("mse and", "expected a term after 'and', found end of input", 7),
        ("mse or (", "expected a term after '(', found end of input", 8),
        ("not", "expected a term after 'not', found end of input", 3),
        ("input", "expected a name after 'input', found end of input", 5),
        ("input 3", "expected a name after 'input', found '3'", 6),
        ("input w,", "expected a name after ',', found end of input", 8),
        ("input w", "expected the loss expression after the last statement, found end of input", 7),
        ("mse\nand mae", "expected the end of the program, found 'and'", 4),
        ("a ! b", "unexpected character '!'", 2),
        ("x[....]", "expected ']' or ',', found '.'", 5),
    ],
)
def test_syntax_errors_in_user_words(text, message, caret):
    err = _error(text)
    assert err.message == message
    assert err.span[0] == caret
    assert str(err).splitlines()[0].endswith(f"(line {err.line}, column {err.column})")


def test_hints_of_the_new_errors():
    assert "index holds integers, slices a:b:c" in _error("x[").hint
    assert _error("x[0").hint == "separate index items with ',' and close the index with ']'"
    assert _error("[1, a]").hint == "a list in an expression holds numbers, e.g. [1, 2, 0.5]"
    assert _error("a ! b").hint == "'!=' means not equal; to negate a condition write not"
    assert _error("mse\nand mae").hint.startswith("a new line ends the statement")
    assert "input w, mask" in _error("input 3").hint
    assert _error("mse + out.depth(1)").hint.startswith("out.depth is an input path")
    assert _error("mean(w)\ninput w").hint.startswith("input statements stand before the expression")


@pytest.mark.parametrize(
    "prefix, suffix",
    [("not " * 63, ""), ("", "[0]" * 63), ("x[" * 62, "]" * 62 + "[0]")],
    ids=["not", "chained-index", "nested-index"],
)
def test_depth_counts_not_and_indexing(prefix, suffix):
    # a name is one level; each not, index bracket and call one more; the limit is 64
    assert lossdsl.parse(prefix + "mse" + suffix)
    with pytest.raises(lossdsl.LossDSLError, match="nests 65 levels deep"):
        lossdsl.parse("not " + prefix + "mse" + suffix)


def test_long_condition_chains_stay_flat_and_linear():
    text = " and ".join(["a < b"] * 3000) + " or " + " or ".join(["not c"] * 3000)
    node = expr(text)
    assert isinstance(node, BoolOp) and len(node.operands) == 3001
    assert len(node.operands[0].operands) == 3000
    assert lossdsl.parse(lossdsl.unparse(lossdsl.parse(text))) == lossdsl.parse(text)


def test_spans_of_the_new_nodes():
    text = "input w\nmean(where(not pred[..., 0:2] < w and out.m, [1, 2], 0))"
    program = lossdsl.parse(text)

    def at(node):
        return text[node.span.start : node.span.end]

    cond = program.expr.args[0].args[0]
    assert at(cond) == "not pred[..., 0:2] < w and out.m"
    assert at(cond.operands[0]) == "not pred[..., 0:2] < w"
    compare = cond.operands[0].operand
    assert at(compare) == "pred[..., 0:2] < w"
    assert at(compare.left) == "pred[..., 0:2]"
    assert [at(i) for i in compare.left.items] == ["...", "0:2"]
    assert at(cond.operands[1]) == "out.m"
    assert at(program.expr.args[0].args[1]) == "[1, 2]"
