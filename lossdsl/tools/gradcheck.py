"""``lossdsl gradcheck``: ``torch.autograd.gradcheck`` of a program on inputs that each term
accepts.

Random inputs are drawn from each term's declared domain (:data:`DOMAINS`): probabilities
for ``bce``, class indices for ``focal_ce``, positive variances for ``gaussian_nll``, ... .
An input without a declared domain is standard normal when it is ``pred`` and uniform in
(0.05, 0.95) otherwise (valid masks and class weights, and no ties between ranking targets).
Where two terms read one input, the narrower domain wins. Terms whose inputs have shapes of
their own (images, boxes, sequences with their lengths) draw them whole (:data:`SHAPED`)
unless a shape is given. When the check fails, each term is
checked alone, which tells a term with a wrong gradient from a documented
non-differentiability (:data:`DOCUMENTED`) and from a combination that is not differentiable
as written (``detach(...)``, a balancer whose weights follow detached values).

The tables live here, next to the only code that draws inputs, keyed by term name; the
registry describes signatures, not value ranges.

>>> report = run_gradcheck("bce + 0.5*mse", shape=(3, 4))
>>> report.ok, report.text.splitlines()[0]
(True, 'gradcheck passed: bce + 0.5 * mse')
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.autograd.gradcheck import GradcheckError, gradcheck

from ..compiler import compile as compile_program
from ..errors import LossDSLError, did_you_mean
from ..resolve import ir

__all__ = [
    "DOMAINS", "SHAPED", "DOCUMENTED", "MAX_ELEMENTS", "GradcheckReport", "run_gradcheck", "check_shape",
]

ANY, PROBABILITY, POSITIVE, CLASS_INDEX = "any", "probability", "positive", "class index"
NETWORK = "network"  # a module that the term calls (a feature extractor): a small Tanh
_NARROWER = (NETWORK, CLASS_INDEX, PROBABILITY, POSITIVE, ANY)  # first wins where terms share an input
DEFAULT_SHAPE = (4, 8, 3)

Domain = dict[str, str]

# The values each term's tensor inputs take, by term name: a mapping, or a function of the
# term's hyperparameters giving one. Inputs not named take the default described above.
DOMAINS: dict[str, Domain | Callable[[dict[str, Any]], Domain]] = {
    "bce": {"pred": PROBABILITY, "target": PROBABILITY},
    "bce_logits": {"target": PROBABILITY},
    "focal": {"target": PROBABILITY},
    "dice": lambda hyper: {"pred": ANY if hyper["from_logits"] else PROBABILITY, "target": PROBABILITY},
    "focal_ce": {"target": CLASS_INDEX},
    "cross_entropy": {"target": PROBABILITY},
    "kl_div": lambda hyper: {"target": ANY if hyper["log_target"] else PROBABILITY},
    "poisson_nll": lambda hyper: {"pred": ANY if hyper["log_input"] else POSITIVE, "target": POSITIVE},
    "gaussian_nll": {"var": POSITIVE},
    "feature_distance": {"net": NETWORK},
}


def _uniform(size, generator) -> torch.Tensor:
    return torch.rand(size, dtype=torch.float64, generator=generator) * 0.9 + 0.05


def _images(hyper: dict, generator) -> dict[str, Any]:
    side = hyper.get("window", 11)  # the smallest image a valid convolution takes
    return {name: _uniform((1, 1, side, side), generator) for name in ("pred", "target")}


def _boxes(hyper: dict, generator) -> dict[str, Any]:
    def corners():
        low = torch.rand(6, 2, dtype=torch.float64, generator=generator)
        return torch.cat([low, low + 0.2 + torch.rand(6, 2, dtype=torch.float64, generator=generator)], -1)

    return {"pred": corners(), "target": corners()}  # (x1, y1, x2, y2) with x1 < x2, y1 < y2


def _rows(hyper: dict, generator) -> dict[str, Any]:
    return {name: torch.randn(6, 5, dtype=torch.float64, generator=generator)
            for name in ("anchor", "positive")}


def _sequences(hyper: dict, generator) -> dict[str, Any]:
    steps, batch, length = 12, 2, 3
    blank = hyper.get("blank", 0)
    classes = max(5, blank + 2)
    labels = torch.randint(0, classes - 1, (batch, length), generator=generator)
    return {
        "pred": torch.randn(steps, batch, classes, dtype=torch.float64, generator=generator),
        "target": labels + (labels >= blank).long(),  # every class but the blank
        "input_lengths": torch.full((batch,), steps),
        "target_lengths": torch.full((batch,), length),
    }


# Terms whose inputs have shapes of their own (images, boxes, rows of embeddings, a CTC batch
# of sequences and lengths): a function of the hyperparameters and a generator giving a
# value for each of the term's inputs. Used unless --shape or --input sets the shapes.
SHAPED: dict[str, Callable[[dict, Any], dict[str, Any]]] = {
    "ssim": _images,
    "giou": _boxes,
    "diou": _boxes,
    "ciou": _boxes,
    "info_nce": _rows,
    "nt_xent": _rows,
    "ctc": _sequences,
}

# Terms whose gradient is, by design and as their docstrings say, not the derivative of
# their value: finite differences disagree with it.
DOCUMENTED: dict[str, str] = {
    "adaptive_huber": "its delta = scale * mean(abs(e)) follows the batch and is detached: "
    "the gradient holds delta fixed, finite differences see it move",
    "feature_distance": "net(target) runs without gradient: its gradient with respect to target "
    "is 0, finite differences see the target's features move",
    "ciou": "its trade-off alpha = v / (1 - IoU + v) is detached, as in the paper: the gradient "
    "holds alpha fixed, finite differences see it move",
}

# gradcheck evaluates the loss twice per element of every input that takes a gradient.
MAX_ELEMENTS = 4096


@dataclass(frozen=True)
class GradcheckReport:
    """``ok``: the exit status is 0; ``text``: what to print."""

    ok: bool
    text: str


def check_shape(name: str, shape: tuple[int, ...]) -> None:
    """Refuse a shape that gradcheck would take hours (or all memory) to check.

    >>> check_shape("pred", (4, 8, 3))
    >>> check_shape("pred", (100, 100))
    Traceback (most recent call last):
    lossdsl.LossDSLError: gradcheck: pred of shape 100,100 has more than 4096 elements
    hint: gradcheck evaluates the loss twice per element; a small shape such as 4,8,3 checks the same formula
    """
    count = 1
    for size in shape:
        count *= size
        if count > MAX_ELEMENTS:
            raise LossDSLError(
                f"gradcheck: {name} of shape {','.join(map(str, shape))} has more than "
                f"{MAX_ELEMENTS} elements",
                hint="gradcheck evaluates the loss twice per element; a small shape such as 4,8,3 "
                "checks the same formula",
            )


def _domains(terms: list[ir.Term]) -> dict[tuple[str, ...], tuple[str, ir.Term]]:
    """The narrowest domain asked of each input path, and a term that asked it."""
    out: dict[tuple[str, ...], tuple[str, ir.Term]] = {}
    for term in terms:
        table = DOMAINS.get(term.spec.name, {})
        table = table(dict(term.hyper)) if callable(table) else table
        for route in term.routes:
            kind = table.get(route.param, ANY)
            held = out.get(route.path)
            if held is None or _NARROWER.index(kind) < _NARROWER.index(held[0]):
                out[route.path] = (kind, term)
    return out


def _class_index_shape(term: ir.Term, shapes: dict, default: tuple[int, ...]) -> tuple[tuple, int] | None:
    """Shape and class count of class-index targets for ``term``'s pred, or None."""
    pred = next((r.path for r in term.routes if r.param == "pred"), ("pred",))
    pred_shape = shapes.get(".".join(pred), default)
    if len(pred_shape) < 2:
        return (), pred_shape[0]
    axis = dict(term.hyper).get("class_dim", 1)
    if not -len(pred_shape) <= axis < len(pred_shape):
        return None  # the term reports its bad class_dim itself
    axis %= len(pred_shape)
    return tuple(s for i, s in enumerate(pred_shape) if i != axis), pred_shape[axis]


