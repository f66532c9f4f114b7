"""Loss configs: the program text plus its settings, from a mapping or a YAML/JSON/TOML file.

A config's top level is a :class:`LossConfig`::

    expr: |
      recon  = huber(delta=1)
      0.7*recon + 0.3*temporal_diff + watch(mse)
    monitor: {probe_every: 50, log_every: 10, sink: runs/demo/terms.jsonl}
    nonfinite: raise

A training config that keeps its loss under a ``loss:`` key works too: when the top level has
no ``expr`` but has ``loss``, only ``loss`` is read (the other keys belong to the training
config), and ``loss:`` may hold a LossConfig or just the program text. ``key="train.loss"``
picks any other place.

Errors point at the file: a bad key at the key's line and column, a mistake in the program
at the line and column of the FILE (exact for YAML block scalars ``|``/``>``, TOML strings and
strings without escapes; approximate after an escape such as ``\\n`` in a JSON string).

>>> import torch, lossdsl
>>> crit = lossdsl.from_config({"expr": "0.7*huber(delta=1) + 0.3*mae", "nonfinite": "warn"})
>>> crit.nonfinite, round(float(crit(torch.zeros(4), torch.ones(4))), 2)
('warn', 0.65)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Callable, Literal

import pydantic
from annotated_types import Gt, Lt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from ..compiler import check as check_program
from ..compiler import compile as compile_program
from ..errors import LossDSLError, did_you_mean
from ..monitor import JsonlWriter, TensorBoardWriter
from .files import MAX_CONFIG_BYTES, ConfigError, read_config_file
from .positions import program_offsets

__all__ = [
    "LossConfig", "MonitorSettings", "ConfigError", "from_config", "load_config", "make_sink",
    "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH",
]

# Deeper mappings than this are refused (a loss config has two or three levels).
MAX_CONFIG_DEPTH = 100


class MonitorSettings(BaseModel):
    """How the loss records its terms and where it writes them. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="record the terms at all (false: no statistics)")
    ema: Annotated[float, Gt(0), Lt(1)] | None = Field(
        default=None, description="decay of the per-term exponential moving average (0 < ema < 1)"
    )
    probe_every: Annotated[int, Gt(0)] | None = Field(
        default=None, strict=True,
        description="every N calls also record each weighted term's gradient norm with respect to pred",
    )
    log_every: Annotated[int, Gt(0)] = Field(
        default=10, strict=True, description="write the per-term statistics to the sink every N calls"
    )
    sink: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] | None = Field(
        default=None,
        description="where to write: a path ending in .jsonl (one JSON object a line) or a "
        "TensorBoard log directory; relative paths are relative to the working directory, and "
        "~ is the home folder",
    )
    append: bool = Field(
        default=False,
        description="add to a .jsonl sink that already holds records instead of refusing it "
        "(a loss resumed from a state_dict appends by itself)",
    )


class LossConfig(BaseModel):
    """A loss program and its settings: the top level of a loss config file.

    >>> cfg = LossConfig(expr="0.7*huber(delta=1) + 0.3*temporal_diff", strict=False)
    >>> cfg.compile().strict
    False
    """

    model_config = ConfigDict(
        extra="forbid",
        title="LossConfig",
        json_schema_extra={
            "examples": [
                {
                    "expr": "0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)",
                    "monitor": {"log_every": 10, "sink": "runs/demo/terms.jsonl"},
                }
            ]
        },
    )

    expr: str = Field(description="the loss program, e.g. '0.7*huber(delta=1) + 0.3*temporal_diff'")
    monitor: MonitorSettings = Field(
        default_factory=MonitorSettings, description="per-term recording and where it is written"
    )
    nonfinite: Literal["raise", "warn", "zero_term", "skip_batch"] = Field(
        default="raise", description="what a NaN or infinite term does"
    )
    strict: bool = Field(
        default=True, description="a keyword input that no term reads is an error"
    )

    # Where the config came from, to report program errors at the file's line and column.
    _origin: _Origin | None = PrivateAttr(default=None)

    def compile(self, *, terms: Mapping[str, Callable] | None = None):
        """Compile ``expr`` with these settings into a :class:`~lossdsl.Loss`."""
        crit = self._located(compile_program, terms=terms, strict=self.strict, nonfinite=self.nonfinite)
        apply_monitor_settings(crit, self.monitor)
        return crit

    def check(self, *, terms: Mapping[str, Callable] | None = None):
        """Parse and resolve ``expr`` without building a module (nor opening any sink)."""
        return self._located(check_program, terms=terms)

    def _located(self, build: Callable, **kwargs: Any) -> Any:
        try:
            return build(self.expr, **kwargs)
        except LossDSLError as err:
            origin = self._origin
            if origin is not None and origin.expr == self.expr:
                raise origin.relocate(err) from None
            raise


