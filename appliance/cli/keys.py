"""``appliance keys``: generate Ed25519 keys in C2SP note formats (ledger and approvers), and
the masking key (a random secret, shared by every runner of a fleet)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import click

from appliance.signing.keys import KeyFormatError, SigningKey, write_key_pair


@click.group("keys")
def keys_group() -> None:
    """Ed25519 signing keys for the ledger and for approvers."""


@keys_group.command("generate")
@click.option("--name", help="Ledger signing key name (use the ledger's origin).")
@click.option("--approver", help="Generate an approver key with this name instead.")
@click.option(
    "--masking-key",
    "masking",
    is_flag=True,
    help="Generate the masking key instead (for masking.key; share it across the fleet).",
)
@click.option(
    "--out",
    "prefix",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write PREFIX.key and PREFIX.vkey (default: ./NAME, '/' replaced by '_').",
)
def generate(name: str | None, approver: str | None, masking: bool, prefix: Path | None) -> None:
    """Write a signing key (PREFIX.key, mode 0600, never overwritten) and its verifier key
    (PREFIX.vkey, C2SP vkey text: give it to auditors and to `ledger verify --vkey`).

    With --masking-key: PREFIX.key only (default ./masking.key), 32 random bytes in base64, the
    key of the hash masking style; give every runner the same one (a systemd credential)."""
    if masking:
        if name is not None or approver is not None:
            raise KeyFormatError("--masking-key takes no --name or --approver")
        prefix = prefix or Path("masking")
        _write_masking_key(prefix.with_name(prefix.name + ".key"))
        return
    if (name is None) == (approver is None):
        raise KeyFormatError("give exactly one of --name NAME or --approver NAME")
    key_name = name if name is not None else approver
    assert key_name is not None
    key = SigningKey.generate(key_name)
    if prefix is None:
        prefix = Path(key_name.replace("/", "_"))
    key_path = prefix.with_name(prefix.name + ".key")
    vkey_path = prefix.with_name(prefix.name + ".vkey")
    write_key_pair(key, key_path, vkey_path)
    kind = "approver" if approver is not None else "ledger signing"
    click.echo(f"wrote {kind} key {key_path} (mode 0600) and verifier key {vkey_path}")
    click.echo(key.verifier().to_vkey())


def _write_masking_key(path: Path) -> None:
    text = base64.b64encode(secrets.token_bytes(32)).decode() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFormatError(f"{path} exists; refusing to overwrite") from None
    except OSError as exc:
        raise KeyFormatError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    click.echo(f"wrote masking key {path} (mode 0600): give every runner of the fleet this key")