def _inputs(nodes: list[ir.Node], shape, shapes: dict, generator) -> tuple[list, list, dict]:
    """Random inputs for every input the program reads: ``(paths, tensors, other values)``.

    Floating tensors are float64 and take a gradient; class indices and lengths are int64.
    """
    paths: list[tuple[str, ...]] = []
    for node in nodes:
        if isinstance(node, ir.Term):
            read = [route.path for route in node.routes if route.required]
        else:
            read = [node.path] if isinstance(node, ir.Input) else []
        paths += [path for path in read if path[0] != "model" and path not in paths]
    for path in (("pred",), ("target",)):
        if path not in paths:
            paths.append(path)
    terms = [node for node in nodes if isinstance(node, ir.Term)]
    drawn: dict[tuple[str, ...], Any] = {}
    if shape is None:
        for term in terms:
            build = SHAPED.get(term.spec.name)
            values = build(dict(term.hyper), generator) if build else {}
            for route in term.routes:
                if route.param in values and ".".join(route.path) not in shapes:
                    drawn.setdefault(route.path, values[route.param])
    shape = shape or DEFAULT_SHAPE
    domains = _domains(terms)
    conditions = _conditions(nodes)
    names, tensors, others = [], [], {}
    for path in paths:
        size = shapes.get(".".join(path), shape)
        kind, term = domains.get(path, (ANY, None))
        classes = _class_index_shape(term, shapes, shape) if kind == CLASS_INDEX else None
        if path in drawn:
            value = drawn[path]
        elif kind == NETWORK:
            value = torch.nn.Tanh()
        elif classes is not None:
            value = torch.randint(0, classes[1], shapes.get(".".join(path), classes[0]), generator=generator)
        elif path in conditions:  # where() takes a boolean condition, not a drawn number
            value = torch.rand(size, generator=generator) < 0.5
        elif kind == ANY and path == ("pred",):
            value = torch.randn(size, dtype=torch.float64, generator=generator)
        else:
            value = _uniform(size, generator)
        if not isinstance(value, torch.Tensor):
            others[path] = value
            continue
        check_shape(".".join(path), tuple(value.shape))
        names.append(path)
        tensors.append(value.requires_grad_() if value.is_floating_point() else value)
    return names, tensors, others


