"""Property tests of every input parser: whatever text arrives, the answer is a value or the
module's own documented error, and values survive a round trip.

Hypothesis runs derandomized (the same examples on every run, so CI is stable) without a
deadline or an example database.
"""

from __future__ import annotations

import hashlib
import ipaddress
import string

import click
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from swarmctl import params
from swarmd import gostr, netaddr
from swarmd.ca import tokens
from swarmd.ca.ids import b36
from swarmd.manager.allocator import ipam
from swarmd.timeutil import format_go_duration, parse_go_duration

FAST = settings(derandomize=True, deadline=None, max_examples=300, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=60)

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
# Text a user can paste or a caller can send: every Unicode category, plus argv's
# surrogate-escaped bytes (what Python makes of a non-UTF-8 command line).
ANY_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from([chr(0xDC80 + i) for i in range(128)])),
)


def _one_line(message: str, *inputs: str) -> None:
    """A non-empty one-line message, unless an input that Docker echoes verbatim spans lines."""
    assert message, "an empty error"
    if not any("\n" in i or "\r" in i for i in inputs):
        assert "\n" not in message and "\r" not in message, repr(message)


# -- join tokens ---------------------------------------------------------------------------------

ROOTS = st.binary(min_size=1, max_size=2048)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-+_ "


def _near_tokens() -> st.SearchStrategy[str]:
    """Strings shaped like tokens (prefix, version, dash-separated parts), mostly wrong."""
    part = st.text(alphabet=TOKEN_ALPHABET, max_size=60)
    return st.builds(lambda prefix, version, parts: "-".join([prefix, version, *parts]),
                     st.sampled_from(["SWMTKN", "swmtkn", "SWMTKN ", ""]),
                     st.sampled_from(["1", "2", "0", "", "1 "]),
                     st.lists(part, max_size=4))


@FAST
@given(ROOTS, st.booleans())
def test_generated_tokens_parse_and_round_trip(root: bytes, fips: bool) -> None:
    token = tokens.generate_join_token(root, fips=fips)
    parsed = tokens.parse_join_token(token)
    assert parsed.digest_hex == tokens.root_digest_hex(root) == hashlib.sha256(root).hexdigest()
    assert (parsed.version, parsed.fips) == ((2, True) if fips else (1, False))
    assert len(parsed.secret) == tokens.MAX_GENERATED_SECRET_LENGTH and tokens.token_secret(token) == parsed.secret
    prefix = "SWMTKN-2-1-" if fips else "SWMTKN-1-"
    rebuilt = f"{prefix}{b36(int(parsed.digest_hex, 16)).rjust(50, '0')}-{parsed.secret}"
    assert rebuilt == token


@FAST
@given(st.one_of(ANY_TEXT, _near_tokens()))
def test_any_text_is_a_token_or_invalid_join_token(text: str) -> None:
    try:
        parsed = tokens.parse_join_token(text)
    except tokens.InvalidJoinToken as e:
        # Docker's fixed texts: nothing of the token (its secret) is echoed.
        assert str(e) in ("invalid join token", "invalid checksum digest length", "invalid checksum digest format")
        return
    assert len(parsed.digest_hex) == 64 and int(parsed.digest_hex, 16) < 1 << 256
    assert len(parsed.secret) == tokens.MAX_GENERATED_SECRET_LENGTH


@FAST
@given(ROOTS, st.data())
def test_a_token_with_one_character_changed_fails_to_match(root: bytes, data: st.DataObject) -> None:
    token = tokens.generate_join_token(root)
    original = tokens.parse_join_token(token)
    i = data.draw(st.integers(0, len(token) - 1), label="position")
    new = data.draw(st.characters(codec="utf-8").filter(lambda c: c != token[i]), label="character")
    mutated = token[:i] + new + token[i + 1:]
    try:
        parsed = tokens.parse_join_token(mutated)
    except tokens.InvalidJoinToken:
        return  # refused before any network call
    digest_start = len("SWMTKN-1-")
    secret_start = digest_start + tokens.BASE36_DIGEST_LEN + 1
    if i >= secret_start:
        # The digest still matches; the secret does not, so the token-bound TLS handshake fails.
        assert parsed.digest_hex == original.digest_hex and parsed.secret != original.secret
        return
    assert digest_start <= i < secret_start - 1, "prefix, version and separators are checked exactly"
    assert parsed.secret == original.secret
    # Go's base-36 reading ignores case and takes a sign: those two edits keep the digest.
    same_value = new.lower() == token[i] or (i == digest_start and new == "+" and token[i] == "0")
    assert (parsed.digest_hex == original.digest_hex) == same_value


