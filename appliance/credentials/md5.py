"""PostgreSQL's md5 password response (the ``md5`` authentication method).

Where this sits: the upstream state machine answers AuthenticationMD5Password with
:func:`md5_response`. The user is the *upstream* role name (the service account's user,
the one sent in the startup packet), because PostgreSQL salts the stored hash with it.
md5 is deprecated in PostgreSQL and is kept only for servers that still use it.
"""

from __future__ import annotations

import hashlib


def md5_response(password: str, user: str, salt: bytes) -> str:
    """``"md5" + md5hex(md5hex(password + user) + salt)``, the PasswordMessage body."""
    if len(salt) != 4:
        raise ValueError("an md5 salt is 4 bytes")
    inner = hashlib.md5(password.encode("utf-8") + user.encode("utf-8")).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()


def md5_verifier(password: str, user: str) -> str:
    """What PostgreSQL stores in pg_authid.rolpassword for md5: ``"md5" + md5hex(p + u)``."""
    return "md5" + hashlib.md5(password.encode("utf-8") + user.encode("utf-8")).hexdigest()
