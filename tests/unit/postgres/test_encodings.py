"""Which client encodings the server and the appliance read alike."""

from __future__ import annotations

import pytest

from appliance.protocols.postgres.encodings import ascii_safe, clean_encoding_name


@pytest.mark.parametrize(
    "name",
    ["UTF8", "utf-8", "Unicode", "'utf-8'", "SQL_ASCII", "LATIN1", "ISO_8859_5", "WIN1252",
     "EUC_JP", "EUC_KR", "KOI8R", "MULE_INTERNAL"],
)  # fmt: skip
def test_server_encodings_keep_ascii_bytes_ascii(name: str) -> None:
    assert ascii_safe(name)


@pytest.mark.parametrize(
    "name",
    ["SJIS", "Shift_JIS", "shift-jis", "MSKANJI", "WIN932", "SHIFT_JIS_2004", "BIG5", "win950",
     "GBK", "CP936", "UHC", "cp949", "GB18030", "JOHAB"],
)  # fmt: skip
def test_client_only_encodings_are_not_ascii_safe(name: str) -> None:
    assert not ascii_safe(name)


def test_names_are_compared_as_the_server_compares_them() -> None:
    assert clean_encoding_name("Shift_JIS-2004") == "shiftjis2004"
    assert clean_encoding_name(" 'UTF-8' ") == "utf8"