# -- addresses ------------------------------------------------------------------------------------

V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).map(str)
PORTS = st.integers(0, 65535).map(str)
NAMES = st.sampled_from(["lo", "eth0", "eth1", "ens3", "veth1", "br0"])


def _go_ip(text: str) -> str:
    """An address as Go prints it: IPv4-mapped IPv6 is IPv4 (``To4``)."""
    ip = ipaddress.ip_address(text)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


@st.composite
def interfaces(draw: st.DrawFn) -> list[netaddr.Interface]:
    """A synthetic host: a few links with a few addresses each (IPv4 listed first, as netlink does)."""
    names = draw(st.lists(NAMES, unique=True, max_size=4))
    links = []
    for name in names:
        v4 = draw(st.lists(st.one_of(V4, st.sampled_from(["127.0.0.1", "10.0.0.5", "169.254.1.1"])), max_size=2))
        v6 = draw(st.lists(st.one_of(V6, st.sampled_from(["::1", "fe80::1", "fd00::5"])), max_size=2))
        links.append(netaddr.Interface(name=name, up=draw(st.booleans()), loopback=name == "lo",
                                       is_device=not name.startswith(("veth", "br")), addrs=tuple(v4 + v6)))
    return links


ADDR_TEXT = st.one_of(
    ANY_TEXT,
    st.builds(lambda h, p: f"{h}:{p}", st.one_of(V4, NAMES, st.just("")), st.one_of(PORTS, ANY_TEXT)),
    st.builds(lambda h, p: f"[{h}]:{p}", V6, PORTS),
    st.builds(lambda h, p: f"tcp://{h}:{p}", V4, PORTS),
    V6,
)


@FAST
@given(st.one_of(V4, V6), PORTS)
def test_join_and_split_host_port_round_trip(host: str, port: str) -> None:
    joined = netaddr.join_host_port(host, port)
    assert netaddr.split_host_port(joined) == (host, port)
    assert netaddr.host_of(joined) == host
    assert joined.startswith("[") == (":" in host)


@FAST
@given(ADDR_TEXT)
def test_split_host_port_raises_only_value_error(text: str) -> None:
    try:
        _host, port = netaddr.split_host_port(text)
    except ValueError as e:
        _one_line(str(e), text)
        return
    assert ":" not in port
    netaddr.host_of(text)  # never raises either


@FAST
@given(ADDR_TEXT)
def test_listen_flag_is_normalised_or_refused_with_docker_text(text: str) -> None:
    try:
        value = netaddr.normalize_listen_flag(text)
    except netaddr.ListenFlagError as e:
        _one_line(str(e))
        assert str(e).startswith('invalid argument "') and '" for "--listen-addr" flag: ' in str(e)
        return
    host, port = netaddr.split_host_port(value.split("/", 1)[0])
    assert port.isascii() and port.isdigit()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # Docker unescapes the host once ("%25" -> "%"), so only an IP survives twice
    assert netaddr.normalize_listen_flag(value) == value  # normalising twice changes nothing


@FAST
@given(ADDR_TEXT, interfaces())
def test_listen_advertise_and_data_path_resolve_or_raise_addr_error(text: str, links: list[netaddr.Interface]) -> None:
    def data_path() -> tuple[str, str]:
        return netaddr.resolve_data_path_addr(text, links), ""

    def listen() -> tuple[str, str]:
        return netaddr.resolve_listen_addr(text, links)

    def advertise() -> tuple[str, str]:
        return netaddr.resolve_advertise_addr(text, "2377", links)

    for resolve in (listen, advertise, data_path):
        try:
            ip, _port = resolve()
        except netaddr.AddrError as e:
            _one_line(str(e), text)
            continue
        if ip:
            assert ipaddress.ip_address(ip)  # always a literal IP, never a name
            assert "%" not in ip


@FAST
@given(interfaces())
def test_auto_detection_picks_a_global_unicast_address_of_an_up_link(links: list[netaddr.Interface]) -> None:
    try:
        chosen = netaddr.resolve_system_addr(links)
    except netaddr.AutoDetectError as e:
        _one_line(str(e))
        assert str(e).endswith(netaddr.ADVERTISE_HINT)
        return
    # Docker filters by address, not by link: a global address on lo counts (the first pass
    # takes every up device link, and IsGlobalUnicast already excludes 127/8 and ::1).
    owners = [i for i in links if i.up and chosen in {_go_ip(a) for a in i.addrs}]
    assert owners, f"{chosen} is not on an up link"
    ip = ipaddress.ip_address(chosen)
    assert not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


