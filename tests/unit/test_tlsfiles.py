"""swarmctl reads a node key file without the daemon's CA code: it must accept and refuse
exactly what the daemon's own reader (``swarmd.ca.keyfile``) does, with the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmctl import tlsfiles
from swarmctl.errors import CLIError
from swarmd.ca import keyfile, pki

KEY_PEM = pki.key_to_pem(pki.generate_key())
PLAIN = keyfile.encode(keyfile.NodeKey(KEY_PEM, keyfile.new_data_key(), 2, keyfile.new_data_key()), None)


def daemon_reads(data: bytes, path: Path) -> bytes | str:
    try:
        return keyfile.decode(data, None).key_pem
    except keyfile.LockedError:
        return f"the key in {path} is encrypted (autolock); use a key file without a passphrase"
    except keyfile.KeyFileError as e:
        return f"could not read --tlskey {path}: {e}"


def cli_reads(data: bytes, path: Path) -> bytes | str:
    path.write_bytes(data)
    try:
        return tlsfiles.read_key(path)
    except CLIError as e:
        return e.message


def damaged(data: bytes) -> list[bytes]:
    step = max(1, len(data) // 120)
    cuts = [data[:i] for i in range(0, len(data), step)]
    flips = [data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:] for i in range(0, len(data), step)]
    return [*cuts, *flips, data[:-1]]


@pytest.mark.parametrize("data", [
    PLAIN,
    keyfile.encode(keyfile.NodeKey(KEY_PEM), None),
    KEY_PEM,
    keyfile.encode(keyfile.NodeKey(KEY_PEM, keyfile.new_data_key()),
                   keyfile.parse_unlock_key(keyfile.generate_unlock_key())),
    PLAIN.replace(b"kek-version: 2", b"kek-version: two"),
    PLAIN.replace(b"raft-dek: ", b"raft-dek: !"),
    PLAIN.replace(b"PRIVATE KEY", b"PUBLIC KEY"),
    b"",
], ids=["node key", "no data key", "bare key", "autolocked", "bad kek-version", "bad data key",
        "not a key", "empty"])
def test_key_files_read_as_the_daemon_reads_them(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "swarm-node.key"
    assert cli_reads(data, path) == daemon_reads(data, path)


def test_damaged_key_files_fail_as_the_daemon_reader_fails(tmp_path: Path) -> None:
    path = tmp_path / "swarm-node.key"
    outcomes = set()
    for data in damaged(PLAIN):
        got = cli_reads(data, path)
        assert got == daemon_reads(data, path)
        outcomes.add(got if isinstance(got, str) else "read")
    assert len(outcomes) > 2  # the cases reach more than one way of failing


def test_a_missing_flag_or_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match=r"missing --tlskey\)$"):
        tlsfiles.read_key(None)
    with pytest.raises(CLIError, match=rf"^could not read --tlscert {tmp_path}/absent: No such file"):
        tlsfiles.read(tmp_path / "absent", "--tlscert")