class _Origin:
    """The file (or mapping) a config was read from and where its ``expr`` value stands."""

    def __init__(self, path: str | None, text: str | None, places: dict, expr_key: tuple[str, ...], expr: str):
        self.path, self.text, self.places, self.expr_key, self.expr = path, text, places, expr_key, expr

    def relocate(self, err: LossDSLError) -> LossDSLError:
        """Re-point a program error at the file: same error type, file line and column."""
        dotted = ".".join(self.expr_key)
        where = f"{self.path}, key '{dotted}'" if self.path else f"config key '{dotted}'"
        err.message = f"{where}: {err.message}"
        err.path, err.key = self.path, dotted
        place = self.places.get(self.expr_key)
        if self.text is not None and place is not None and err.source == self.expr:
            if err.span is not None:
                offsets = program_offsets(self.text, place, self.expr)
                start, end = (offsets[min(max(o, 0), len(self.expr))] for o in err.span)
                err.span = (start, max(end, start + 1))
            else:
                err.span = place.key_span
            err.source = self.text
        elif self.text is not None and place is not None and err.source is None:
            err.source, err.span = self.text, place.key_span
        elif self.text is not None and place is None:  # a line and column of the value would pass for the file's
            err.source = err.span = None
        err.args = (str(err),)
        return err


def load_config(config: Any, *, key: str | None = None) -> LossConfig:
    """Read and validate a config without compiling its program.

    ``config``: a :class:`LossConfig`, a mapping, or the path of a ``.yaml``/``.yml``/
    ``.json``/``.toml`` file. ``key``: a dotted key where the LossConfig lives (default: the
    top level, or ``loss`` when the top level has no ``expr``).

    >>> load_config({"loss": "mse + 0.1*mae"}).expr
    'mse + 0.1*mae'
    """
    if isinstance(config, LossConfig):
        return config
    path: str | None = None
    text: str | None = None
    places: Any = {}
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        text, data, _, places = read_config_file(path)
    elif not isinstance(config, Mapping):
        raise ConfigError(f"from_config takes a mapping or a file path, got {type(config).__name__}",
                          hint="pass a dict, a LossConfig, or the path of a .yaml/.json/.toml file")
    else:
        data = config
    prefix = _select(data, key, path, text, places)
    data = _get(data, prefix)
    if path is None:
        # Only the part that is the loss config is copied: the rest of a training config
        # (a Hydra DictConfig, say) is not ours to walk.
        data = _plain(data, {}, prefix)
    expr_key = prefix
    if isinstance(data, str):  # `loss: "0.7*huber + ..."`: the program alone
        data = {"expr": data}
    else:
        expr_key = prefix + ("expr",)
    if not isinstance(data, dict):
        where = ".".join(prefix) or "the top level"
        raise _config_error(
            f"{where} must be a mapping with an 'expr' key, got {type(data).__name__}",
            path, text, places, prefix, hint="write e.g. expr: 0.7*huber(delta=1) + 0.3*temporal_diff",
        )
    try:
        cfg = LossConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise _validation_error(err, path, text, places, prefix) from None
    cfg._origin = _Origin(path, text, places, expr_key, cfg.expr)
    return cfg


def from_config(config: Any, *, key: str | None = None, terms: Mapping[str, Callable] | None = None):
    """Build a :class:`~lossdsl.Loss` from a mapping or a YAML/JSON/TOML file.

    The top level is a :class:`LossConfig` (or holds one under ``loss:``, see
    :func:`load_config`). Errors are :class:`~lossdsl.LossDSLError` that point at the file,
    the key and, inside ``expr``, the file's line and column.

    >>> import lossdsl
    >>> crit = lossdsl.from_config({"expr": "mse", "strict": False})
    >>> crit.strict
    False
    """
    return load_config(config, key=key).compile(terms=terms)


def make_sink(target: str, append: bool = False):
    """A sink for a path: ``*.jsonl`` gives a JSONL writer, anything else a TensorBoard directory.

    >>> type(make_sink("runs/terms.jsonl")).__name__
    'JsonlWriter'
    """
    target = os.path.expanduser(target)  # ~/runs/x.jsonl is the home folder's, as in a shell
    if target.endswith(".jsonl"):
        return JsonlWriter(target, append=append)
    return TensorBoardWriter(target)


