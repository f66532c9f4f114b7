"""Hostile text and the limits of DESIGN.md §3 and §8.

The package never evaluates the text: inputs that try to run code are refused when the program
compiles, with a clear error, and nothing they ask for happens (a sentinel file that the code
would create is never created). Input references read mapping keys and public attributes of
the inputs given to ``forward``, never private names. Very long or very deep programs give a
``LossDSLError``, never a ``RecursionError``.
"""

import ast
import collections.abc
import pathlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.runtime.inputs import read_path

PACKAGE = pathlib.Path(lossdsl.__file__).parent


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "the text was executed"


# (text with {p} for the sentinel path, the error class, a phrase the message must contain)
HOSTILE = [
    ("__import__('os').system('touch {p}')", lossdsl.LossSyntaxError, "found the string 'os'"),
    ('__import__("os").system("touch {p}")', lossdsl.LossSyntaxError, "expected"),
    ('os.system("touch {p}")', lossdsl.LossSyntaxError, "os.system is an input path"),
    ('mse + os.system("touch {p}")', lossdsl.LossSyntaxError, "os.system is an input path"),
    ("mse(pred=x.__class__)", lossdsl.LossArgumentError, "private name '__class__'"),
    ("mse(pred=__globals__)", lossdsl.LossArgumentError, "private name '__globals__'"),
    ("mse(pred=__builtins__)", lossdsl.LossArgumentError, "private name '__builtins__'"),
    ("mse(pred=out.__class__.__init__.__globals__)", lossdsl.LossArgumentError, "private name '__class__'"),
    ("mse(target=out.depth.__dict__)", lossdsl.LossArgumentError, "private name '__dict__'"),
    ("mse(weight=out._private)", lossdsl.LossArgumentError, "private name '_private'"),
    ("().__class__.__bases__[0].__subclasses__()", lossdsl.LossSyntaxError, "expected a term after '('"),
    ('lambda: open("{p}", "w")', lossdsl.LossSyntaxError, "expected"),
    ("`touch {p}`", lossdsl.LossSyntaxError, "unexpected character '`'"),
    ('eval("open(\'{p}\', \'w\')")', lossdsl.LossSyntaxError, "expected a term after '('"),
    ("eval(1)", lossdsl.LossNameError, "unknown loss term 'eval'"),
    ("exec(1)", lossdsl.LossNameError, "unknown loss term 'exec'"),
    ("__import__", lossdsl.LossNameError, "unknown loss term '__import__'"),
    ("mse + open", lossdsl.LossNameError, "unknown loss term 'open'"),
    ('f"{{open(\'{p}\', \'w\')}}"', lossdsl.LossSyntaxError, "expected"),
    ("import os", lossdsl.LossSyntaxError, "found 'os'"),
    ("mse(reduction=__import__)", lossdsl.LossArgumentError, "needs a value, not an input name"),
    ('balance(mse, mae, method="__import__(\'os\').system(\'touch {p}\')")', lossdsl.LossArgumentError,
     "unknown balance method"),
    ('mse(reduction="__import__(\'os\').system(\'touch {p}\')")', lossdsl.LossArgumentError, "reduction"),
    ("{{'a': 1}}", lossdsl.LossSyntaxError, "unexpected character '{'"),
    ("mse; __import__('os')", lossdsl.LossSyntaxError, "expected"),
]


@pytest.mark.parametrize("template, error, phrase", HOSTILE)
def test_code_in_the_text_is_refused_and_never_runs(template, error, phrase, sentinel):
    text = template.format(p=sentinel)
    with pytest.raises(error) as info:
        lossdsl.compile(text)
    err = info.value
    message = str(err)
    assert phrase in message, message
    # a clear error: where it is, with a caret, and what to do
    assert err.source == text and err.line is not None and err.column is not None
    assert "^" in message and err.hint


def test_hostile_text_is_refused_by_check_and_from_config_too(sentinel):
    text = f'__import__("os").system("touch {sentinel}")'
    with pytest.raises(lossdsl.LossSyntaxError):
        lossdsl.check(text)
    if hasattr(lossdsl, "from_config"):
        with pytest.raises(lossdsl.LossDSLError):
            lossdsl.from_config({"expr": text})


def test_the_package_has_no_eval_exec_or_dynamic_import():
    forbidden_names = {"eval", "exec", "__import__"}
    forbidden_attrs = {"import_module", "__import__"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in forbidden_names:
                found.append(f"{path.name}:{node.lineno} {func.id}")
            if isinstance(func, ast.Attribute) and func.attr in forbidden_attrs:
                # the two imports by name from fixed tables of the package's own (test_no_eval.py)
                if str(path.relative_to(PACKAGE)) not in ("__init__.py", "language/lazy.py"):
                    found.append(f"{path.name}:{node.lineno} {func.attr}")
    assert found == []


# --- input references at call time -------------------------------------------------------


class Outputs(collections.abc.Mapping):
    """A read-only mapping, as a model might return."""

    def __init__(self, **items):
        self._items = items

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)