@FAST
@given(interfaces(), st.data())
def test_an_interface_name_resolves_to_its_only_address(links: list[netaddr.Interface], data: st.DataObject) -> None:
    assume(links)
    link = data.draw(st.sampled_from(links))
    v4 = [_go_ip(a) for a in link.addrs if "." in _go_ip(a)]
    v6 = [_go_ip(a) for a in link.addrs if ":" in _go_ip(a)]
    port = data.draw(PORTS)
    try:
        ip, got_port = netaddr.resolve_listen_addr(f"{link.name}:{port}", links)
    except netaddr.AddrError as e:
        assert len(v4) > 1 or len(v6) > 1 or not link.addrs, str(e)
        return
    assert got_port == port
    assert ip == (v4[0] if v4 else v6[0])


@FAST
@given(st.one_of(V4, V6, st.sampled_from(["0.0.0.0", "::"])), st.one_of(V4, V6, ANY_TEXT), interfaces())
def test_local_addr_is_an_address_or_dockers_error(listen: str, advertise: str, links: list[netaddr.Interface]) -> None:
    try:
        local = netaddr.local_addr(listen, advertise, links)
    except netaddr.AddrError as e:
        assert str(e) == netaddr.ERR_MUST_SPECIFY_LISTEN_ADDR
        return
    ipaddress.ip_address(local)


# -- durations --------------------------------------------------------------------------------------

DURATION_TEXT = st.one_of(
    ANY_TEXT,
    st.text(alphabet="0123456789.+-hmsuµμn", max_size=30),
    st.builds(lambda parts: "".join(f"{n}{u}" for n, u in parts),
              st.lists(st.tuples(st.one_of(st.integers(0, 10**20).map(str), st.decimals(0, 10**6, places=4).map(str)),
                                 st.sampled_from(["h", "m", "s", "ms", "us", "µs", "ns", "d", ""])), max_size=4)),
)


@FAST
@given(INT64)
def test_durations_round_trip(ns: int) -> None:
    text = format_go_duration(ns)
    assert parse_go_duration(text) == ns
    _one_line(text)


@FAST
@given(st.integers(0, 10**6), st.integers(0, 59), st.integers(0, 59))
def test_go_style_duration_texts(hours: int, minutes: int, seconds: int) -> None:
    ns = ((hours * 60 + minutes) * 60 + seconds) * 10**9
    assert parse_go_duration(f"{hours}h{minutes}m{seconds}s") == ns
    assert parse_go_duration(f"{hours * 60 + minutes}m{seconds}s") == ns
    if ns:
        assert format_go_duration(ns) == (f"{hours}h{minutes}m{seconds}s" if hours else
                                          f"{minutes}m{seconds}s" if minutes else f"{seconds}s")


@FAST
@given(DURATION_TEXT)
def test_any_text_is_a_duration_or_gos_error(text: str) -> None:
    try:
        ns = parse_go_duration(text)
    except ValueError as e:
        _one_line(str(e))
        assert str(e).startswith("time: ")
        return
    assert -(1 << 63) <= ns < 1 << 63
    assert text.strip() == text and text  # no whitespace trimming, nothing from nothing


# -- CIDRs, address pools, IPAM ---------------------------------------------------------------------

@st.composite
def pools(draw: st.DrawFn) -> tuple[list[str], int]:
    """Non-overlapping IPv4 pools of /20 to /26 and a subnet size that fits them all (at most
    256 subnets a pool, so the model below stays cheap)."""
    count = draw(st.integers(1, 3))
    nets: list[ipaddress.IPv4Network] = []
    for _ in range(count):
        prefix = draw(st.integers(20, 26))
        base = draw(st.integers(0, (1 << prefix) - 1)) << (32 - prefix)
        net = ipaddress.IPv4Network((base, prefix))
        if not any(net.overlaps(n) for n in nets):
            nets.append(net)
    size = draw(st.integers(max(n.prefixlen for n in nets), 28))
    return [str(n) for n in nets], size


Span = tuple[int, int]


def _span(cidr: str) -> Span:
    net = ipaddress.IPv4Network(cidr)
    return int(net.network_address), int(net.broadcast_address)


def _candidates(pool_list: list[str], size: int) -> list[Span]:
    """Every subnet of ``size`` in pool order: the allocator's first-fit order."""
    step = 1 << (32 - size)
    out: list[Span] = []
    for p in pool_list:
        first, last = _span(p)
        out.extend((a, a + step - 1) for a in range(first, last + 1, step))
    return out


def _lowest_free(candidates: list[Span], used: list[str]) -> Span:
    taken = [_span(u) for u in used]
    return next(c for c in candidates if not any(c[0] <= t[1] and t[0] <= c[1] for t in taken))


