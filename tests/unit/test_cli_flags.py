"""swarmctl's client-side parsing, checked against what Docker's own client prints.

The expected texts were taken from docker 28.2.2 (`docker network create ...` answers these
before it needs a daemon). Every case here stops before swarmctl opens a connection.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmctl import gocsv, ipamflags, main, params
from swarmctl.errors import CLIError


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main.main(["-H", "unix:///nonexistent/swarmd.sock", *argv])
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


USAGE = ("\n\nUsage:  swarmctl network create [OPTIONS] NETWORK\n\n"
         "Run 'swarmctl network create --help' for more information\n")


# -- pflag's stringSlice: one CSV record per value -------------------------------------------

@pytest.mark.parametrize("text, values", [
    ("10.0.0.0/24,10.1.0.0/24", ["10.0.0.0/24", "10.1.0.0/24"]),
    ("", []),
    ('"10.0.0.0/24,10.0.0.0/16"', ["10.0.0.0/24,10.0.0.0/16"]),
    ("10.0.0.0/24, 10.1.0.0/16", ["10.0.0.0/24", " 10.1.0.0/16"]),
    ("10.0.0.0/24\n10.0.0.0/16", ["10.0.0.0/24"]),
    ("\n10.0.0.0/24,10.0.0.0/16", ["10.0.0.0/24", "10.0.0.0/16"]),
    ("10.0.0.0/24,", ["10.0.0.0/24", ""]),
    ("10.0.0.0/24\r", ["10.0.0.0/24"]),
    ('"a""b",c', ['a"b', "c"]),
])
def test_string_slice_values_are_one_csv_record(text: str, values: list[str]) -> None:
    assert gocsv.read_slice(text) == values


@pytest.mark.parametrize("text, error", [
    ('a"b', 'parse error on line 1, column 2: bare " in non-quoted-field'),
    ('"a', 'parse error on line 1, column 3: extraneous or missing " in quoted-field'),
    ('"a"b', 'parse error on line 1, column 3: extraneous or missing " in quoted-field'),
    ('\n\n"a', 'parse error on line 3, column 3: extraneous or missing " in quoted-field'),
    ('"a\nb",c"d', 'record on line 1; parse error on line 2, column 5: bare " in non-quoted-field'),
    (' "a"', 'parse error on line 1, column 2: bare " in non-quoted-field'),
    ('é"', 'parse error on line 1, column 3: bare " in non-quoted-field'),
    ('a\tb,"', 'parse error on line 1, column 6: extraneous or missing " in quoted-field'),
    ("\n", "EOF"),
])
def test_string_slice_errors_are_gos(text: str, error: str) -> None:
    with pytest.raises(gocsv.CSVError) as caught:
        gocsv.read_slice(text)
    assert str(caught.value) == error


@given(st.text())
def test_any_flag_value_is_a_record_or_a_csv_error(text: str) -> None:
    try:
        assert isinstance(gocsv.read_slice(text), list)
    except gocsv.CSVError:
        pass


def test_a_bad_csv_value_is_a_flag_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "network", "create", "--subnet", 'a"b', "x") == (
        125, "", 'invalid argument "a\\"b" for "--subnet" flag: parse error on line 1, column 2: '
                 'bare " in non-quoted-field' + USAGE)
    assert run(capsys, "network", "create", "--subnet", "10.0.0.0/24", "--gateway", "\n", "x") == (
        125, "", 'invalid argument "\\n" for "--gateway" flag: EOF' + USAGE)


# -- docker/cli's createIPAMConfig -----------------------------------------------------------

@pytest.mark.parametrize("subnets, gateways, error", [
    (["10.0.0.0/24", "10.0.0.0/16"], [], "multiple overlapping subnet configuration is not supported"),
    (["10.0.0.0/24", "10.0.0.0/24"], [], "multiple overlapping subnet configuration is not supported"),
    ([], ["10.0.0.1"], "every ip-range or gateway must have a corresponding subnet"),
    (["10.0.0.0/24"], ["10.0.0.1", "10.0.0.2"], "every ip-range or gateway must have a corresponding subnet"),
    (["10.0.0.0/24"], ["10.1.0.1"], "no matching subnet for gateway 10.1.0.1"),
    (["10.0.0.0/24"], ["foo"], "no matching subnet for gateway foo"),
    (["foo"], ["10.0.0.1"], "invalid subnet: invalid CIDR address: foo"),
    (["foo", "bar"], [], "invalid subnet: invalid CIDR address: bar"),
    (["10.0.0.0/24", "foo"], [], "invalid subnet: invalid CIDR address: foo"),
    (["foo", "10.0.0.0/24"], [], "invalid subnet: invalid CIDR address: foo"),
    (["10.0.0.0/24", "10.0.0.5"], [], "invalid subnet: invalid CIDR address: 10.0.0.5"),
    (["10.0.0.0/24", ""], [], "invalid subnet: invalid CIDR address: "),
    (["010.0.0.0/24"], ["10.0.0.1"], "invalid subnet: invalid CIDR address: 010.0.0.0/24"),
    (["10.0.0.0/24"], ["10.0.0.1/x"], "invalid CIDR address: 10.0.0.1/x"),
    (["10.0.0.0/24", "10.1.0.0/24"], ["10.0.0.1", "10.0.0.2"],
     "cannot configure multiple gateways (10.0.0.2, 10.0.0.1) for the same subnet (10.0.0.0/24)"),
    (["10.0.0.0/24", "10.9.0.0/24"], ["::ffff:10.0.0.1", "10.9.0.300"], "no matching subnet for gateway 10.9.0.300"),
    (["10.0.0.0/024"], ["10.1.0.1"], "no matching subnet for gateway 10.1.0.1"),
])
def test_ipam_flags_are_checked_with_dockers_texts(subnets: list[str], gateways: list[str], error: str) -> None:
    with pytest.raises(CLIError) as caught:
        ipamflags.pair_gateways(subnets, gateways)
    assert caught.value.message == error


def test_a_gateway_goes_to_the_subnet_that_holds_it() -> None:
    assert ipamflags.pair_gateways(["10.1.0.0/24", "10.0.0.0/24"], ["10.0.0.254"]) == [
        ("10.1.0.0/24", ""), ("10.0.0.0/24", "10.0.0.254")]
    # Which subnet is a network address, IPv4, or free is the daemon's to say.
    assert ipamflags.pair_gateways(["10.0.0.5/24"], []) == [("10.0.0.5/24", "")]
    assert ipamflags.pair_gateways(["fd00::/64"], ["fd00::1"]) == [("fd00::/64", "fd00::1")]


@given(st.lists(st.text(max_size=20), max_size=4), st.lists(st.text(max_size=20), max_size=4))
def test_any_ipam_flags_pair_up_or_give_one_cli_error(subnets: list[str], gateways: list[str]) -> None:
    try:
        pairs = ipamflags.pair_gateways(subnets, gateways)
    except CLIError as e:
        assert "\n" not in e.message or any("\n" in v for v in subnets + gateways)
        return
    assert [s for s, _ in pairs] == list(dict.fromkeys(subnets))


def test_ipam_errors_are_client_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "network", "create", "--subnet", "10.0.0.0/24,10.0.0.0/16", "x") == (
        1, "", "multiple overlapping subnet configuration is not supported\n")
    assert run(capsys, "network", "create", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1,10.0.0.2", "x") == (
        1, "", "every ip-range or gateway must have a corresponding subnet\n")
    assert run(capsys, "network", "create", "--gateway", "10.0.0.1", "x") == (
        1, "", "every ip-range or gateway must have a corresponding subnet\n")
    assert run(capsys, "network", "create", "--subnet", "10.0.0.0/24", "--subnet", "10.0.0.0/16", "x") == (
        1, "", "multiple overlapping subnet configuration is not supported\n")


# -- docker/cli's ValidateLabel (network create --label) -------------------------------------

def test_network_labels_are_checked_like_dockers(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "network", "create", "--label", "=x", "x") == (
        125, "", "invalid argument \"=x\" for \"--label\" flag: invalid label '=x': empty name" + USAGE)
    assert run(capsys, "network", "create", "--label", "a b=1", "x") == (
        125, "", "invalid argument \"a b=1\" for \"--label\" flag: label 'a b' contains whitespaces" + USAGE)
    assert run(capsys, "network", "create", "--label", " \t=1", "x")[2].startswith(
        "invalid argument \" \\t=1\" for \"--label\" flag: invalid label ' \t=1': empty name\n")


# -- references, availability and PEM files: Docker's client-side checks --------------------

def test_an_empty_reference_is_refused_before_any_call(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "node", "inspect", "") == (1, "[]\n", "invalid node name or ID: value is empty\n")
    assert run(capsys, "network", "inspect", " \t") == (1, "[]\n", "invalid network name or ID: value is empty\n")
    assert run(capsys, "node", "rm", "") == (1, "", "invalid node name or ID: value is empty\n")
    assert run(capsys, "node", "update", "--availability", "drain", " ") == (
        1, "", "invalid node name or ID: value is empty\n")
    assert run(capsys, "node", "promote", "\n") == (1, "", "invalid node name or ID: value is empty\n")
    assert run(capsys, "network", "rm", "-f", "") == (
        1, "", "invalid network name or ID: value is empty\nexit status 1\n")


def test_swarm_availability_is_quoted_like_go(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "init", "--availability", 'a"b') == (
        1, "", 'invalid availability "a\\"b", only active, pause and drain are supported\n')
    assert run(capsys, "join", "--availability", "", "x:1") == (
        1, "", 'invalid availability "", only active, pause and drain are supported\n')


def test_ca_files_are_read_while_parsing_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    usage = "\n\nUsage:  swarmctl ca [OPTIONS]\n\nRun 'swarmctl ca --help' for more information\n"
    assert run(capsys, "ca", "--ca-cert", "/nonexistent") == (
        125, "", 'invalid argument "/nonexistent" for "--ca-cert" flag: open /nonexistent: no such file or directory'
                 + usage)
    assert run(capsys, "ca", "--rotate", "--ca-key", "") == (
        125, "", 'invalid argument "" for "--ca-key" flag: open : no such file or directory' + usage)
    assert run(capsys, "ca", "--rotate", "--ca-cert", str(tmp_path)) == (
        125, "", f'invalid argument "{tmp_path}" for "--ca-cert" flag: read {tmp_path}: is a directory' + usage)
    text = tmp_path / "notes.txt"
    text.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    assert run(capsys, "ca", "--ca-cert", str(text)) == (
        125, "", f'invalid argument "{text}" for "--ca-cert" flag: file contents must be in PEM format' + usage)
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert run(capsys, "ca", "--ca-cert", str(pem)) == (
        1, "", "`--ca-cert` flag requires the `--rotate` flag to update the CA\n")


@pytest.mark.parametrize("text, pools", [
    ("\n10.5.0.0/16", ["10.5.0.0/16"]),  # Go's CSV reader skips empty lines before the record
    ("10.6.0.0/16\n10.7.0.0/16", ["10.6.0.0/16"]),
    ("\r\n\n10.8.0.0/16\r\n", ["10.8.0.0/16"]),
    ("\n", []),
    ('"10.0.0.0/8",10.1.0.0/16', ["10.0.0.0/8", "10.1.0.0/16"]),
])
def test_default_addr_pool_reads_the_list_as_docker_does(text: str, pools: list[str]) -> None:
    # What docker 28.2.2 sends as DefaultAddrPool for the same --default-addr-pool value.
    assert params.IPNET_LIST.convert(text, None, None) == pools


def test_token_file_errors_name_the_path_as_typed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "join", "--token-file", "", "x:1") == (
        1, "", "could not read --token-file : No such file or directory\n")
    assert run(capsys, "join", "--token-file", str(tmp_path), "x:1") == (
        1, "", f"could not read --token-file {tmp_path}: Is a directory\n")
