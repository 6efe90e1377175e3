"""The network driver's naming and input checks, which need neither root nor the kernel."""

from __future__ import annotations

import hashlib

import pytest

from executor import network as net
from executor.network import Attachment, NetworkError


def test_bridge_name_is_short_prefixed_and_deterministic() -> None:
    """A bridge name fits IFNAMSIZ, starts with "fgb" and is the same on every call."""
    name = net.bridge_name("a1b2c3d4", "backend")
    assert name == net.bridge_name("a1b2c3d4", "backend")
    assert name.startswith("fgb")
    assert len(name) <= 15
    assert all(c in "0123456789abcdef" for c in name[3:])


def test_bridge_name_differs_per_project_and_network() -> None:
    """Two projects, or two networks of one project, never share a bridge name."""
    names = {
        net.bridge_name(project, network)
        for project in ("a1b2c3d4", "e5f6a7b8")
        for network in ("backend", "frontend", "b", "a" * 200)
    }
    assert len(names) == 8


def test_bridge_name_separates_project_from_network() -> None:
    """Moving characters between project id and network name changes the bridge name."""
    assert net.bridge_name("ab", "c") != net.bridge_name("a", "bc")


def test_netns_name_is_project_and_workload_digest() -> None:
    """A namespace is "forge-<project id>-" and 10 hex digits of sha256 of the workload address."""
    digest = hashlib.sha256(b"service.web[0]").hexdigest()[:10]
    assert net.netns_name("a1b2c3d4", "service.web[0]") == f"forge-a1b2c3d4-{digest}"
    assert net.netns_path("a1b2c3d4", "service.web[0]") == f"/var/run/netns/forge-a1b2c3d4-{digest}"
    assert net.netns_name("a1b2c3d4", "service.web[1]") != net.netns_name(
        "a1b2c3d4", "service.web[0]"
    )


def test_veth_names_are_short_and_distinct_per_workload_and_index() -> None:
    """Host veth ends start with "fgv", fit IFNAMSIZ and differ per project, workload and index."""
    names = {
        net.veth_name(project, workload, index)
        for project in ("a1b2c3d4", "e5f6a7b8")
        for workload in ("service.web[0]", "service.web[1]")
        for index in range(net.MAX_ATTACHMENTS)
    }
    assert len(names) == 2 * 2 * net.MAX_ATTACHMENTS
    assert all(n.startswith("fgv") and len(n) <= 15 for n in names)


@pytest.mark.parametrize("project_id", ["", "a/b", "a:b", "-a", "x" * 33, "a b"])
def test_unusable_project_ids_are_refused(project_id: str) -> None:
    """A project id that cannot live in a file name or an alias raises NetworkError."""
    with pytest.raises(NetworkError, match="project id"):
        net.bridge_name(project_id, "backend")
    with pytest.raises(NetworkError, match="project id"):
        net.netns_name(project_id, "service.web[0]")


def test_empty_names_are_refused() -> None:
    """An empty network or workload name raises NetworkError instead of hashing to a name."""
    with pytest.raises(NetworkError, match="network name"):
        net.bridge_name("a1b2c3d4", "")
    with pytest.raises(NetworkError, match="workload name"):
        net.netns_name("a1b2c3d4", "")


@pytest.mark.parametrize(
    ("subnet", "gateway", "message"),
    [
        ("10.213.0.0/33", "10.213.0.1", "bad subnet"),
        ("10.213.0.1/24", "10.213.0.1", "bad subnet"),
        ("fd00::/64", "fd00::1", "bad subnet"),
        ("10.213.0.0/24", "10.213.1.1", "not a host address"),
        ("10.213.0.0/24", "10.213.0.0", "not a host address"),
        ("10.213.0.0/24", "10.213.0.255", "not a host address"),
    ],
)
def test_ensure_network_refuses_bad_subnets_before_touching_the_host(
    subnet: str, gateway: str, message: str
) -> None:
    """A malformed subnet or a gateway outside its hosts is reported with the network's name."""
    with pytest.raises(NetworkError, match=message) as caught:
        net.ensure_network("a1b2c3d4", "backend", subnet, gateway)
    assert "network backend" in str(caught.value)
    assert caught.value.network == "backend"


@pytest.mark.parametrize(
    ("attachments", "message"),
    [
        ([Attachment("backend", "10.213.0.2", "10.213.0.1")], "no prefix length"),
        ([Attachment("backend", "10.213.0.2/24", "10.213.1.1")], "not another host"),
        ([Attachment("backend", "10.213.0.1/24", "10.213.0.1")], "not another host"),
        ([Attachment("backend", "nonsense/24", "10.213.0.1")], "network backend"),
        (
            [
                Attachment("backend", "10.213.0.2/24", "10.213.0.1"),
                Attachment("backend", "10.213.0.3/24", "10.213.0.1"),
            ],
            "appears twice",
        ),
        ([Attachment(f"n{i}", "10.213.0.2/24", "10.213.0.1") for i in range(17)], "at most 16"),
    ],
)
def test_attach_refuses_bad_attachments_before_touching_the_host(
    attachments: list[Attachment], message: str
) -> None:
    """Malformed attachments raise NetworkError naming the workload, before any netlink call."""
    with pytest.raises(NetworkError, match=message) as caught:
        net.attach("a1b2c3d4", "service.web[0]", attachments)
    assert "attach service.web[0]" in str(caught.value)
    assert caught.value.workload == "service.web[0]"