@SLOW
@given(pools(), st.data())
def test_allocations_are_first_fit_inside_the_pools_and_never_overlap(pool: tuple[list[str], int],
                                                                       data: st.DataObject) -> None:
    pool_list, size = pool
    validated, checked_size = ipam.validate_pool(pool_list, size)
    assert (validated, checked_size) == (pool_list, size)
    candidates = _candidates(pool_list, size)
    used: list[str] = []
    for _ in range(data.draw(st.integers(1, min(12, len(candidates))), label="allocations")):
        expected = _lowest_free(candidates, used)
        subnet = ipam.allocate_subnet(pool_list, size, used)
        net = ipaddress.IPv4Network(subnet)
        assert net.prefixlen == size and any(net.subnet_of(ipaddress.IPv4Network(p)) for p in pool_list)
        assert not any(net.overlaps(ipaddress.IPv4Network(u)) for u in used)
        assert _span(subnet) == expected  # first fit: nothing before it was free
        used.append(subnet)
        gateway = ipam.default_gateway(subnet)
        assert ipam.check_gateway(gateway, subnet) == gateway
    freed = data.draw(st.sampled_from(used), label="freed")
    used.remove(freed)
    again = ipam.allocate_subnet(pool_list, size, used)
    assert _span(again) == _lowest_free(candidates, used)
    if candidates.index(_span(freed)) <= candidates.index(_span(again)):
        assert again == freed  # a freed subnet is reused before anything after it


@SLOW
@given(pools(), st.data())
def test_first_fit_skips_subnets_in_use_of_any_size(pool: tuple[list[str], int], data: st.DataObject) -> None:
    """Subnets in use may be larger or smaller than the pool's size, inside or across pools,
    overlapping one another (a state written by hand): the pick is still the lowest free one."""
    pool_list, size = pool
    used = []
    for _ in range(data.draw(st.integers(0, 12), label="in use")):
        first, last = _span(data.draw(st.sampled_from(pool_list), label="near"))
        addr = data.draw(st.integers(first - 1024, last + 1024), label="address")
        prefix = data.draw(st.integers(18, 30), label="prefix")
        used.append(str(ipaddress.IPv4Network((max(0, addr), prefix), strict=False)))
    candidates = _candidates(pool_list, size)
    try:
        expected: Span | None = _lowest_free(candidates, used)
    except StopIteration:
        expected = None
    if expected is None:
        with pytest.raises(ipam.IPAMError, match="could not find an available"):
            ipam.allocate_subnet(pool_list, size, used)
    else:
        assert _span(ipam.allocate_subnet(pool_list, size, used)) == expected


@SLOW
@given(pools())
def test_a_full_pool_is_a_clear_error(pool: tuple[list[str], int]) -> None:
    pool_list, size = pool
    used = [str(ipaddress.IPv4Network((first, size))) for first, _ in _candidates(pool_list, size)]
    with pytest.raises(ipam.IPAMError, match="could not find an available"):
        ipam.allocate_subnet(pool_list, size, used)


@FAST
@given(st.one_of(ANY_TEXT, st.builds(lambda a, n: f"{a}/{n}", st.one_of(V4, V6), st.one_of(
    st.integers(-5, 140).map(str), ANY_TEXT, st.sampled_from(["255.255.0.0", "0.0.255.255", "٢٤", "24 "])))))
def test_cidr_text_is_a_network_or_ipam_error(text: str) -> None:
    try:
        net = ipam.parse_cidr(text)
    except ipam.IPAMError as e:
        _one_line(str(e), text)
        return
    assert isinstance(net, ipaddress.IPv4Network)
    prefix = text.strip().split("/", 1)[1]
    assert prefix.isascii() and prefix.isdigit() and int(prefix) == net.prefixlen
    assert str(net) == text.strip() or net == ipaddress.IPv4Network(text.strip())


@FAST
@given(st.lists(st.one_of(V4.map(lambda a: a + "/8"), ANY_TEXT, st.sampled_from(["10.0.0.0/8", "10.1.0.0/16"])),
                max_size=3),
       st.integers(0, (1 << 32) - 1))
def test_pool_validation_raises_only_ipam_error(pool_list: list[str], size: int) -> None:
    try:
        normalised, checked = ipam.validate_pool(pool_list, size)
    except ipam.IPAMError as e:
        _one_line(str(e), *pool_list)
        return
    assert 1 <= checked <= 29 and len(normalised) == len(pool_list)


