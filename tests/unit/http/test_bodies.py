"""Masking of HTTP bodies, queries and JSON path rules (:mod:`appliance.masking._bodies`,
:mod:`appliance.masking._jsonpath`)."""

from __future__ import annotations

import json

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.masking import MaskCounts, Masker, MaskingConfig, parse_masking
from appliance.masking._bodies import body_kind, mask_body, mask_header, mask_query
from appliance.masking._jsonpath import JsonPath, parse_json_path, path_match

M = Masker(MaskingConfig(), hmac_key=b"k" * 32).for_target("api")


def test_json_values_keys_and_numbers_are_masked() -> None:
    counts = MaskCounts()
    doc = {"card": "4111 1111 1111 1111", "4111111111111111": 1, "n": 4111111111111111, "ok": True}
    out = json.loads(
        mask_body(M, json.dumps(doc).encode(), "application/json; charset=utf-8", counts) or ""
    )
    assert out == {
        "card": "[REDACTED:CARD]",
        "[REDACTED:CARD]": 1,
        "n": "[REDACTED:CARD]",
        "ok": True,
    }
    assert counts.as_dict()["detectors"] == {"card": 3}


def test_path_rules_mask_whole_values() -> None:
    steps = parse_json_path("$.items[*].spec.containers[*].env[*].value")
    rule = JsonPath("$.items[*].spec.containers[*].env[*].value", steps)
    doc = {"items": [{"spec": {"containers": [{"env": [{"name": "PW", "value": "hunter2"}]}]}}]}
    out = mask_body(M, json.dumps(doc).encode(), "application/json", MaskCounts(), paths=[rule])
    assert "hunter2" not in (out or "") and "[REDACTED:JSON_PATH]" in (out or "")
    assert path_match(("a", "*", 0), ["a", "b", 0]) and not path_match(("a",), ["a", "b"])
    assert parse_json_path("$['a b'][3].*") == ("a b", 3, "*")
    with pytest.raises(ValueError):
        parse_json_path("items.x")


def test_cut_json_forms_text_and_binary() -> None:
    cut = b'{"card": "4111 1111 1111 1111", "more": "'
    assert "4111" not in (mask_body(M, cut, "application/json", MaskCounts(), complete=False) or "")
    form = mask_body(
        M,
        b"user=ada&password=hunter2&card=4111111111111111",
        "application/x-www-form-urlencoded",
        MaskCounts(),
    )
    assert form == "user=ada&password=[REDACTED:SECRET]&card=[REDACTED:CARD]"
    assert mask_body(M, b"\x89PNG\r\n\x1a\n", "image/png", MaskCounts()) is None
    assert mask_body(M, b"ssn 536-22-8119", "text/plain", MaskCounts()) == "ssn [REDACTED:SSN]"
    assert body_kind("application/merge-patch+json") == "json"


def test_queries_and_headers() -> None:
    counts = MaskCounts()
    assert (
        mask_query(M, "X-Amz-Signature=abc&page=2", counts)
        == "X-Amz-Signature=[REDACTED:SECRET]&page=2"
    )
    assert "4111" not in mask_header(M, "x-card", "4111 1111 1111 1111", counts)


def test_config_json_paths() -> None:
    cfg = parse_config("targets:\n  - {name: api, protocol: http, addresses: ['a.test:443']}\n")
    node = parse_config(
        "targets:\n  - {name: api, protocol: http, addresses: ['a.test:443']}\n"
        "masking:\n  json_paths:\n    - {path: '$.x', style: hash}\n  key: {file: /k}\n"
    ).masking
    config = parse_masking(node, targets=cfg.targets)
    assert config.json_paths[0].steps == ("x",) and config.uses_hash
    bad = parse_config(
        "targets:\n  - {name: api, protocol: http, addresses: ['a.test:443']}\n"
        "masking:\n  json_paths:\n    - {path: 'x'}\n"
    ).masking
    with pytest.raises(ConfigError, match="starts with"):
        parse_masking(bad, targets=cfg.targets)
