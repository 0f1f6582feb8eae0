from __future__ import annotations

import pytest

from swarmd.manager.allocator import ipam


def test_first_fit_skips_used_and_larger_networks() -> None:
    assert ipam.allocate_subnet([], 24, []) == "10.0.0.0/24"
    assert ipam.allocate_subnet([], 24, ["10.0.0.0/24", "10.0.2.0/24"]) == "10.0.1.0/24"
    assert ipam.allocate_subnet([], 24, ["10.0.0.0/16"]) == "10.1.0.0/24"
    assert ipam.allocate_subnet(["10.20.0.0/16"], 26, ["10.20.0.0/26"]) == "10.20.0.64/26"


def test_pool_exhaustion() -> None:
    with pytest.raises(ipam.IPAMError, match="could not find an available"):
        ipam.allocate_subnet(["192.168.0.0/23"], 24, ["192.168.0.0/24", "192.168.1.0/24"])


def test_pool_validation_texts() -> None:
    assert ipam.validate_pool([], 0) == ([], 24)
    with pytest.raises(ipam.IPAMError, match="^subnet size is out of range: 30$"):
        ipam.validate_pool(["10.0.0.0/8"], 30)
    with pytest.raises(ipam.IPAMError, match='^invalid CIDR: "10.0.0.0/16". Subnet size is too small for pool: 8$'):
        ipam.validate_pool(["10.0.0.0/16"], 8)


def test_vxlan_ids_reuse_the_lowest_free() -> None:
    assert ipam.allocate_vxlan_id([]) == 4096
    assert ipam.allocate_vxlan_id([4096, 4098]) == 4097


@pytest.mark.parametrize("text, message", [("10.0.0/24", "invalid CIDR address: 10.0.0/24"),
                                           ("10.0.0.1", "invalid CIDR address: 10.0.0.1"),
                                           ("10.0.0.1/24", "invalid subnet 10.0.0.1/24: it should be 10.0.0.0/24")])
def test_subnet_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ipam.IPAMError) as exc:
        ipam.parse_cidr(text)
    assert str(exc.value) == message


def test_gateway_must_be_a_host_of_the_subnet() -> None:
    assert ipam.check_gateway("10.0.5.254", "10.0.5.0/24") == "10.0.5.254"
    for bad in ("10.0.6.1", "10.0.5.0", "10.0.5.255", "nope"):
        with pytest.raises(ipam.IPAMError):
            ipam.check_gateway(bad, "10.0.5.0/24")