def _conditions(nodes: list[ir.Node]) -> set[tuple[str, ...]]:
    """The inputs that ``where`` reads as its condition (through indexing and ``detach``)."""
    found = set()
    for node in nodes:
        if isinstance(node, ir.Call) and node.name == "where":
            condition = node.args[0]
            while isinstance(condition, ir.Call) and condition.name in ("index", "detach"):
                condition = condition.args[0]
            if isinstance(condition, ir.Input):
                found.add(condition.path)
    return found


def _logged_terms(resolved: ir.IR) -> list[tuple[str, ir.Term]]:
    """``(log name, term)`` of every logged term call (not the composites and inline terms)."""
    return [(item.name, item.node) for item in resolved.logged if isinstance(item.node, ir.Term)]


def _first_failure(fn, tensors) -> str | None:
    """None when ``torch.autograd.gradcheck`` passes, else the first line of its complaint."""
    try:
        gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-5, rtol=1e-3)
    except GradcheckError as err:
        return str(err).strip().splitlines()[0]
    return None


def _not_differentiable_as_written(nodes: list[ir.Node]) -> bool:
    """Whether the program itself holds a detach or a balancer (weights from detached values)."""
    return any(isinstance(n, ir.Balance) or (isinstance(n, ir.Call) and n.name == "detach") for n in nodes)


