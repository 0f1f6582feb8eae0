"""The node key file and the unlock key: Docker's formats, sealing, and parsers that only ever
raise their documented errors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmd.ca import keyfile, pki

KEY_PEM = pki.key_to_pem(pki.generate_key())


def test_unlock_key_format_is_dockers() -> None:
    key = keyfile.generate_unlock_key()
    assert key.startswith("SWMKEY-1-") and len(key) == 52 and "=" not in key
    assert len(keyfile.parse_unlock_key(key)) == 32


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(min_size=32, max_size=32))
def test_unlock_keys_round_trip(raw: bytes) -> None:
    text = "SWMKEY-1-" + base64.b64encode(raw).decode().rstrip("=")
    assert keyfile.parse_unlock_key(text) == raw


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text())
def test_unlock_key_parser_only_says_invalid_key_string(text: str) -> None:
    try:
        raw = keyfile.parse_unlock_key(text)
    except ValueError as e:
        assert str(e) == "invalid key string"
    else:
        assert len(raw) == 32 and text.startswith("SWMKEY-1-")


@pytest.mark.parametrize("text", ["", "SWMKEY-1-", "SWMKEY-2-" + "A" * 43, "SWMKEY-1-" + "A" * 42,
                                  "SWMKEY-1-" + "A" * 44, "SWMKEY-1-" + "A" * 42 + "=", "swmkey-1-" + "A" * 43,
                                  "SWMKEY-1-" + "A" * 42 + "!"])
def test_malformed_unlock_keys(text: str) -> None:
    with pytest.raises(ValueError, match="^invalid key string$"):
        keyfile.parse_unlock_key(text)


def test_plain_key_file_keeps_the_data_key_and_docker_headers() -> None:
    node_key = keyfile.NodeKey(KEY_PEM, keyfile.new_data_key(), 3)
    data = keyfile.encode(node_key, None)
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\nkek-version: 3\nraft-dek: ")
    assert not keyfile.is_encrypted(data)
    back = keyfile.decode(data, None)
    assert (back.key_pem, back.dek, back.kek_version) == (KEY_PEM, node_key.dek, 3)


def test_sealed_key_file_needs_the_right_unlock_key() -> None:
    kek = keyfile.parse_unlock_key(keyfile.generate_unlock_key())
    node_key = keyfile.NodeKey(KEY_PEM, keyfile.new_data_key(), 1)
    data = keyfile.encode(node_key, kek)
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n") and keyfile.is_encrypted(data)
    assert node_key.dek is not None and base64.b64encode(node_key.dek) not in data
    assert KEY_PEM.splitlines()[1] not in data
    with pytest.raises(keyfile.LockedError):
        keyfile.decode(data, None)
    with pytest.raises(keyfile.WrongUnlockKey):
        keyfile.decode(data, bytes(32))
    back = keyfile.decode(data, kek)
    assert (back.key_pem, back.dek) == (KEY_PEM, node_key.dek)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=600))
def test_damaged_key_files_give_key_file_errors(junk: bytes) -> None:
    data = b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(junk) + b"\n-----END PRIVATE KEY-----\n"
    try:
        keyfile.decode(data, None)
    except keyfile.KeyFileError:
        pass
