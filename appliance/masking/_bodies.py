"""Masking of HTTP message bodies, query strings and header values (sans-IO).

Where this sits: the HTTP session's recorder (:mod:`appliance.proxy.http.recording`) hands
a body (its first bytes, up to the target's ``record_body``) with its content type to
:func:`mask_body` in the ledger writer, and query strings and header values to
:func:`mask_query` and :func:`mask_header` on the event loop, before anything is appended.

- JSON (``application/json``, ``*+json``): every string value (and number, as text) goes
  through the detectors on for result values; values at a path that a ``json_paths`` rule
  names are masked whole in its style (``$.items[*].spec.containers[*].env[*].value``);
  object keys are scanned too. A document cut by the size cap, or not JSON after all, is
  masked as text.
- Forms (``application/x-www-form-urlencoded``) and query strings: each value through the
  detectors, and values of parameters whose names say secret (``password``, ``token``,
  ``api_key``, ``X-Amz-Signature`` ...) redacted whole.
- Text (``text/*``, XML, YAML, anything that decodes as UTF-8 without control bytes):
  the detectors over the text.
- Anything else is not text: it is not recorded (its hash and length are).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, quote

from appliance.masking._counts import MaskCounts
from appliance.masking._jsonpath import JsonPath, parse_json_path, path_match
from appliance.masking._masker import COLUMN_RULE, TargetMasker
from appliance.masking._styles import redact

__all__ = [
    "SECRET_NAMES",
    "JsonPath",
    "body_kind",
    "mask_body",
    "mask_header",
    "mask_query",
    "parse_json_path",
]

# Parameter and field names whose values are credentials whatever they look like.
SECRET_NAMES = re.compile(
    r"(?i)^(.*[_-])?(password|passwd|pwd|secret|token|access_token|refresh_token|id_token|"
    r"api[_-]?key|apikey|key|signature|sig|credential|session|auth|authorization|code|"
    r"client_secret|x-amz-signature|x-amz-credential|x-amz-security-token)$"
)
_REDACTED = redact("SECRET")


def body_kind(content_type: str | None) -> str:
    """``json``, ``form``, ``text`` or ``binary`` for a Content-Type (None: sniffed later)."""
    ct = (content_type or "").split(";", 1)[0].strip().lower()
    if ct == "application/json" or ct.endswith("+json") or ct.endswith("/json-patch"):
        return "json"
    if ct == "application/x-www-form-urlencoded":
        return "form"
    if (
        ct.startswith("text/")
        or ct.endswith("+xml")
        or ct
        in (
            "application/xml",
            "application/yaml",
            "application/x-yaml",
            "application/javascript",
            "",
        )
    ):
        return "text"
    return "binary"


def mask_body(
    masker: TargetMasker,
    body: bytes,
    content_type: str | None,
    counts: MaskCounts,
    *,
    paths: Sequence[JsonPath] = (),
    complete: bool = True,
) -> str | None:
    """The masked text of ``body`` (None: not text, not recorded); see the module
    docstring. ``complete`` False: the body was cut at the recording cap."""
    kind = body_kind(content_type)
    if kind == "binary":
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        if complete or len(body) < 4:
            return None
        try:  # the cap may have cut a character in two
            text = body[:-3].decode("utf-8") + body[-3:].decode("utf-8", "ignore")
        except UnicodeDecodeError:
            return None
    if kind == "text" and any(ord(c) < 9 or 13 < ord(c) < 32 for c in text[:4096]):
        return None
    if kind == "json" and complete:
        try:
            doc = json.loads(text)
        except ValueError:
            pass
        else:
            rules = [p for p in paths if p.applies_to(masker.target)]
            masked = _walk(doc, [], masker, counts, rules)
            return json.dumps(masked, ensure_ascii=False, separators=(",", ":"))
    if kind == "form":
        return mask_query(masker, text, counts)
    return masker.mask_value_text(text, counts, "body")


def _walk(
    x: object, at: list[str | int], masker: TargetMasker, counts: MaskCounts, rules: list[JsonPath]
) -> object:
    for rule in rules:
        if path_match(rule.steps, at) and x is not None:
            counts.add(COLUMN_RULE, rule.text)
            raw = x if isinstance(x, str) else json.dumps(x)
            return masker.mask_whole(raw, rule.style, "JSON_PATH")
    if isinstance(x, str):
        return masker.mask_value_text(x, counts, "body")
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int | float):
        as_text = json.dumps(x)
        masked = masker.mask_value_text(as_text, counts, "body")
        return x if masked is as_text else masked
    if isinstance(x, list):
        return [_walk(v, [*at, i], masker, counts, rules) for i, v in enumerate(x)]
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            key = masker.mask_value_text(k, counts, "body")
            out[key] = _walk(v, [*at, k], masker, counts, rules)
        return out
    return x  # pragma: no cover - json.loads makes nothing else


def mask_query(masker: TargetMasker, query: str, counts: MaskCounts) -> str:
    """A query string (or form body) with each value masked; secret-named ones whole."""
    if not query:
        return query
    out = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if SECRET_NAMES.match(name) and value:
            counts.add("generic_secret", name)
            masked = _REDACTED
        else:
            masked = masker.mask_value_text(value, counts, "query")
        out.append(f"{quote(name, safe='')}={quote(masked, safe='[]:*-_.~')}")
    return "&".join(out)


def mask_header(masker: TargetMasker, name: str, value: str, counts: MaskCounts) -> str:
    """A header value masked by the detectors (credential headers are the caller's to drop)."""
    return masker.mask_text(f"{name}: {value}", counts)[len(name) + 2 :]
