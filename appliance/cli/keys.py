"""``appliance keys``: generate Ed25519 keys in C2SP note formats (ledger and approvers)."""

from __future__ import annotations

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
    "--out",
    "prefix",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write PREFIX.key and PREFIX.vkey (default: ./NAME, '/' replaced by '_').",
)
def generate(name: str | None, approver: str | None, prefix: Path | None) -> None:
    """Write a signing key (PREFIX.key, mode 0600, never overwritten) and its verifier key
    (PREFIX.vkey, C2SP vkey text: give it to auditors and to `ledger verify --vkey`)."""
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
