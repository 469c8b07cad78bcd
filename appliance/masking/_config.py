"""The ``masking:`` section of the config file: detector styles, column rules, and when
responses to the job are masked.

Parsed from :class:`appliance.config.Node` so that every error names the key and the line.
The masking key is a :class:`~appliance.config.SecretRef` (reading it is the caller's job),
or ``ephemeral``, spelled out (see :mod:`appliance.masking._key`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.config import Node, SecretRef, Target, parse_secret
from appliance.masking._detectors import DETECTOR_NAMES
from appliance.masking._jsonpath import JsonPath, parse_json_path
from appliance.masking._key import EPHEMERAL
from appliance.masking._styles import Style, label_for
from appliance.masking._validate import phone_region_known

__all__ = [
    "DEFAULT_OFF",
    "IDENTITY_KEYS",
    "ColumnRule",
    "DetectorSetting",
    "MaskingConfig",
    "ResponseRule",
    "parse_masking",
]

# Off unless turned on: addresses are what the appliance itself records about every flow, they
# fill statement text and logs (inet literals, peer addresses), and they identify hosts rather
# than people or secrets.
DEFAULT_OFF = frozenset({"ipv4", "ipv6"})

SCOPES = ("all", "results")

# Keys a response rule may test: top-level keys of the session identity, then keys of its
# "ci" mapping (see appliance.capture's identity resolution).
IDENTITY_KEYS = (
    "source",
    "uid",
    "exe",
    "comm",
    "cgroup",
    "provider",
    "repository",
    "workflow",
    "job",
    "ref",
    "run_id",
    "run_attempt",
    "runner",
    "pipeline_id",
    "job_id",
    "project",
)

_STRENGTH = {Style.NONE: 0, Style.PARTIAL: 1, Style.HASH: 2, Style.REDACT: 3}


@dataclass(frozen=True)
class DetectorSetting:
    """``style`` None means the detector is off. ``scope`` ``results``: result values only
    (DataRow, COPY OUT), not statement text, parameters, errors or log lines."""

    style: Style | None = Style.REDACT
    scope: str = "all"


def _glob(pattern: str) -> re.Pattern[str]:
    # SQL identifiers fold to lower case unless quoted; compare without case.
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


@dataclass(frozen=True)
class ColumnRule:
    """Mask whole values of columns whose name (and table) match. First match wins."""

    column: str
    style: Style
    target: str | None = None
    table: str | None = None
    label: str | None = None
    _column_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _table_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_column_re", _glob(self.column))
        object.__setattr__(self, "_table_re", _glob(self.table) if self.table else None)

    def applies_to(self, target: str) -> bool:
        return self.target is None or self.target == target

    def may_match(self, table: str | None, column: str | None) -> bool:
        """Could this rule be about that column? Unknown (None) table or column: yes if the
        rest matches -- a computed column or a query over a view can carry the value."""
        if column is not None and not self._column_re.fullmatch(column):
            return False
        if table is None or self._table_re is None or self.table is None:
            return True
        # "public.customers" is compared with the qualified name, "customers" with the name.
        name = table if "." in self.table else table.rsplit(".", 1)[-1]
        return bool(self._table_re.fullmatch(name))

    def redaction_label(self, column: str | None) -> str:
        if self.label:
            return self.label
        return label_for(column) if column else "COLUMN"


@dataclass(frozen=True)
class ResponseRule:
    """Mask responses to the job on ``target`` (None: every target) for identities whose
    keys match the globs. A key the identity does not have matches (fail closed: an
    unattributed session is masked)."""

    target: str | None = None
    identity: tuple[tuple[str, str], ...] = ()

    def matches(self, target: str, identity: Mapping[str, object]) -> bool:
        if self.target is not None and self.target != target:
            return False
        for key, pattern in self.identity:
            value = _identity_value(identity, key)
            if value is not None and not fnmatch.fnmatchcase(str(value), pattern):
                return False
        return True


def _identity_value(identity: Mapping[str, object], key: str) -> object | None:
    value = identity.get(key)
    if value is not None and not isinstance(value, Mapping):
        return value
    ci = identity.get("ci")
    if isinstance(ci, Mapping):
        inner: object = ci.get(key)
        if inner is not None and not isinstance(inner, Mapping):
            return inner
    return None


def _default_detectors() -> dict[str, DetectorSetting]:
    return {
        name: DetectorSetting(None if name in DEFAULT_OFF else Style.REDACT)
        for name in DETECTOR_NAMES
    }


@dataclass(frozen=True)
class MaskingConfig:
    """The parsed ``masking:`` section. ``MaskingConfig()`` is the default: every detector but
    ipv4/ipv6 on in redact style everywhere, no column rules, responses not masked."""

    detectors: Mapping[str, DetectorSetting] = field(default_factory=_default_detectors)
    columns: tuple[ColumnRule, ...] = ()
    response: tuple[ResponseRule, ...] = ()
    key: SecretRef | None = None
    phone_regions: tuple[str, ...] = ("US",)
    # key: ephemeral -- a random key per run, chosen in so many words (never a default)
    ephemeral_key: bool = False
    # HTTP JSON bodies: values at these paths masked whole (appliance.masking._bodies).
    json_paths: tuple[JsonPath, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.detectors) - set(DETECTOR_NAMES)
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}")
        if self.ephemeral_key and self.key is not None:
            raise ValueError("a masking key is either a secret or ephemeral, not both")
        # Detectors left out keep their default setting.
        merged = _default_detectors()
        merged.update(self.detectors)
        object.__setattr__(self, "detectors", merged)

    def response_masking(self, target: str, identity: Mapping[str, object]) -> bool:
        """Whether responses to this job on ``target`` are masked (DataRow, COPY OUT)."""
        return any(rule.matches(target, identity) for rule in self.response)

    @property
    def uses_hash(self) -> bool:
        """True if some style is ``hash``: then a masking key is needed."""
        return (
            any(s.style is Style.HASH for s in self.detectors.values())
            or any(r.style is Style.HASH for r in self.columns)
            or any(p.style is Style.HASH for p in self.json_paths)
        )

    def column_rule(self, target: str, table: str | None, column: str | None) -> ColumnRule | None:
        """The rule for a result column, or None.

        Table and column known: the first rule that matches. Either unknown: of the rules that
        may match, the one that hides most (redact, then hash, then partial) -- fail closed.
        """
        rules = [r for r in self.columns if r.applies_to(target) and r.may_match(table, column)]
        if not rules:
            return None
        if table is not None and column is not None:
            return rules[0]
        return max(rules, key=lambda r: _STRENGTH[r.style])


# -- parsing --------------------------------------------------------------------------------------

_DETECTOR_STYLES = (Style.REDACT.value, Style.PARTIAL.value, Style.HASH.value)
_COLUMN_STYLES = (*_DETECTOR_STYLES, Style.NONE.value)
_OFF = {"off", "false", "no"}
_ON = {"on", "true", "yes"}


def parse_masking(node: Node | None, *, targets: Mapping[str, Target]) -> MaskingConfig:
    """Parse the ``masking:`` section (None: defaults). Raises ConfigError naming key and line.

    ::

        masking:
          key: {credential: masking-key}         # needed when a style is hash: one key
                                                 # for the fleet (or {file: ...}), so that
                                                 # tokens compare across runs and runners;
                                                 # `key: ephemeral`: a new key every run
          phone_regions: [US, DE]                # for numbers written without +CC
          detectors:                             # style per detector, or off
            card: partial
            email: {style: hash, scope: results}
            ipv4: on
          columns:                               # first match wins
            - {target: orders-db, table: public.customers, column: "card*", style: partial}
            - {column: ssn, style: redact, label: SSN}
          json_paths:                            # HTTP JSON bodies: masked whole
            - {path: "$.items[*].spec.containers[*].env[*].value", style: redact}
          response:                              # or true: always
            - target: orders-db
              identity: {repository: "org/*"}
    """
    if node is None or node.is_null:
        return MaskingConfig()
    m = node.keys(
        optional=("key", "detectors", "columns", "response", "phone_regions", "json_paths")
    )
    detectors = _default_detectors()
    if "detectors" in m:
        for name, child in m["detectors"].mapping().items():
            if name not in DETECTOR_NAMES:
                child.fail(f"unknown detector {name!r} (known: {', '.join(DETECTOR_NAMES)})")
            detectors[name] = _parse_detector(child)
    columns = (
        tuple(_parse_column(c, targets) for c in m["columns"].items()) if "columns" in m else ()
    )
    response = _parse_response(m["response"], targets) if "response" in m else ()
    key, ephemeral = None, False
    if "key" in m:
        if not m["key"].is_mapping and getattr(m["key"].raw, "value", None) == EPHEMERAL:
            ephemeral = True
        else:
            key = parse_secret(m["key"])
    regions: tuple[str, ...] = ("US",)
    if "phone_regions" in m:
        regions = tuple(r.string() for r in m["phone_regions"].items_or_one())
        for r_node, region in zip(m["phone_regions"].items_or_one(), regions, strict=True):
            if not phone_region_known(region):
                r_node.fail(f"unknown phone region {region!r} (ISO 3166 codes such as US, DE)")
        if not regions:
            m["phone_regions"].fail("at least one region is needed")
    json_paths = (
        tuple(_parse_json_path(p, targets) for p in m["json_paths"].items())
        if "json_paths" in m
        else ()
    )
    config = MaskingConfig(detectors, columns, response, key, regions, ephemeral, json_paths)
    if config.uses_hash and key is None and not ephemeral:
        node.fail(
            "the hash style needs a masking key: add key: {credential: NAME} or {file: PATH}, "
            "the same for every runner so that tokens compare across runs and runners (or "
            f"key: {EPHEMERAL}, a new key every run: tokens compare only within one run)"
        )
    return config


def _switch(node: Node) -> bool | None:
    """``on``/``off`` (which YAML 1.1 reads as booleans) and their spellings, else None."""
    raw = getattr(node.raw, "value", None)
    if isinstance(raw, str):
        if raw.lower() in _OFF:
            return False
        if raw.lower() in _ON:
            return True
    return None


def _parse_detector(node: Node) -> DetectorSetting:
    if node.is_mapping:
        m = node.keys(optional=("style", "scope"))
        setting = _parse_detector(m["style"]) if "style" in m else DetectorSetting()
        scope = m["scope"].string(choices=SCOPES) if "scope" in m else "all"
        return DetectorSetting(setting.style, scope)
    switch = _switch(node)
    if switch is not None:
        return DetectorSetting(Style.REDACT if switch else None)
    return DetectorSetting(Style(node.string(choices=_DETECTOR_STYLES)))


def _check_target(node: Node, targets: Mapping[str, Target]) -> str:
    name = node.string()
    if name not in targets:
        known = ", ".join(sorted(targets)) or "none"
        node.fail(f"unknown target {name!r} (targets: {known})")
    return name


def _check_glob(node: Node) -> str:
    pattern = node.string()
    try:
        _glob(pattern)
    except re.error as exc:  # fnmatch.translate output rarely fails, but "[" can
        node.fail(f"invalid pattern {pattern!r}: {exc}")
    if pattern.count("[") != pattern.count("]"):
        node.fail(f"unbalanced [ ] in pattern {pattern!r}")
    return pattern


def _parse_column(node: Node, targets: Mapping[str, Target]) -> ColumnRule:
    m = node.keys(required=("column", "style"), optional=("target", "table", "label"))
    label = None
    if "label" in m:
        label = m["label"].string(pattern=r"[A-Z0-9_]{1,64}")
    return ColumnRule(
        column=_check_glob(m["column"]),
        style=Style(m["style"].string(choices=_COLUMN_STYLES)),
        target=_check_target(m["target"], targets) if "target" in m else None,
        table=_check_glob(m["table"]) if "table" in m else None,
        label=label,
    )


def _parse_json_path(node: Node, targets: Mapping[str, Target]) -> JsonPath:
    m = node.keys(required=("path",), optional=("style", "target"))
    text = m["path"].string()
    try:
        steps = parse_json_path(text)
    except ValueError as exc:
        m["path"].fail(str(exc))
    return JsonPath(
        text,
        steps,
        Style(m["style"].string(choices=_DETECTOR_STYLES)) if "style" in m else Style.REDACT,
        _check_target(m["target"], targets) if "target" in m else None,
    )


def _parse_response(node: Node, targets: Mapping[str, Target]) -> tuple[ResponseRule, ...]:
    switch = _switch(node)
    if switch is not None:
        return (ResponseRule(),) if switch else ()
    rules = []
    for item in node.items():
        m = item.keys(optional=("target", "identity"))
        identity: list[tuple[str, str]] = []
        if "identity" in m:
            for key, value in m["identity"].mapping().items():
                if key not in IDENTITY_KEYS:
                    value.fail(f"unknown identity key {key!r} (known: {', '.join(IDENTITY_KEYS)})")
                identity.append((key, _identity_pattern(value)))
        target = _check_target(m["target"], targets) if "target" in m else None
        rules.append(ResponseRule(target, tuple(identity)))
    return tuple(rules)


def _identity_pattern(node: Node) -> str:
    # uid: 1000 is an integer in YAML; identities are compared as text.
    raw = getattr(node.raw, "value", None)
    if isinstance(raw, str) and raw and not node.is_null:
        return raw
    node.fail("expected a value or a glob such as 'org/*'")
