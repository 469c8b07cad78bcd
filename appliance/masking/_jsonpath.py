"""JSON path rules of the masking config: which values of a JSON body are masked whole.

Shape: ``$`` then steps ``.name``, ``['name']``, ``[n]``, ``[*]`` or ``.*`` (``*`` is any
key or index), e.g. ``$.items[*].spec.containers[*].env[*].value``. Read by the
``masking.json_paths`` config (:mod:`._config`) and applied by :mod:`._bodies`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.masking._styles import Style

__all__ = ["JsonPath", "parse_json_path", "path_match"]


@dataclass(frozen=True)
class JsonPath:
    """A path rule: ``$`` then ``.name``, ``['name']``, ``[n]``, ``[*]`` or ``.*``
    steps; ``*`` matches any key or index."""

    text: str
    steps: tuple[str | int, ...]
    style: Style = Style.REDACT
    target: str | None = None

    def applies_to(self, target: str) -> bool:
        return self.target is None or self.target == target


_STEP = re.compile(r"\.([A-Za-z_$][\w$-]*|\*)|\[(\*|\d+|'[^']*'|\"[^\"]*\")\]")


def parse_json_path(text: str) -> tuple[str | int, ...]:
    """The steps of a path rule; raises ValueError for anything else."""
    if not text.startswith("$"):
        raise ValueError("a JSON path starts with $")
    steps: list[str | int] = []
    pos = 1
    while pos < len(text):
        m = _STEP.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read the JSON path at {text[pos:]!r}")
        name, bracket = m.group(1), m.group(2)
        if name is not None:
            steps.append(name)
        elif bracket == "*":
            steps.append("*")
        elif bracket.isdigit():
            steps.append(int(bracket))
        else:
            steps.append(bracket[1:-1])
        pos = m.end()
    if not steps:
        raise ValueError("a JSON path names at least one step")
    return tuple(steps)


def path_match(steps: tuple[str | int, ...], at: list[str | int]) -> bool:
    if len(steps) != len(at):
        return False
    return all(s == "*" or s == a for s, a in zip(steps, at, strict=True))
