"""Signed notes and checkpoints against the C2SP / Go note vectors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from appliance.ledger.checkpoint import (
    Checkpoint,
    MalformedCheckpoint,
    WrongOrigin,
    open_checkpoint,
    parse_checkpoint_text,
    sign_checkpoint,
)
from appliance.signing.keys import InvalidSignature, SigningKey, VerifierKey
from appliance.signing.note import (
    MalformedNote,
    UnverifiedNote,
    open_note,
    parse_note,
    sign_note,
)

VECTOR_TEXT = (Path(__file__).parents[2] / "data" / "vectors" / "signed-note.txt").read_text()


def _vector(prefix: str) -> str:
    line = next(ln for ln in VECTOR_TEXT.splitlines() if ln.startswith(prefix))
    return line.split(" ", 1)[1]


def _notes() -> list[str]:
    parts = VECTOR_TEXT.split("-----BEGIN NOTE-----\n")[1:]
    return [p.split("-----END NOTE-----")[0] for p in parts]


PETER_SKEY = SigningKey.from_skey(_vector("skey PRIVATE+KEY+PeterNeumann"))
PETER = VerifierKey.from_vkey(_vector("vkey PeterNeumann"))
ENOCH = VerifierKey.from_vkey(_vector("vkey EnochRoot"))
EXAMPLE = VerifierKey.from_vkey(_vector("vkey example.com/foo"))
NOTE1, NOTE2 = _notes()
TEXT1 = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)


def test_sign_is_byte_exact() -> None:
    signed = sign_note(TEXT1, [PETER_SKEY])
    first_sig_line = NOTE1.split("\n\n")[1].split("\n")[0]
    assert signed == TEXT1 + "\n" + first_sig_line + "\n"


def test_open_vectors() -> None:
    assert open_note(NOTE1, [PETER]) == (TEXT1, [PETER])
    assert open_note(NOTE1, [ENOCH]) == (TEXT1, [ENOCH])
    assert open_note(NOTE1, [PETER, ENOCH]) == (TEXT1, [PETER, ENOCH])
    assert open_note(NOTE2, [EXAMPLE])[0] == "This is an example message.\n"


def test_unknown_keys_are_ignored_but_one_known_is_required() -> None:
    with pytest.raises(UnverifiedNote) as info:
        open_note(NOTE2, [PETER])
    assert info.value.signers[0][0] == "example.com/foo"
    with pytest.raises(InvalidSignature):
        open_note(NOTE2, [])


def test_same_name_other_key_is_unknown_not_invalid() -> None:
    impostor = SigningKey.generate("PeterNeumann", seed=b"\x07" * 32)
    note = sign_note(TEXT1, [impostor]).rstrip("\n") + "\n" + NOTE1.split("\n\n")[1]
    # The impostor's (name, id) is unknown to a verifier that only knows the real key.
    assert open_note(note, [PETER])[1] == [PETER]


def _sig_block() -> str:
    return NOTE1.split("\n\n")[1]


MALFORMED = {
    "no signature lines": TEXT1,
    "blank line and no signatures": TEXT1 + "\n",
    "no final newline": TEXT1 + "\n" + _sig_block().rstrip("\n"),
    "starts with 0x01": "\x01" + NOTE1,
    "space in key name": TEXT1 + "\n— Bad Name " + _sig_block().split(" ")[2].split("\n")[0] + "\n",
    "unexpected line after signatures": NOTE1 + "Unexpected line.\n",
    "101 signatures": TEXT1 + "\n" + (_sig_block().split("\n")[0] + "\n") * 101,
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_notes_are_rejected(name: str) -> None:
    with pytest.raises(MalformedNote):
        open_note(MALFORMED[name], [PETER, ENOCH])


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(MalformedNote):
        open_note(b"\xff" + NOTE1.encode(), [PETER])


def test_spliced_signature_is_invalid() -> None:
    line = _sig_block().split("\n")[0]
    bad = line[:60] + "ABCD" + line[60:]
    with pytest.raises(InvalidSignature, match=r"PeterNeumann\+c74f20a3"):
        open_note(TEXT1 + "\n" + bad + "\n", [PETER])


def test_sixteen_signatures_are_accepted() -> None:
    keys = [SigningKey.generate(f"k{i}", seed=bytes([i]) * 32) for i in range(16)]
    note = sign_note("hello\n", keys)
    assert len(parse_note(note)[1]) == 16
    assert open_note(note, [keys[15].verifier()])[1] == [keys[15].verifier()]


def test_sign_rejects_bad_text() -> None:
    for text in ("no newline", "two\n\n", "\x02\n"):
        with pytest.raises(MalformedNote):
            sign_note(text, [PETER_SKEY])


# -- checkpoints ------------------------------------------------------------------------------


def test_tree_note_body() -> None:
    body = "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
    cp = parse_checkpoint_text(body)
    assert cp.size == 123456789012
    assert cp.root == hashlib.sha256(b"\x00hello world").digest()
    assert cp.text() == body


@pytest.mark.parametrize(
    "body",
    [
        "o\n0xabcdef\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n12\n" + base64.b64encode(b"x" * 31).decode() + "\n",
        "o\n12\n",
        "\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
        "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n\nx\n",
        "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=",
    ],
)
def test_bad_checkpoint_bodies(body: str) -> None:
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint_text(body)


def test_extension_lines_are_kept() -> None:
    body = "o\n12\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\next one\n"
    assert parse_checkpoint_text(body).extensions == ("ext one",)


def test_checkpoint_round_trip_and_origin() -> None:
    key = SigningKey.generate("example.com/log", seed=b"\x01" * 32)
    cp = Checkpoint("example.com/log", 7, b"\x02" * 32)
    note = sign_checkpoint(cp, key)
    assert note.startswith("example.com/log\n7\nAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n\n— ")
    opened = open_checkpoint(note, [key.verifier()], origin="example.com/log")
    assert opened == cp and opened.note == note
    with pytest.raises(WrongOrigin):
        open_checkpoint(note, [key.verifier()], origin="example.com/other")
    other = SigningKey.generate("example.com/log", seed=b"\x03" * 32)
    with pytest.raises(InvalidSignature):
        open_checkpoint(note, [other.verifier()])