def apply_monitor_settings(crit, settings: MonitorSettings) -> None:
    """Configure ``crit.monitor`` from :class:`MonitorSettings`.

    >>> import lossdsl
    >>> crit = lossdsl.compile("mse")
    >>> apply_monitor_settings(crit, MonitorSettings(ema=0.9))
    >>> crit.monitor.ema
    0.9
    """
    monitor = crit.monitor
    monitor.enabled = settings.enabled
    if settings.ema is not None:
        monitor.ema = settings.ema
    if settings.probe_every is not None:
        monitor.probe(every=settings.probe_every)
    if settings.sink is not None:
        monitor.attach(make_sink(settings.sink, append=settings.append), every=settings.log_every)


def _plain(value: Any, done: dict[int, dict], where: tuple[str, ...]) -> Any:
    """Mappings (including OmegaConf's DictConfig) as plain dicts, recursively.

    A mapping met again (shared, as YAML aliases load, or a cycle) is converted once and
    shared in the copy, so the work is linear in the distinct mappings, not in the paths.
    """
    if not isinstance(value, Mapping):
        return value
    if id(value) in done:
        return done[id(value)]
    if len(where) >= MAX_CONFIG_DEPTH:
        raise ConfigError(
            f"the config is nested more than {MAX_CONFIG_DEPTH} levels deep (at '{'.'.join(where[:3])}...')",
            key=".".join(where[:3]), hint="a loss config needs a few levels of keys",
        )
    out: dict[str, Any] = {}
    done[id(value)] = out
    for k in value.keys():
        out[str(k)] = _plain(_item(value, k, where), done, where + (str(k),))
    return out


def _item(mapping: Any, key: Any, where: tuple[str, ...]) -> Any:
    """``mapping[key]``; a value that OmegaConf cannot give (``???`` left unset, an
    interpolation that fails) is a :class:`ConfigError` naming its key."""
    try:
        return mapping[key]
    except KeyError:
        raise
    except Exception as err:
        dotted = ".".join(where + (str(key),))
        problem = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"the config value '{dotted}' cannot be read: {problem}", key=dotted,
                          hint="give it a value: ??? marks one still to be set, and ${...} must name a key") from None


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for depth, part in enumerate(path):
        data = _item(data, part, path[:depth])
    return data


def _select(data: Any, key: str | None, path, text, places) -> tuple[str, ...]:
    """The key path of the LossConfig inside ``data``."""
    if key:
        prefix: tuple[str, ...] = ()
        for part in key.split("."):
            node = _get(data, prefix)
            if not isinstance(node, Mapping) or part not in node:
                options = [str(k) for k in node] if isinstance(node, Mapping) else []
                raise _config_error(
                    f"no key '{'.'.join(prefix + (part,))}' in the config",
                    path, text, places, prefix,
                    hint=did_you_mean(part, options) or f"keys here: {', '.join(options) or 'none'}",
                )
            prefix += (part,)
        return prefix
    if isinstance(data, Mapping) and "expr" not in data and "loss" in data:
        return ("loss",)
    return ()


def _config_error(message, path, text, places, key: tuple[str, ...], hint=None) -> ConfigError:
    place = places.get(key)
    dotted = ".".join(key) or None
    span = place.key_span if place is not None and text is not None else None
    return ConfigError(
        f"{path}: {message}" if path else message,
        path=path, key=dotted, source=text if span else None, span=span, hint=hint,
    )


def _fields_at(loc: tuple) -> dict[str, Any]:
    """The fields of the model that holds the key at ``loc`` (for did-you-mean hints)."""
    model: Any = LossConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = getattr(field, "annotation", None)
    return model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}


def _validation_error(err: pydantic.ValidationError, path, text, places, prefix) -> ConfigError:
    errors = err.errors()
    # An unknown key is usually the cause of a "missing" one (`exp:` for `expr:`): report it first.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(str(p) for p in first["loc"])
    key = prefix + loc
    dotted = ".".join(key)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    fields = _fields_at(loc)
    if first["type"] == "extra_forbidden":
        hint = did_you_mean(loc[-1], fields) or ""
        hint = (hint + " " if hint else "") + "allowed keys: " + ", ".join(fields)
        return _config_error(f"unknown key '{dotted}'{more}", path, text, places, key, hint)
    if first["type"] == "missing":
        hint = "add it: " + (fields[loc[-1]].description or "") if loc[-1] in fields else None
        return _config_error(f"missing key '{dotted}'{more}", path, text, places, key[:-1], hint)
    described = fields.get(loc[-1]).description if loc and loc[-1] in fields else None
    return _config_error(
        f"bad value for '{dotted}': {first['msg']}{more}", path, text, places, key, described
    )
