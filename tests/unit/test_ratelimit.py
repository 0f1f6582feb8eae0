"""Token buckets and the admission limits built on them (time is passed in, so no clock runs)."""

from __future__ import annotations

import grpc
import pytest

from swarmd.ca import admission
from swarmd.errors import SwarmError
from swarmd.ratelimit import Buckets, Limit, TokenBucket, source_of


def test_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(Limit(burst=3, per_second=0.5), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == pytest.approx(2.0)
    assert not bucket.take(1.9)
    assert bucket.take(2.0)
    assert not bucket.take(2.0)
    # Refilled to the burst and no further, however long it was idle.
    assert bucket.available(1000.0) == 3
    assert bucket.full(1000.0)


def test_bucket_does_not_refill_when_time_goes_back() -> None:
    bucket = TokenBucket(Limit(burst=1, per_second=1), now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.take(11.0)


def test_a_bucket_without_rate_never_refills() -> None:
    bucket = TokenBucket(Limit(burst=1, per_second=0), now=0.0)
    assert bucket.take(0.0) and not bucket.take(10**9)
    assert bucket.wait(0.0) == float("inf")


def test_give_back_undoes_a_take() -> None:
    bucket = TokenBucket(Limit(burst=1, per_second=0), now=0.0)
    assert bucket.take(0.0)
    bucket.give_back()
    bucket.give_back()  # never above the burst
    assert bucket.take(0.0) and not bucket.take(0.0)


def test_buckets_are_per_key_and_bounded() -> None:
    buckets = Buckets(Limit(burst=1, per_second=0.001), max_keys=3)
    assert buckets.take("a", 0.0) and not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    for i in range(100):
        buckets.take(f"other-{i}", 0.0)
    assert len(buckets) == 3
    # "a" was evicted (least recently used): it starts afresh, which only ever admits sooner.
    assert buckets.take("a", 0.0)


def test_full_buckets_go_first_when_room_is_needed() -> None:
    buckets = Buckets(Limit(burst=1, per_second=1), max_keys=2)
    assert buckets.take("busy", 0.0)
    assert buckets.take("idle", 0.0)
    assert buckets.take("busy", 0.9) is False  # busy is the most recently used, still empty
    # At t=5 "idle" and "busy" are both full again: both are dropped, nothing is refused.
    assert buckets.take("new", 5.0)
    assert len(buckets) == 1


def test_admission_refuses_with_the_limit_that_was_hit() -> None:
    limiter = admission.AdmissionLimiter(per_token=Limit(burst=2, per_second=0.01),
                                         per_source=Limit(burst=3, per_second=0.01))
    limiter.admit("tok", "10.0.0.1", now=0.0)
    limiter.admit("tok", "10.0.0.2", now=0.0)
    with pytest.raises(SwarmError) as exc:
        limiter.admit("tok", "10.0.0.3", now=0.0)
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert exc.value.message == ("rpc error: code = ResourceExhausted desc = join token exceeded rate limit count "
                                 "of admissions; retry in 100s")
    # The refused join did not use the source's allowance: 10.0.0.3 still has its three.
    for token in ("rotated", "other", "another"):
        limiter.admit(token, "10.0.0.3", now=0.0)
    with pytest.raises(SwarmError) as exc:
        limiter.admit("yet-another", "10.0.0.3", now=0.0)
    assert exc.value.message == ("rpc error: code = ResourceExhausted desc = source 10.0.0.3 exceeded rate limit "
                                 "count of admissions; retry in 100s")


@pytest.mark.parametrize(("ip", "key"), [
    ("10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("::1", "::/64"),
    ("unix:", "unix:"),
])
def test_sources_are_addresses_and_ipv6_slash_64s(ip: str, key: str) -> None:
    assert source_of(ip) == key


@pytest.mark.parametrize(("text", "token", "source"), [
    (None, admission.PER_TOKEN, admission.PER_SOURCE),
    ("", admission.PER_TOKEN, admission.PER_SOURCE),
    ("token:5:0.5", Limit(5, 0.5), admission.PER_SOURCE),
    ("source:3:0, token:7:1", Limit(7, 1), Limit(3, 0)),
    ("token:0:1", admission.PER_TOKEN, admission.PER_SOURCE),       # a burst below one admits nobody
    ("token:5:-1", admission.PER_TOKEN, admission.PER_SOURCE),
    ("token:inf:1", admission.PER_TOKEN, admission.PER_SOURCE),
    ("tokens:5:1", admission.PER_TOKEN, admission.PER_SOURCE),
    ("token:5", admission.PER_TOKEN, admission.PER_SOURCE),
    ("token:5:1,garbage", admission.PER_TOKEN, admission.PER_SOURCE),
])
def test_limits_from_the_environment(text: str | None, token: Limit, source: Limit) -> None:
    assert admission.limits_from(text) == (token, source)
