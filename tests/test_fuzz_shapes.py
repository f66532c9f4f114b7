"""Fuzzing the shapes of text that once took minutes (README "Hostile text").

Seeded generators for programs that are short but stand for huge trees, or long and built to
hit a slow path: chains of bindings inside bindings (mixing every operation, past the depth
limit and within it), bindings shared by many uses (each binding built from random earlier
ones, so the program is a DAG with exponentially many paths), long products and sums of
numbers, terms and bindings, long names, numbers and strings before a syntax error, and
multi-byte text around the 64 KiB limit. Some inputs are damaged by a deleted, inserted or
swapped character. Every input gives a ``Loss`` (called once) or a ``LossDSLError``, and no
input takes long: the slowest is asserted to stay far below what the quadratic and
exponential paths took (tens of seconds to minutes).
"""

import random
import time

from test_fuzz import _call_once, _outcome, ran

LIMIT = 64 * 1024

LINKS = [
    "{p} + 1", "{p} + {p}", "{p} * {p}", "exp({p})", "watch({p})", "{p}*mae", "-{p}",
    "log({p} + 1)", "min({p}, mse)", 'balance({p}, mae, method="ema")', "{p}/2", "detach({p})",
    "clamp({p}, min=0)", "{p} ^ 2", "{p}*{p}*{p}", "{p} + watch({p})", "0.5*{p} - 0.25*{p}",
    "sqrt(abs({p}))", "{p}*linear(0, 1, steps=10)", "max({p}, {p}, mae)",
]
OPERANDS = ["1", "2", "0.5", "mse", "mae", "a", "exp(a)", "(a + 1)", "huber", "linear(0, 1, steps=5)"]


def binding_chain(rng: random.Random) -> str:
    """``a0 = mse`` then links ``a{i} = f(a{i-1})``, a few hundred deep or fewer."""
    n = int(2 ** rng.uniform(0, 9.5))  # up to ~700 links, most far fewer
    links = [rng.choice(LINKS) for _ in range(3)]
    lines = ["a0 = mse"] + [f"a{i} = " + rng.choice(links).format(p=f"a{i - 1}") for i in range(1, n + 1)]
    top = rng.choice([f"a{n}", f"a{n} + mae", f"watch(a{n}) + mse", f"a{n} * a{n}"])
    return "\n".join(lines + [top])


def shared_bindings(rng: random.Random) -> str:
    """Each binding built from two random earlier ones: a DAG with exponentially many paths."""
    n = rng.randint(2, 120)
    lines = [rng.choice(["a0 = mse", "a0 = watch(mse)", "a0 = huber(delta=2)", "a0 = 2"])]
    used: set[int] = set()
    for i in range(1, n + 1):
        j, k = rng.randrange(max(0, i - 3), i), rng.randrange(i)
        used |= {j, k}
        op = rng.choice(["+", "+", "*", "-", "/"])
        lines.append(f"a{i} = " + rng.choice(["a{j} {op} a{k}", "a{j} {op} a{k} + mae", "exp(a{j}) {op} a{k}"]).format(
            j=j, k=k, op=op))
    loose = [f"a{i}" for i in range(n + 1) if i not in used]
    return "\n".join(lines + [" + ".join(loose)])


def long_chain(rng: random.Random) -> str:
    """A product or sum of thousands of operands: numbers, terms, a binding."""
    size = int(2 ** rng.uniform(6, 16))  # bytes, up to 64 KiB
    pick = rng.sample(OPERANDS, rng.randint(1, 3))
    ops = rng.choice([["*"], ["/"], ["*", "/"], ["+"], ["+", "-", "*"]])
    parts = ["mse"]
    length = 3
    while length < size:
        piece = rng.choice(ops) + rng.choice(pick)
        parts.append(piece)
        length += len(piece)
    head = "a = mse\n" if any("a" in p for p in pick) else ""
    return head + "".join(parts)


def long_token(rng: random.Random) -> str:
    """A long name, number or string, then something that cannot follow it."""
    n = int(2 ** rng.uniform(4, 16))
    token = rng.choice(["a" * n, "1" * n, "mse(reduction='" + "x" * n, 'mse(method="' + "é" * n, "_" * n])
    return rng.choice(["", "mse + ", "mse(", "k = "]) + token + rng.choice(["=)", ")", "(", "", " ]", "'", ","])


def near_the_limit(rng: random.Random) -> str:
    """Multi-byte text ending just below or just past 64 KiB."""
    ch = rng.choice(["é", "€", "\U0001F600", "a", "\ud800"])
    width = len(ch.encode("utf-8", "surrogatepass"))
    count = (LIMIT - 10) // width + rng.randint(-2, 3)
    return rng.choice(["mse # ", "mse + ", 'mse(reduction="']) + ch * count


SHAPES = [binding_chain] * 3 + [shared_bindings] * 3 + [long_chain] * 2 + [long_token, near_the_limit]


def damaged(rng: random.Random, text: str) -> str:
    if not text or rng.random() < 0.7:
        return text
    i = rng.randrange(len(text))
    how = rng.random()
    if how < 0.4:
        return text[:i] + text[i + 1:]
    if how < 0.7:
        return text[:i] + rng.choice("()+*=;\n'\"[,") + text[i:]
    return text[:i] + text[i + 1: i + 2] + text[i: i + 1] + text[i + 2:]


SHAPE_CASES = 150
SLOWEST_ALLOWED = 10.0  # CPU seconds; the paths fixed here took tens of seconds to minutes


def test_seeded_hostile_shapes_give_a_loss_or_an_error_quickly():
    rng = random.Random(6502)
    count = built = 0
    slowest = (0.0, "")
    for _ in range(SHAPE_CASES):
        text = damaged(rng, rng.choice(SHAPES)(rng))
        start = time.process_time()
        result = _outcome(text)
        if not isinstance(result, Exception):
            built += 1
            _call_once(result)
        took = time.process_time() - start
        slowest = max(slowest, (took, text[:60]))
        count += 1
    ran(f"hostile shapes ({built} compiled, slowest {slowest[0]:.2f} s)", count, SHAPE_CASES)
    assert built >= SHAPE_CASES // 10, built
    assert slowest[0] < SLOWEST_ALLOWED, slowest