def run_gradcheck(source: str, shape=None, shapes: dict | None = None, seed: int = 0) -> GradcheckReport:
    """Check the gradient of the program ``source`` against finite differences.

    ``shape``: of pred and target (and every input without a shape of its own); ``None``:
    the shapes the terms need (:data:`SHAPED`), else 4, 8, 3. ``shapes``: ``{name: shape}``.
    """
    shapes = dict(shapes or {})
    for name, size in [("pred", shape or DEFAULT_SHAPE), *shapes.items()]:
        check_shape(name, size)
    crit = compile_program(source)
    resolved: ir.IR = crit.ir
    nodes = resolved.nodes()
    generator = torch.Generator().manual_seed(seed)
    names, tensors, others = _inputs(nodes, shape, shapes, generator)
    read = [".".join(path) for path in [*names, *others]]
    unread = [name for name in shapes if name not in read]
    if unread:  # a misspelt name would leave its input at the default shape, unsaid
        raise LossDSLError(f"a shape is given for the input '{unread[0]}', which the program does not read",
                           hint=did_you_mean(unread[0], read) or "inputs it reads: " + ", ".join(read))
    extra: dict[str, Any] = {}
    if "model" in resolved.inputs_read:
        extra["model"] = torch.nn.Linear((shape or DEFAULT_SHAPE)[-1], 2).double()
    # Balancers and the step live in buffers that each call updates: every evaluation starts
    # from the same state, so the function that finite differences see is a fixed one.
    state = copy.deepcopy(crit.state_dict())

    def nest(values) -> dict[str, Any]:
        inputs: dict[str, Any] = dict(extra)
        for path, value in [*zip(names, values), *others.items()]:
            node = inputs
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        return inputs

    def total(*values):
        crit.load_state_dict(state)
        inputs = nest(values)
        return crit(inputs.pop("pred", None), inputs.pop("target", None), **inputs)

    def one_term(term: ir.Term):
        def value(*values):
            inputs = nest(values)
            args = []
            for route in term.routes:
                node: Any = inputs
                for part in route.path:
                    node = node.get(part) if isinstance(node, dict) else None
                args.append(node)
            return term.spec.func(*args, **dict(term.hyper))

        return value

    shown = ", ".join([".".join(p) + str(tuple(t.shape)) + ("" if t.is_floating_point() else " int64")
                       for p, t in zip(names, tensors)] + [f"{'.'.join(p)}={v!r}" for p, v in others.items()])
    head = f"inputs (float64): {shown}"
    failure = _first_failure(total, tensors)
    if failure is None:
        return GradcheckReport(True, f"gradcheck passed: {crit.canonical}\n{head}")
    lines, failed, documented = [], [], []
    for name, term in _logged_terms(resolved):
        alone = _first_failure(one_term(term), tensors)
        if alone is None:
            lines.append(f"  {name}: passed")
        elif term.spec.name in DOCUMENTED:
            documented.append(name)
            lines.append(f"  {name}: differs, as documented: {DOCUMENTED[term.spec.name]}")
        else:
            failed.append(name)
            lines.append(f"  {name}: FAILED ({alone})")
    if documented and not failed and not _not_differentiable_as_written(nodes):
        return GradcheckReport(True, "\n".join([
            f"gradcheck passed except where documented: {crit.canonical}", head,
            "finite differences disagree with the gradient only through terms that say so:", *lines,
        ]))
    text = [f"gradcheck FAILED for {crit.canonical}", head, failure, "each term alone:", *lines]
    if documented and not failed:
        text.append("hint: besides the documented terms, the program holds detach() or a balancer "
                    "whose weights follow detached values; finite differences disagree with those too")
    elif not failed:
        text.append("hint: where every term passes alone, the combination is not differentiable as "
                    "written: detach(), or a balancer whose weights follow the detached values")
    return GradcheckReport(False, "\n".join(text))
