"""The one YAML loader for every file the pipeline reads (catalog, vocabulary, mixtures, profiles, prompts).

PyYAML's safe loader follows YAML 1.1, whose implicit typing surprises people who write YAML 1.2:
`no`/`yes`/`on`/`off` become booleans (a label key `no` turns into `False`), `0755` is octal,
`1:20` is 80, `2020-01-31` a date, and a key written twice silently keeps the last value (an
`external_llm_allowed: false` further down loses to an earlier `true` nobody sees). This loader
keeps PyYAML's safe constructor (no Python tags) and changes three things:

- Implicit types are the YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution):
  null `~`/`null`/empty, booleans only `true`/`false` (any case form the spec lists), decimal,
  `0o` octal and `0x` hex integers, floats with `.inf`/`.nan`. Everything else is a string.
- A key repeated in one mapping is an error naming the file, the key and both lines.
- Aliases are bounded: the document's size with every alias expanded may not exceed
  `MAX_EXPANDED_NODES` (a "billion laughs" file of a few hundred bytes would otherwise cost
  minutes and gigabytes in whatever walks the result), and a recursive alias is refused.

Files must be UTF-8 (a BOM is allowed); any other bytes are an error naming the file and the offset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_EXPANDED_NODES = 200_000
MAX_FILE_BYTES = 16 * 1024 * 1024

# libyaml's parser when PyYAML was built with it (226 catalog files load ~5x faster); the
# resolver and constructor below are Python either way.
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlError(ValueError):
    """A YAML file that cannot be loaded strictly; the message starts with the file."""


class _StrictLoader(_BASE):  # type: ignore[misc, valid-type]
    yaml_implicit_resolvers: dict = {}  # replaced below by the YAML 1.2 core schema

    def construct_mapping(self, node: Node, deep: bool = False) -> dict:
        if not isinstance(node, MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark
            )
        out: dict = {}
        lines: dict = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key",
                    key_node.start_mark,
                ) from None
            if key in out:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {lines[key]}, again on line "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            lines[key] = key_node.start_mark.line + 1
            out[key] = self.construct_object(value_node, deep=deep)
        return out

    def construct_yaml_map(self, node: Node):  # type: ignore[override]
        data: dict = {}
        yield data
        data.update(self.construct_mapping(node))

    def construct_core_int(self, node: ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        if text.startswith(("0o", "+0o", "-0o")):
            return int(text.replace("0o", "", 1), 8)
        if text.startswith(("0x", "+0x", "-0x")):
            return int(text.replace("0x", "", 1), 16)
        return int(text, 10)

    def construct_core_float(self, node: ScalarNode) -> float:
        text = self.construct_scalar(node).lower()
        if text.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        if text == ".nan":
            return float("nan")
        return float(text)

    def construct_core_bool(self, node: ScalarNode) -> bool:
        return self.construct_scalar(node).lower() == "true"


_CORE = [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
]
for _tag, _pattern, _first in _CORE:
    _StrictLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first)
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_yaml_map)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_core_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _StrictLoader.construct_core_float)
_StrictLoader.add_constructor("tag:yaml.org,2002:bool", _StrictLoader.construct_core_bool)
# Timestamps are not part of the core schema: an explicit !!timestamp stays a string too.
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _BASE.construct_yaml_str)


def _expanded_size(root: Node, limit: int) -> int:
    """Node count with every alias expanded (memoised per node, so it costs one pass over the graph)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlError("recursive alias (a node that contains itself)")
        active.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _describe(exc: yaml.YAMLError) -> str:
    """One line: where and what (PyYAML's own text spans lines and names "<unicode string>")."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f" ({exc.context})" if exc.context else ""
        return f"{where}{exc.problem}{context}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def loads(text: str, name: str = "<string>") -> Any:
    """Parse one YAML document strictly (module docstring); errors start with `name`."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = _expanded_size(node, MAX_EXPANDED_NODES)
        except RecursionError:
            raise YamlError(f"{name}: nesting too deep") from None
        if n > MAX_EXPANDED_NODES:
            raise YamlError(
                f"{name}: more than {MAX_EXPANDED_NODES} nodes once aliases are expanded "
                "(an alias bomb, or a file far larger than any configuration)"
            )
        return loader.construct_document(node)
    except YamlError as exc:
        if str(exc).startswith(f"{name}:"):
            raise
        raise YamlError(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{name}: not valid YAML: {_describe(exc)}") from None
    finally:
        loader.dispose()


def decode(data: bytes, name: str) -> str:
    """UTF-8 text (BOM allowed), or a YamlError naming the file and the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlError(
            f"{name}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def load(path: Path) -> Any:
    """Read and parse `path` strictly; every error names the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise YamlError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} a configuration file may have")
        data = path.read_bytes()
    except OSError as exc:
        raise YamlError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return loads(decode(data, str(path)), str(path))
