"""Reading secrets: files and systemd credentials, one line ending stripped, unsafe files
refused, and no error ever shows the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.config import SecretRef
from appliance.credentials import SecretError, read_secret
from appliance.credentials.secrets import secret_path

SECRET = "s3cr3t-value"


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"s3cr3t-value\n", SECRET),
        (b"s3cr3t-value", SECRET),
        (b"s3cr3t-value\r\n", SECRET),
        (b"s3cr3t-value\n\n", SECRET + "\n"),  # only one line ending
        (b" spaced \n", " spaced "),
        ("p\u00e4ss\n".encode(), "p\u00e4ss"),
    ],
)
def test_file_secret(tmp_path: Path, data: bytes, expected: str) -> None:
    path = write(tmp_path / "pw", data)
    assert read_secret(SecretRef(file=path), credentials_dir=None) == expected


def test_systemd_credential(tmp_path: Path) -> None:
    write(tmp_path / "db-password", b"s3cr3t-value\n", 0o440)
    ref = SecretRef(credential="db-password")
    assert read_secret(ref, credentials_dir=str(tmp_path)) == SECRET
    with pytest.raises(SecretError, match="CREDENTIALS_DIRECTORY is not set"):
        read_secret(ref, credentials_dir=None)
    with pytest.raises(SecretError, match="does not exist"):
        read_secret(SecretRef(credential="other"), credentials_dir=str(tmp_path))
    for bad in ("../x", "..", "a/b"):
        with pytest.raises(SecretError, match="invalid systemd credential name"):
            secret_path(SecretRef(credential=bad), credentials_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("data", "mode", "problem"),
    [
        (b"s3cr3t-value\n", 0o644, "readable by every user"),
        (b"s3cr3t-value\n", 0o604, "readable by every user"),
        (b"\n", 0o600, "empty"),
        (b"", 0o600, "empty"),
        (b"s3cr3t\0value", 0o600, "NUL"),
        (b"s3cr3t-\xffvalue", 0o600, "not valid UTF-8"),
        (b"s3cr3t-value" * 6000, 0o600, "larger than"),
    ],
)
def test_refused_secrets_never_show_the_value(
    tmp_path: Path, data: bytes, mode: int, problem: str
) -> None:
    path = write(tmp_path / "pw", data, mode)
    with pytest.raises(SecretError, match=problem) as info:
        read_secret(SecretRef(file=path), credentials_dir=None)
    assert "s3cr3t" not in str(info.value)


def test_missing_and_not_regular(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="does not exist"):
        read_secret(SecretRef(file=tmp_path / "nope"), credentials_dir=None)
    with pytest.raises(SecretError, match="not a regular file"):
        read_secret(SecretRef(file=tmp_path), credentials_dir=None)


def test_group_readable_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "pw", b"s3cr3t-value", 0o640)
    assert read_secret(SecretRef(file=path), credentials_dir=None) == SECRET
