"""Where keys and values stand in the text of a YAML, JSON or TOML config file.

``lossdsl.from_config`` uses this to report an error at the place in the FILE where it is:
a bad key at the key, and a mistake inside the loss program at the line and column of the
file, not of the program. The parsers of the three formats give values but (except YAML's
node marks) no positions, so each format gets a small position finder here:

- YAML: the composed node tree (node marks), exact; looked up one key path at a time.
- JSON: a small scanner over the text (PyYAML refuses tabs and is YAML 1.1, so it is not used).
- TOML: a line scanner for ``key = value`` lines under ``[table]`` headers; dotted keys on
  one line (``loss.expr = "..."``) are understood, inline tables are not.

Inside a string value, program offsets map onto file offsets by walking the decoded text
along the raw text: exact for YAML block scalars (``|``, ``>``), TOML literal strings and any
string without escape sequences; after an escape (``\\n`` in a JSON string) the column is
approximate.

>>> text = 'strict: true\\nexpr: |\\n  recon = hubr(delta=1)\\n  recon\\n'
>>> places = positions(text, "yaml")
>>> places[("expr",)].style
'|'
>>> offsets = program_offsets(text, places[("expr",)], "recon = hubr(delta=1)\\nrecon\\n")
>>> text[offsets[8]:offsets[8] + 4]
'hubr'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = [
    "Place", "Places", "positions", "yaml_places", "program_offsets", "json_duplicate_offset", "FORMATS",
]

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


@dataclass(frozen=True)
class Place:
    """A key of a config file: its span, where its value starts and how the value is quoted.

    ``style``: ``'|'``/``'>'`` (YAML block scalars), ``'"'``, ``"'"``, ``'\"\"\"'``,
    ``"'''"`` or ``None`` (plain YAML scalar, number, mapping, ...).
    """

    key_span: tuple[int, int]
    value_start: int
    style: str | None


def positions(text: str, fmt: str) -> Places:
    """``{key path: Place}`` for every key of the file that the finder understands (for
    YAML a lookup that follows one path on demand: see :class:`_YamlPlaces`).

    Never raises: a file the finder cannot follow gives fewer (or no) places, and errors
    are then reported with the file and key but without a caret.
    """
    try:
        if fmt == "yaml":
            return _yaml_positions(text)
        if fmt == "json":
            return _JsonScanner(text).run()
        if fmt == "toml":
            return _toml_positions(text)
    except Exception:  # a position is a courtesy; the value parser has the last word
        return {}
    return {}


Places = Any  # a dict, or for YAML a lookup with get() and [] (no iteration)


def json_duplicate_offset(text: str) -> int | None:
    """Where a JSON object repeats a key of its own (the second occurrence), or ``None``.

    >>> json_duplicate_offset('{"a": {"b": 1}, "b": 2, "a": 3}')
    24
    """
    try:
        scanner = _JsonScanner(text)
        scanner.run()
    except Exception:  # a position is a courtesy; the value parser has the last word
        return None
    return scanner.duplicate


def program_offsets(text: str, place: Place, decoded: str) -> list[int]:
    """File offset of each character of the decoded string value (plus one past its end)."""
    start = _content_start(text, place)
    out: list[int] = []
    j = start
    n = len(text)
    for ch in decoded:
        k = j
        # Indentation of block scalars, folded line breaks and quote doubling are skipped.
        while k < n and text[k] != ch and text[k] in " \t\r\n'\"" and place.style is not None:
            k += 1
        if k < n and text[k] == ch:
            out.append(k)
            j = k + 1
        elif j < n and text[j] == "\\":
            out.append(j)  # an escape sequence stands for one character: approximate
            j += {"u": 6, "U": 10, "x": 4}.get(text[j + 1] if j + 1 < n else "", 2)
        else:
            out.append(min(j, n))
            j += 1
    out.append(min(out[-1] + 1, n) if out else start)
    return out


def _content_start(text: str, place: Place) -> int:
    start, style = place.value_start, place.style
    # a YAML node starts at its properties, an anchor (&name) or a tag (!!str), which no
    # scalar of any format can start with: the content comes after them
    while start < len(text) and text[start] in "&!":
        while start < len(text) and text[start] not in " \t\r\n":
            start += 1
        while start < len(text) and text[start] in " \t":
            start += 1
    if style in ("|", ">"):
        newline = text.find("\n", start)
        return len(text) if newline == -1 else newline + 1
    if style in ('"""', "'''"):
        start += 3
        # TOML trims a line break right after the opening delimiter.
        if text.startswith("\r\n", start):
            return start + 2
        return start + 1 if text.startswith("\n", start) else start
    if style in ('"', "'"):
        return start + 1
    return start


# --- YAML ----------------------------------------------------------------------------------


