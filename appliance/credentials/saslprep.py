"""SASLprep (RFC 4013) of SCRAM passwords, exactly as PostgreSQL applies it.

Where this sits: :mod:`appliance.credentials.scram` prepares the service account's password
with :func:`prepare_password` before deriving keys. The server derived its stored verifier
from the password the same way (``src/common/saslprep.c``), so any difference here would
make a correct password fail; the tests compare against verifiers made by PostgreSQL 15.

PostgreSQL's rules, which differ from a textbook SASLprep in three ways:

1. a pure-ASCII string is used unchanged (even with control characters);
2. the prohibited-output, unassigned-code-point and bidirectional checks run on the mapped
   string *before* NFKC normalisation;
3. when the string cannot be prepared (prohibited characters, bad bidi, empty after
   mapping, or not valid UTF-8) the raw password is used as is, instead of failing.
"""

from __future__ import annotations

import stringprep
import unicodedata

_PROHIBITED = (
    stringprep.in_table_c21_c22,  # ASCII and non-ASCII control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties or deprecated
    stringprep.in_table_c9,  # tagging characters
    stringprep.in_table_c12,  # non-ASCII space (mapped away before this check)
    stringprep.in_table_a1,  # unassigned in Unicode 3.2
)


def saslprep(text: str) -> str | None:
    """The SASLprep form of ``text`` as PostgreSQL computes it, or None when PostgreSQL
    would not prepare it (then the raw password is used)."""
    if text.isascii():
        return text
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return None  # not valid UTF-8 once encoded: PostgreSQL's SASLPREP_INVALID_UTF8
    mapped = []
    for c in text:
        if stringprep.in_table_c12(c):  # checked first, as PostgreSQL does (U+200B)
            mapped.append(" ")
        elif not stringprep.in_table_b1(c):
            mapped.append(c)
    if not mapped:
        return None  # PostgreSQL refuses an empty prepared password
    for c in mapped:
        if any(table(c) for table in _PROHIBITED):
            return None
    if any(stringprep.in_table_d1(c) for c in mapped):
        if any(stringprep.in_table_d2(c) for c in mapped):
            return None
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return None
    return unicodedata.normalize("NFKC", "".join(mapped))


def prepare_password(password: str) -> bytes:
    """The bytes SCRAM keys are derived from: SASLprep'd if possible, else the password
    unchanged (UTF-8; lone surrogates from undecodable bytes map back to those bytes)."""
    prepared = saslprep(password)
    return (prepared if prepared is not None else password).encode("utf-8", "surrogateescape")