@pytest.mark.parametrize("container", ["dict", "mapping", "namespace"])
def test_references_read_mapping_keys_and_public_attributes(container):
    depth, target = torch.randn(3, 4), torch.randn(3, 4)
    out = {"dict": dict(depth=depth), "mapping": Outputs(depth=depth),
           "namespace": SimpleNamespace(depth=depth)}[container]
    crit = lossdsl.compile("mse(pred=out.depth)")
    torch.testing.assert_close(crit(target=target, out=out), F.mse_loss(depth, target))


def test_a_reference_reads_only_what_forward_was_given():
    # `os` and `torch` are names in this module's and the package's globals: never looked up
    crit = lossdsl.compile("mse(pred=os, target=torch)")
    with pytest.raises(lossdsl.LossInputError, match="needs input 'os'"):
        crit()


def test_a_mapping_is_read_by_key_not_by_method():
    crit = lossdsl.compile("mse(pred=out.keys)")
    with pytest.raises(lossdsl.LossInputError, match="needs input 'out.keys'"):
        crit(target=torch.zeros(2), out={"depth": torch.zeros(2)})


class Secretive:
    """An input whose private attribute would do something if it were read."""

    def __init__(self, sentinel):
        self.sentinel = sentinel
        self.depth = torch.ones(2)

    @property
    def _secret(self):
        self.sentinel.write_text("read")
        return torch.zeros(2)


def test_the_runtime_path_reader_refuses_private_names(sentinel):
    env = {"out": Secretive(sentinel)}
    assert torch.equal(read_path(env, ("out", "depth")), torch.ones(2))
    for path in [("out", "_secret"), ("out", "__class__"), ("out", "depth", "__array__")]:
        with pytest.raises(lossdsl.LossInputError, match="private name"):
            read_path(env, path)


# --- size and depth limits ----------------------------------------------------------------

LIMIT = 64 * 1024


def test_source_of_64_kib_compiles_and_one_byte_more_is_refused():
    exact = "mse  #" + "a" * (LIMIT - 6)
    assert len(exact.encode()) == LIMIT
    assert lossdsl.compile(exact).term_names == ["mse"]
    with pytest.raises(lossdsl.LossDSLError, match=f"{LIMIT + 1} bytes"):
        lossdsl.compile(exact + "a")


def test_the_size_limit_counts_bytes_not_characters():
    text = "mse  #" + "é" * ((LIMIT - 6) // 2 + 1)  # under 64 Ki characters, over 64 KiB
    assert len(text) < LIMIT < len(text.encode())
    with pytest.raises(lossdsl.LossDSLError, match="limit is 65536 bytes"):
        lossdsl.compile(text)


N = 10_000
DEEP = {
    "brackets": "(" * N + "mse" + ")" * N,
    "unary minus": "-" * N + "mse",
    "nested calls": "exp(" * N + "mse" + ")" * N,
    "nested lists": "mse(delta=" + "[" * N + "]" * N + ")",
    "power chain": "2^" * N + "mse",
    "brackets in a binding": "a = " + "(" * N + "mse" + ")" * N + "\na",
    "unclosed brackets": "(" * N + "mse",
}


@pytest.mark.parametrize("name", list(DEEP))
def test_very_deep_text_gives_a_loss_error_not_recursion_error(name):
    with pytest.raises(lossdsl.LossDSLError) as info:
        lossdsl.compile(DEEP[name])
    assert not isinstance(info.value.__cause__, RecursionError)
    assert info.value.line == 1


def test_nesting_within_the_limit_compiles_and_beyond_it_is_refused():
    inside = "(" * 60 + "mse" + ")" * 60
    assert lossdsl.compile(inside).term_names == ["mse"]
    with pytest.raises(lossdsl.LossDSLError, match="limit is 64"):
        lossdsl.compile("(" * 70 + "mse" + ")" * 70)


def test_deeply_nested_bindings_are_refused_not_recursion_error():
    # each binding is shallow, but they nest inside one another
    chain = "a0 = mse\n" + "".join(f"a{i} = exp(a{i - 1})\n" for i in range(1, 3000)) + "a2999"
    with pytest.raises(lossdsl.LossDSLError, match="counting the bindings"):
        lossdsl.compile(chain)
    # a few levels of bindings are fine, and compute what they say
    short = "a0 = mse\n" + "".join(f"a{i} = 2*a{i - 1}\n" for i in range(1, 40)) + "a39"
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(lossdsl.compile(short)(pred, target), 2.0**39 * F.mse_loss(pred, target))


def test_a_flat_chain_is_depth_one():
    assert lossdsl.compile(" + ".join(["mse"] * 100) + " + 1" * 500).term_names[:2] == ["mse", "mse_2"]


def test_at_most_256_terms():
    assert len(lossdsl.compile("+".join(["mse"] * 256)).term_names) == 256
    with pytest.raises(lossdsl.LossDSLError, match="more than 256 terms"):
        lossdsl.compile("+".join(["mse"] * 257))


def test_a_program_text_must_be_a_string():
    for value in [None, b"mse", 3, ["mse"]]:
        with pytest.raises(lossdsl.LossDSLError, match="text"):
            lossdsl.compile(value)
