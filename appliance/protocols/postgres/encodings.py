"""Client encodings whose text the server and the appliance read alike.

The appliance reads statement text as bytes in which every ASCII byte is the ASCII
character (quotes, backslashes, semicolons, letters). PostgreSQL's server encodings are all
like that (UTF-8, SQL_ASCII, LATIN1..., EUC_*: bytes of a multibyte character all have the
high bit set). Its client-only encodings are not: in SJIS, BIG5, GBK, UHC, GB18030 and
JOHAB the second byte of a character can be ``\\`` or a letter, so the server would read a
statement differently from the appliance. Those are refused.
"""

from __future__ import annotations

import re

# PostgreSQL's names and aliases of the client-only encodings (src/common/encnames.c),
# cleaned as the server cleans them: lower case, letters and digits only.
ASCII_UNSAFE = frozenset(
    {
        "sjis",
        "shiftjis",
        "mskanji",
        "win932",
        "windows932",
        "shiftjis2004",
        "big5",
        "win950",
        "windows950",
        "gbk",
        "win936",
        "windows936",
        "cp936",
        "uhc",
        "win949",
        "windows949",
        "cp949",
        "gb18030",
        "johab",
    }
)


def clean_encoding_name(name: str) -> str:
    """``name`` as the server compares encoding names (``'Shift_JIS'`` -> ``shiftjis``);
    quotes a driver put around it (asyncpg sends ``'utf-8'``) go too."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def ascii_safe(encoding: str) -> bool:
    """True unless ``encoding`` names a client-only encoding (see the module docstring)."""
    return clean_encoding_name(encoding) not in ASCII_UNSAFE


__all__ = ["ASCII_UNSAFE", "ascii_safe", "clean_encoding_name"]
