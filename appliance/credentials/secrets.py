"""Reading a service account's secret from where the configuration points.

Where this sits: when a job's session needs the upstream credential, the proxy resolves the
account's :class:`~appliance.config.SecretRef` with :func:`read_secret` and hands the secret
to the upstream authentication (never to the job, the ledger or a log line).

A reference is either a file path or the name of a systemd credential, resolved under
``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``/``SetCredentialEncrypted=`` in the unit);
the caller passes that directory in, so tests and the CLI decide where it comes from.

Decisions:

- one line ending is stripped (``\\n`` or ``\\r\\n``), nothing else: leading or trailing
  spaces may be part of a password;
- a secret file that other users can read (``o+r``) is *refused*, not warned about: the
  appliance runs unattended and nobody reads a warning before the secret has leaked. Group
  read is allowed, because systemd credential directories and secret-sharing groups use
  it. The check is on the file itself after symlinks are followed;
- empty secrets, secrets that are not UTF-8 and secrets with NUL bytes (which the
  PostgreSQL protocol cannot carry) are refused;
- errors name the reference and the problem, never any byte of the secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from appliance.config import SecretRef
from appliance.errors import ApplianceError

MAX_SECRET_BYTES = 64 * 1024


class SecretError(ApplianceError):
    """A secret could not be read or is unusable. Never contains the secret."""


def secret_path(ref: SecretRef, *, credentials_dir: str | None) -> Path:
    """The file ``ref`` points at. Raises SecretError for a credential reference without a
    credentials directory, or a credential name that is not a plain file name."""
    if ref.file is not None:
        return ref.file
    name = ref.credential
    if not name or "/" in name or name in (".", ".."):
        raise SecretError(f"invalid systemd credential name {name!r}")
    if not credentials_dir:
        raise SecretError(
            f"secret is {ref.describe()}, but $CREDENTIALS_DIRECTORY is not set (run the "
            "appliance as a systemd service with LoadCredential=, or use a file reference)"
        )
    return Path(credentials_dir) / name


def read_secret(ref: SecretRef, *, credentials_dir: str | None) -> str:
    """The secret ``ref`` names, with one trailing line ending removed.

    Raises SecretError if it is missing, unreadable, readable by other users, empty, larger
    than 64 KiB, not UTF-8 or contains a NUL byte.
    """
    path = secret_path(ref, credentials_dir=credentials_dir)
    where = ref.describe() if ref.file is not None else f"{ref.describe()} ({path})"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretError(f"secret {where} does not exist") from None
    except OSError as exc:
        raise SecretError(f"cannot open secret {where}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret {where} is not a regular file")
        if st.st_mode & stat.S_IROTH:
            raise SecretError(
                f"secret {where} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o});"
                " refusing to use it: chmod o-r it (and rotate the secret)"
            )
        if st.st_size > MAX_SECRET_BYTES:
            raise SecretError(f"secret {where} is larger than {MAX_SECRET_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read secret {where}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(f"secret {where} is larger than {MAX_SECRET_BYTES} bytes")
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise SecretError(f"secret {where} is empty")
    if b"\0" in raw:
        raise SecretError(f"secret {where} contains a NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"secret {where} is not valid UTF-8") from None
