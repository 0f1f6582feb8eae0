"""Placement constraints: swarmkit's parser, its error texts byte for byte, and matching."""

from __future__ import annotations

import pytest

from swarmd.manager.scheduler.constraints import Constraint, ConstraintError, node_matches, parse
from tests.servicelib import node


@pytest.mark.parametrize("expr, error", [
    ("", "constraint expected one operator from ==, !="),
    (" ", "constraint expected one operator from ==, !="),
    ("nodeabc", "constraint expected one operator from ==, !="),
    ("node ~ abc", "constraint expected one operator from ==, !="),
    ("node.labels.zone=x", "constraint expected one operator from ==, !="),
    ("node.role", "constraint expected one operator from ==, !="),
    ("1node==a2", "key '1node' is invalid"),
    ("no de== node1", "key 'no de' is invalid"),
    ("no*de==node1", "key 'no*de' is invalid"),
    ("==node1", "key '' is invalid"),
    ("a==b", "key 'a' is invalid"),                       # a key has two characters at least
    ("no$de==node1", "key 'no$de' is invalid"),
    ("node==", "value '' is invalid"),
    ("node== ", "value '' is invalid"),
    ("node==a!=b", "value 'a!=b' is invalid"),            # split at the first operator found
    ("node==a>b", "value 'a>b' is invalid"),
    ("node==x\u00e9", "value 'x\u00e9' is invalid"),
    ("node\u0131==x", "key 'node\u0131' is invalid"),     # Go's (?i)[a-z] has no dotless i
])
def test_parse_errors_are_swarmkits_texts(expr: str, error: str) -> None:
    with pytest.raises(ConstraintError) as e:
        parse([expr])
    assert str(e.value) == error


def test_the_first_bad_constraint_of_a_list_is_reported() -> None:
    with pytest.raises(ConstraintError, match="^key '1x' is invalid$"):
        parse(["node.role==manager", "1x==y", "nope"])


@pytest.mark.parametrize("expr, parsed", [
    (" node == node1", Constraint("node", "==", "node1")),
    ("NoDe==node1", Constraint("NoDe", "==", "node1")),
    ("no.de==node1", Constraint("no.de", "==", "node1")),
    ("_node==_node1", Constraint("_node", "==", "_node1")),
    ("node==[a-b]+c*(n|b)/", Constraint("node", "==", "[a-b]+c*(n|b)/")),
    ("node==node 1", Constraint("node", "==", "node 1")),
    ("node.labels.zone!=x", Constraint("node.labels.zone", "!=", "x")),
    ("foo==bar", Constraint("foo", "==", "bar")),                        # accepted, matches nothing
    ("node.\u212aey==v\u017f", Constraint("node.\u212aey", "==", "v\u017f")),  # Go folds K and s
    ("key\x1c==v", None),                                                # Go does not trim U+001C
    ("node==x\n", Constraint("node", "==", "x")),                         # but trims a newline
])
def test_what_parses(expr: str, parsed: Constraint | None) -> None:
    if parsed is None:
        with pytest.raises(ConstraintError):
            parse([expr])
    else:
        assert parse([expr]) == [parsed]


def test_values_match_in_any_case_and_operators_negate() -> None:
    eq, ne = parse(["node.name==foo", "node.name!=foo"])
    assert eq.match("foo") and eq.match("FOO") and not eq.match("fo") and not eq.match("fooE")
    assert not ne.match("foo") and ne.match("bar") and ne.match("fooExtra")
    (star,) = parse(["node.name==f*o"])
    assert star.match("F*o") and not star.match("foo") and star.match("foo", "f*o", "bar")
    (kelvin,) = parse(["node.name==k"])
    assert kelvin.match("\u212a") and not parse(["node.name==i"])[0].match("\u0131")


WORKER = node("w1", hostname="Host-1", labels={"zone": "a", "Disk": "ssd"}, engine_labels={"gpu": "yes"},
              addr="10.1.2.3")


@pytest.mark.parametrize("expr, matches", [
    ("node.id==w1", True), ("NODE.ID==W1", True), ("node.id!=w1", False),
    ("node.hostname==host-1", True), ("node.hostname!=other", True),
    ("node.role==worker", True), ("node.role==manager", False), ("node.role!=manager", True),
    ("node.role==boss", False),
    ("node.platform.os==linux", True), ("node.platform.arch==x86_64", True), ("node.platform.arch==arm64", False),
    ("node.labels.zone==a", True), ("node.labels.zone==A", True), ("node.labels.zone!=a", False),
    ("node.labels.zone==x", False), ("node.labels.ZONE==a", False),       # label names are exact
    ("NODE.LABELS.Disk==ssd", True), ("node.labels.missing!=x", True), ("node.labels.missing==x", False),
    ("engine.labels.gpu==yes", True), ("engine.labels.gpu==no", False),
    ("node.ip==10.1.2.3", True), ("node.ip!=10.1.2.3", False), ("node.ip==10.1.0.0/16", True),
    ("node.ip!=10.2.0.0/16", True), ("node.ip==::ffff:10.1.2.3", True), ("node.ip==bogus", False),
    ("node.ip!=bogus", False),
    ("foo==bar", False), ("node.foo==1", False), ("foo!=bar", False),     # unknown keys match no node
    ("node.label\u017f.zone==a", False),                                   # Go slices the prefix's bytes
])
def test_a_constraint_against_a_node(expr: str, matches: bool) -> None:
    assert node_matches(parse([expr]), WORKER) is matches


def test_a_node_without_a_description_matches_as_if_its_fields_were_empty() -> None:
    bare = {"id": "n", "role": "worker"}
    assert node_matches(parse(["node.hostname!=x", "node.platform.os!=linux", "engine.labels.a!=b"]), bare)
    assert not node_matches(parse(["node.hostname==x"]), bare)


def test_every_constraint_must_hold() -> None:
    assert node_matches(parse(["node.role==worker", "node.labels.zone==a"]), WORKER)
    assert not node_matches(parse(["node.role==worker", "node.labels.zone==b"]), WORKER)
    assert node_matches([], WORKER)
