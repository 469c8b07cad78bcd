"""``appliance.identity``'s names: those that need joserfc are imported on first use."""

from __future__ import annotations

import pytest

import appliance.identity
from appliance.identity import _keys, _verifier, _verify


def test_every_exported_name_resolves_to_its_modules_object() -> None:
    for name in appliance.identity.__all__:
        assert getattr(appliance.identity, name) is not None
    assert appliance.identity.Verifier is _verifier.Verifier
    assert appliance.identity.KeyStore is _keys.KeyStore
    assert appliance.identity.verify is _verify.verify
    assert appliance.identity.REASONS is _verify.REASONS


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Verfier'"):
        _ = appliance.identity.Verfier
    assert not hasattr(appliance.identity, "nothing_here")