class _YamlPlaces:
    """The places of a YAML file, found on demand by following one key path at a time.

    Anchors and aliases make the key paths of a small file exponentially many (a 600-byte
    file of nested aliases has more paths than atoms in the sun); ``yaml.compose`` shares
    the node of an alias, and a lookup walks only the path asked for, so nothing is
    expanded.
    """

    def __init__(self, root) -> None:
        self.root = root

    def get(self, path: tuple[str, ...], default=None):
        found = None
        node = self.root
        for part in path:
            found = _yaml_entry(node, part)
            if found is None:
                return default
            node = found[1]
        if found is None:
            return default
        key, value = found
        style = value.style if isinstance(value, yaml.ScalarNode) else None
        return Place((key.start_mark.index, key.end_mark.index), value.start_mark.index, style or None)

    def __getitem__(self, path: tuple[str, ...]) -> Place:
        place = self.get(path)
        if place is None:
            raise KeyError(path)
        return place

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and self.get(path) is not None


def _yaml_entry(node, part: str):
    """``(key node, value node)`` of ``part`` in a mapping node, looking into merges (``<<``)."""
    pending, seen = [node], set()
    while pending:
        mapping = pending.pop(0)
        if not isinstance(mapping, yaml.MappingNode) or id(mapping) in seen:
            continue
        seen.add(id(mapping))
        merged = []
        for key, value in mapping.value:
            if key.tag == "tag:yaml.org,2002:merge":
                merged += value.value if isinstance(value, yaml.SequenceNode) else [value]
            elif isinstance(key, yaml.ScalarNode) and str(key.value) == part:
                return key, value
        pending += merged
    return None


def yaml_places(root) -> Places:
    """The places of a YAML file from its composed node tree (``None``: an empty file).

    >>> import yaml
    >>> text = "base: &b {expr: mse}\\nloss: *b\\n"
    >>> start, end = yaml_places(yaml.compose(text))[("loss", "expr")].key_span
    >>> start, text[start:end]  # found through the alias, where the anchor's mapping has it
    (10, 'expr')
    """
    return {} if root is None else _YamlPlaces(root)


def _yaml_positions(text: str) -> Places:
    return yaml_places(yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


# --- JSON ----------------------------------------------------------------------------------


class _JsonScanner:
    """Records the span of every object key; values are skipped, not decoded."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.places: dict[tuple[str, ...], Place] = {}
        self.duplicate: int | None = None

    def run(self) -> dict[tuple[str, ...], Place]:
        self.value(())
        return self.places

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1

    def value(self, path: tuple[str, ...]) -> None:
        self.ws()
        ch = self.text[self.i]
        if ch == "{":
            self.obj(path)
        elif ch == "[":
            self.i += 1
            self.ws()
            while self.text[self.i] != "]":
                self.value(path + ("[]",))
                self.ws()
                if self.text[self.i] == ",":
                    self.i += 1
            self.i += 1
        elif ch == '"':
            self.string()
        else:
            match = re.compile(r"[^\s,\]}]+").match(self.text, self.i)
            self.i = match.end()

    def obj(self, path: tuple[str, ...]) -> None:
        self.i += 1
        self.ws()
        keys: set[str] = set()
        while self.text[self.i] != "}":
            key_start = self.i
            key = self.string()
            if key in keys and self.duplicate is None:
                self.duplicate = key_start
            keys.add(key)
            key_span = (key_start, self.i)
            self.ws()
            self.i += 1  # ':'
            self.ws()
            style = '"' if self.text[self.i] == '"' else None
            self.places[path + (key,)] = Place(key_span, self.i, style)
            self.value(path + (key,))
            self.ws()
            if self.text[self.i] == ",":
                self.i += 1
                self.ws()
        self.i += 1

    def string(self) -> str:
        start = self.i
        self.i += 1
        while self.text[self.i] != '"':
            self.i += 2 if self.text[self.i] == "\\" else 1
        self.i += 1
        return json.loads(self.text[start : self.i])


# --- TOML ----------------------------------------------------------------------------------

_TOML_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_TOML_KEY = re.compile(r"""^(\s*)((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*""")


def _toml_key_parts(key: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in parts)


def _toml_positions(text: str) -> dict[tuple[str, ...], Place]:
    places: dict[tuple[str, ...], Place] = {}
    table: tuple[str, ...] | None = ()
    offset = 0
    closing: str | None = None  # the delimiter of a multi-line string we are inside
    for line in text.splitlines(keepends=True):
        line_start, offset = offset, offset + len(line)
        if closing is not None:
            if line.count(closing) % 2 == 1:
                closing = None
            continue
        if line.lstrip().startswith("[["):
            table = None  # arrays of tables hold no LossConfig
            continue
        header = _TOML_TABLE.match(line)
        if header:
            table = _toml_key_parts(header.group(1))
            name_at = line_start + header.start(1)
            places.setdefault(table, Place((name_at, name_at + len(header.group(1))), name_at, None))
            continue
        match = _TOML_KEY.match(line)
        if not match or table is None:
            continue
        path = table + _toml_key_parts(match.group(2))
        value_at = match.end()
        rest = line[value_at:]
        style = next((q for q in ('"""', "'''", '"', "'") if rest.startswith(q)), None)
        key_start = line_start + len(match.group(1))
        places[path] = Place((key_start, key_start + len(match.group(2))), line_start + value_at, style)
        for part in range(1, len(path) - len(table)):
            places.setdefault(path[: len(table) + part], places[path])
        if style in ('"""', "'''") and rest[3:].count(style) == 0:
            closing = style
    return places