@FAST
@given(st.one_of(ANY_TEXT, V4, V6), st.sampled_from(["10.0.0.0/24", "192.168.7.0/30", "10.9.0.0/16"]))
def test_gateway_text_is_a_usable_address_or_ipam_error(text: str, subnet: str) -> None:
    try:
        gateway = ipam.check_gateway(text, subnet)
    except ipam.IPAMError:
        return
    net = ipaddress.IPv4Network(subnet)
    ip = ipaddress.IPv4Address(gateway)
    assert ip in net and ip not in (net.network_address, net.broadcast_address)


@FAST
@given(st.sets(st.integers(ipam.VXLAN_ID_START, ipam.VXLAN_ID_START + 64), max_size=40))
def test_vxlan_ids_are_the_lowest_free(used: set[int]) -> None:
    vni = ipam.allocate_vxlan_id(used)
    assert vni not in used and all(v in used for v in range(ipam.VXLAN_ID_START, vni))


# -- the CLI's parameter types ----------------------------------------------------------------------

def _option(name: str, kind: click.ParamType[object]) -> click.Option:
    return click.Option([name], type=kind)


PARAM_TYPES = [
    ("--cert-expiry", params.DURATION),
    ("--data-path-port", params.UINT32),
    ("--max-snapshots", params.UINT64),
    ("--task-history-limit", params.INT),
    ("--listen-addr", params.NODE_ADDR),
    ("--default-addr-pool", params.IPNET_LIST),
]


@FAST
@given(st.sampled_from(PARAM_TYPES), st.one_of(ANY_TEXT, ADDR_TEXT, DURATION_TEXT,
                                               st.integers(-(1 << 70), 1 << 70).map(str)))
def test_param_types_convert_or_fail_with_one_pflag_line(flag: tuple[str, click.ParamType[object]],
                                                         text: str) -> None:
    name, kind = flag
    try:
        kind.convert(text, _option(name, kind), None)
    except params.FlagValueError as e:
        _one_line(e.text)
        assert e.text.startswith(f"invalid argument {gostr.quote(text)} for \"{name}\" flag: ")


@FAST
@given(st.integers(0, (1 << 32) - 1), st.sampled_from(["{}", "{:#x}", "{:#o}", "{:#b}", "0{:o}", "{:_}"]))
def test_uint32_takes_every_go_spelling_of_a_number(n: int, spelling: str) -> None:
    text = spelling.format(n)
    assume(not (spelling == "{:_}" and n < 1000))
    assert params.UINT32.convert(text, _option("--data-path-port", params.UINT32), None) == n


@FAST
@given(st.integers(1 << 32, 1 << 80))
def test_uint32_out_of_range(n: int) -> None:
    with pytest.raises(params.FlagValueError, match="value out of range$"):
        params.UINT32.convert(str(n), _option("--data-path-port", params.UINT32), None)


@FAST
@given(INT64)
def test_int_round_trips_and_refuses_beyond_int64(n: int) -> None:
    option = _option("--task-history-limit", params.INT)
    assert params.INT.convert(str(n), option, None) == n
    for beyond in (n + (1 << 64), n - (1 << 64)):
        with pytest.raises(params.FlagValueError, match="value out of range$"):
            params.INT.convert(str(beyond), option, None)


@FAST
@given(st.text(alphabet=string.digits + "_ +-xob٣²", max_size=12))
def test_numbers_match_pythons_reading_only_for_plain_ascii_decimals(text: str) -> None:
    option = _option("--task-history-limit", params.INT)
    plain = text.lstrip("+-")
    try:
        value = params.INT.convert(text, option, None)
    except params.FlagValueError:
        assert not (plain.isascii() and plain.isdigit() and not plain.startswith("0")) or abs(int(text)) >= 1 << 63
        return
    if plain.isascii() and plain.isdigit() and (not plain.startswith("0") or plain == "0"):
        assert value == int(text)


@FAST
@given(st.lists(st.one_of(V4, V6).flatmap(lambda a: st.integers(0, ipaddress.ip_address(a).max_prefixlen).map(
    lambda n: f"{a}/{n}")), min_size=1, max_size=4))
def test_addr_pool_flag_round_trips_a_list_of_cidrs(cidrs: list[str]) -> None:
    option = _option("--default-addr-pool", params.IPNET_LIST)
    assert params.IPNET_LIST.convert(",".join(cidrs), option, None) == cidrs
    assert params.IPNET_LIST.convert(" , ".join(f'"{c}"' for c in cidrs), option, None) == cidrs


@FAST
@given(INT64)
def test_duration_flag_takes_what_duration_default_prints(ns: int) -> None:
    assert params.DURATION.convert(params.duration_default(ns), _option("--cert-expiry", params.DURATION), None) == ns
