"""Reading a config file safely: size, kind of file, encoding, syntax and duplicate keys.

A config file is untrusted text (it may come from a pull request or a sweep generator), so
every way it can be wrong ends in a :class:`ConfigError` that names the file and, where the
parser knows it, shows the place with a caret:

- only regular files are read (a directory, a named pipe or a device is refused before any
  read, so a pipe cannot block), and at most :data:`MAX_CONFIG_BYTES`;
- the text must be UTF-8;
- YAML, JSON and TOML syntax errors, numbers beyond Python's 4300-digit limit, nesting too
  deep for the parsers, and a key written twice in one mapping (YAML and JSON parsers
  would keep the last; TOML refuses it already) are errors.

YAML anchors and aliases are read as shared values, never expanded into copies, so a small
file of nested aliases stays small.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "loss.yaml")
>>> _ = open(path, "w").write("expr: mse\\nexpr: mae\\n")
>>> try:
...     read_config_file(path)
... except ConfigError as err:
...     print(err.message.split(os.sep)[-1])
loss.yaml: key 'expr' appears twice in the same mapping
"""

from __future__ import annotations

import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

import yaml

from ..errors import LossDSLError
from .positions import FORMATS, Places, json_duplicate_offset, positions, yaml_places

__all__ = ["ConfigError", "MAX_CONFIG_BYTES", "read_config_file"]

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a loss config is a few lines; a training config fits easily


class ConfigError(LossDSLError):
    """A config that cannot be read: missing file, bad syntax, unknown key, wrong value.

    ``path`` is the file (or ``None`` for a mapping), ``key`` the dotted key at fault.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.path, self.key = path, key

    def __reduce__(self):
        kwargs = dict(source=self.source, span=self.span, hint=self.hint, term=self.term)
        return (_rebuild_config_error, (self.message, self.path, self.key, kwargs))


# The public name, in tracebacks and the command line's messages, is lossdsl.config.ConfigError.
ConfigError.__module__ = "lossdsl.config"


def _rebuild_config_error(message, path, key, kwargs):
    return ConfigError(message, path=path, key=key, **kwargs)


def read_config_file(path: str) -> tuple[str, Any, str, Places]:
    """``(text, data, format, places)`` of a ``.yaml``/``.yml``/``.json``/``.toml`` config file
    (``places``: where its keys stand, see :func:`lossdsl.config.positions.positions`)."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{path}: unknown config format '{Path(path).suffix}'",
            path=path,
            hint="use a .yaml, .yml, .json or .toml file; for program text use "
            "lossdsl.compile(text) or from_config({'expr': text})",
        )
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, which some editors write, is no content
    except UnicodeDecodeError as err:
        at = len(raw[: err.start].decode("utf-8"))
        rest = raw[err.start :].decode("utf-8", errors="replace")
        shown = _printable(raw[: err.start].decode("utf-8") + rest)
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})",
            path=path, source=shown, span=(at, at + 1), hint="save the file as UTF-8",
        ) from None
    data, places = _parse(path, text, fmt)
    if data is None:
        raise ConfigError(f"{path} is empty", path=path, hint="write expr: <the loss program>")
    return text, data, fmt, places


def _read_bytes(path: str) -> bytes:
    name = os.path.basename(path) or path
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer before it is refused.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"no config file at {path}", path=path, hint="check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file", path=path,
                          hint="give the path of a .yaml, .json or .toml file") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}", path=path) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path} is a directory, not a config file", path=path,
                              hint="give the path of a .yaml, .json or .toml file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file (a pipe, socket or device)", path=path,
                              hint="write the config to a file first")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}", path=path) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB, the limit for a config file",
            path=path, hint=f"keep the loss config in a file of its own ({name} is too large to be one)",
        )
    return b"".join(chunks)


# --- parsing -------------------------------------------------------------------------------


class _DuplicateKey(Exception):
    def __init__(self, key: Any, offset: int | None) -> None:
        super().__init__(key)
        self.key, self.offset = key, offset


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where installed
    """PyYAML's safe loader, refusing a key written twice in one mapping.

    Keys brought in by a merge (``<<: *base``) may be overridden, as YAML allows.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.index)
                    seen.add(key)
                except TypeError:  # unhashable: PyYAML's own check reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key, None)
        out[key] = value
    return out


def _parse(path: str, text: str, fmt: str) -> tuple[Any, Places]:
    try:
        if fmt == "yaml":
            # One pass of the parser: the node tree gives both the values and the places.
            loader = _Loader(text)
            try:
                root = loader.get_single_node()
                data = None if root is None else loader.construct_document(root)
            finally:
                loader.dispose()
            return data, yaml_places(root)
        if fmt == "json":
            return json.loads(text, object_pairs_hook=_json_pairs), positions(text, fmt)
        return tomllib.loads(text), positions(text, fmt)
    except _DuplicateKey as dup:
        offset = dup.offset if dup.offset is not None else json_duplicate_offset(text)
        raise _syntax_error(path, text, None, f"key '{dup.key}' appears twice in the same mapping",
                            offset, hint="keep one of them: a later key would silently replace the first")
    except yaml.reader.ReaderError as err:
        raise _syntax_error(path, text, "YAML", f"character U+{err.character:04X} is not allowed in YAML",
                            err.position)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise _syntax_error(path, text, "YAML", err.problem or str(err), mark.index if mark else None)
    except json.JSONDecodeError as err:
        raise _syntax_error(path, text, "JSON", err.msg, err.pos)
    except tomllib.TOMLDecodeError as err:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        offset = None
        if found:
            line, column = int(found.group(1)), int(found.group(2))
            offset = sum(len(s) for s in text.splitlines(keepends=True)[: line - 1]) + column - 1
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err))
        raise _syntax_error(path, text, "TOML", message, offset)
    except yaml.YAMLError as err:
        raise _syntax_error(path, text, "YAML", str(err), None)
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to read", path=path,
                          hint="a loss config needs a few levels of keys") from None
    except ValueError as err:
        # Python's limit on the digits of an integer, or a date such as 2020-13-45 in YAML.
        name = {"yaml": "YAML", "json": "JSON", "toml": "TOML"}[fmt]
        long_number = re.search(r"\d{4301,}", text)
        raise _syntax_error(path, text, name, str(err).split("; use sys.")[0],
                            long_number.start() if long_number else None)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters shown as U+FFFD (same length: offsets still hold), so
    an error message never sends a file's escape sequences to the terminal."""
    return _CONTROL.sub("\ufffd", text)


def _syntax_error(path: str, text: str, fmt: str | None, problem: str, offset: int | None,
                  hint: str | None = None) -> ConfigError:
    span = None if offset is None else (min(offset, len(text)), min(offset, len(text)) + 1)
    message = f"{path}: {problem}" if fmt is None else f"{path} is not valid {fmt}: {problem}"
    return ConfigError(
        message, path=path, source=_printable(text) if span else None, span=span,
        hint=hint or f"fix the {fmt} syntax at the caret",
    )
