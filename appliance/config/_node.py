"""YAML with positions: every value knows its key path and line, so that config errors can
say which key, what was expected and which line (``appliance config check``).

The loader composes PyYAML nodes (not plain objects) and wraps them in :class:`Node`.
Section parsers in other packages (policy, masking) take a :class:`Node` and use its typed
accessors; each accessor raises :class:`~appliance.errors.ConfigError` naming the place.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NoReturn

import yaml

from appliance.errors import ConfigError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


class Node:
    """One value of the config document with its path (``targets[0].name``) and line."""

    def __init__(self, raw: yaml.Node, path: str, source: str) -> None:
        self.raw = raw
        self.path = path
        self.source = source

    # -- where and failing ---------------------------------------------------------------

    @property
    def line(self) -> int:
        return int(self.raw.start_mark.line) + 1

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}: {self.path or '(top level)'}"

    def fail(self, message: str) -> NoReturn:
        """Raise a ConfigError at this node."""
        raise ConfigError(message, where=self.where)

    # -- shape -----------------------------------------------------------------------------

    @property
    def is_null(self) -> bool:
        return isinstance(self.raw, yaml.ScalarNode) and self.raw.tag == "tag:yaml.org,2002:null"

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.raw, yaml.MappingNode)

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def mapping(self) -> dict[str, Node]:
        """The node as a mapping of string keys; duplicate keys are an error."""
        if not isinstance(self.raw, yaml.MappingNode):
            self.fail(f"expected a mapping, got {self._kind()}")
        out: dict[str, Node] = {}
        for key_node, value_node in self.raw.value:
            if not isinstance(key_node, yaml.ScalarNode):
                Node(key_node, self.path, self.source).fail("keys must be plain strings")
            key = str(key_node.value)
            if key in out:
                Node(key_node, self._child_path(key), self.source).fail("duplicate key")
            out[key] = Node(value_node, self._child_path(key), self.source)
        return out

    def keys(
        self, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()
    ) -> dict[str, Node]:
        """The mapping, checked: every required key present, no key outside the two sets."""
        items = self.mapping()
        allowed = set(required) | set(optional)
        for key, child in items.items():
            if key not in allowed:
                expected = ", ".join(sorted(allowed)) or "no keys"
                child.fail(f"unknown key {key!r} (expected one of: {expected})")
        for key in required:
            if key not in items:
                self.fail(f"missing required key {key!r}")
        return items

    def items(self) -> list[Node]:
        """The node as a sequence."""
        if not isinstance(self.raw, yaml.SequenceNode):
            self.fail(f"expected a list, got {self._kind()}")
        return [Node(v, self._child_path(i), self.source) for i, v in enumerate(self.raw.value)]

    def items_or_one(self) -> list[Node]:
        """A list, or a single scalar taken as a one-element list."""
        if isinstance(self.raw, yaml.SequenceNode):
            return self.items()
        return [self]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.items())

    # -- scalars -----------------------------------------------------------------------------

    def _scalar(self) -> str:
        if not isinstance(self.raw, yaml.ScalarNode) or self.is_null:
            self.fail(f"expected a value, got {self._kind()}")
        return str(self.raw.value)

    def _resolved(self) -> object:
        """The scalar as YAML would resolve it (int, bool, str ...)."""
        return yaml.safe_load(yaml.serialize(self.raw))

    def string(self, *, choices: tuple[str, ...] | None = None, pattern: str | None = None) -> str:
        value = self._scalar()
        if self.raw.tag not in ("tag:yaml.org,2002:str",) and not isinstance(self._resolved(), str):
            # A number or boolean where a string is expected is almost always a typo.
            self.fail(f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            self.fail(f"expected one of {', '.join(choices)}; got {value!r}")
        if pattern is not None and not re.fullmatch(pattern, value):
            self.fail(f"{value!r} does not match {pattern}")
        if not value:
            self.fail("must not be empty")
        return value

    def integer(self, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._resolved()
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"expected an integer, got {self._scalar()!r}")
        if minimum is not None and value < minimum:
            self.fail(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            self.fail(f"must be at most {maximum}, got {value}")
        return value

    def boolean(self) -> bool:
        value = self._resolved()
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {self._scalar()!r}")
        return value

    def size(self) -> int:
        """A byte size: an integer or a string like ``64MiB``, ``512k``."""
        text = self._scalar().strip().lower().replace(" ", "")
        m = re.fullmatch(r"(\d+)([a-z]*)", text)
        if not m or m.group(2) not in _SIZE_UNITS:
            self.fail(f"expected a size such as 1048576, 512KiB or 64MiB, got {self._scalar()!r}")
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]

    def duration(self) -> float:
        """A duration in seconds: a number of seconds or a string like ``500ms``, ``10m``."""
        text = self._scalar().strip().lower().replace(" ", "")
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|min|h)?", text)
        if not m:
            self.fail(f"expected a duration such as 30s, 500ms or 10m, got {self._scalar()!r}")
        return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]

    def _kind(self) -> str:
        if isinstance(self.raw, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.raw, yaml.SequenceNode):
            return "a list"
        if self.is_null:
            return "nothing (null)"
        return f"{self.raw.value!r}"


def load_document(text: str, source: str) -> Node:
    """Compose a YAML document into a :class:`Node`; syntax errors name the line."""
    try:
        raw = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(f"YAML syntax error: {exc.problem}", where=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", where=source) from None
    if raw is None:
        raise ConfigError("the configuration is empty", where=source)
    return Node(raw, "", source)
