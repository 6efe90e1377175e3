"""The network driver against the real kernel: bridges, namespaces, veth pairs and packets.

Each test works in a project of its own ("t" + random hex) on /24s from 10.213.200.0 to
10.213.220.0 that no host route uses yet. The `project` fixture tears down through the driver
what the test made, checks that `list_owned` is then empty, and removes any leftover with the
`ip` command so that a failing test never leaves a link or namespace behind.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from executor import network as net
from executor.network import Attachment, NetworkError
from tests.conftest import needs

pytestmark = needs("ip", "ping")

POOL = [ipaddress.IPv4Network(f"10.213.{octet}.0/24") for octet in range(200, 221)]


def ip(*args: str, check: bool = True) -> str:
    """Run iproute2's `ip` and return its output."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def pings(address: str, netns: str | None = None) -> bool:
    """Whether `address` answers a ping, from the host or from inside `netns`."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    # A few tries: the first echo may wait on ARP while a shared CI host is busy.
    for _ in range(3):
        done = subprocess.run([*prefix, "ping", "-c1", "-W1", address], capture_output=True)
        if done.returncode == 0:
            return True
    return False


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """`count` subnets of the test pool that no route on the host covers yet."""
    routed = ip("-4", "route", "show", "table", "all")
    free = [s for s in POOL if str(s) not in routed and str(s.network_address) not in routed]
    if len(free) < count:
        pytest.skip(f"only {len(free)} of the test subnets 10.213.200-220.0/24 are free")
    return random.sample(free, count)


@dataclass
class Project:
    """A throwaway project id and what a test made in it, for the fixture to undo."""

    id: str
    networks: set[str] = field(default_factory=set)
    workloads: set[str] = field(default_factory=set)

    def network(self, name: str, subnet: ipaddress.IPv4Network) -> str:
        """Create a network whose gateway is the subnet's first host."""
        self.networks.add(name)
        return net.ensure_network(self.id, name, str(subnet), str(gateway(subnet)))

    def attach(self, workload: str, *attachments: Attachment) -> str:
        """Attach a workload and remember it for teardown."""
        self.workloads.add(workload)
        return net.attach(self.id, workload, list(attachments))


def gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first host of `subnet`, where the tests put the bridge."""
    return subnet.network_address + 1


def on(network: str, subnet: ipaddress.IPv4Network, host: int) -> Attachment:
    """An attachment to `network` at host number `host` of `subnet`."""
    address = subnet.network_address + host
    return Attachment(network, f"{address}/{subnet.prefixlen}", str(gateway(subnet)))


def nothing_owned() -> dict[str, list[str]]:
    """What `list_owned` returns for a project with nothing on the host."""
    return {"bridges": [], "veths": [], "netns": []}


def force_remove(owned: dict[str, list[str]]) -> None:
    """Remove leftovers with iproute2, independently of the driver under test."""
    for name in owned["veths"] + owned["bridges"]:
        ip("link", "del", name, check=False)
    for name in owned["netns"]:
        ip("netns", "del", name, check=False)


@pytest.fixture
def project() -> Iterator[Project]:
    """A fresh project; afterwards the driver's own teardown must leave nothing behind."""
    p = Project(id="t" + secrets.token_hex(4))
    try:
        yield p
    finally:
        try:
            for workload in p.workloads:
                net.detach(p.id, workload)
            for name in p.networks:
                net.remove_network(p.id, name)
        finally:
            leftovers = net.list_owned(p.id)
            force_remove(leftovers)
        assert leftovers == nothing_owned(), "the driver's teardown leaked"


def test_two_workloads_reach_each_other_and_the_host(project: Project) -> None:
    """Two workloads on one network ping each other, and the host pings them via the bridge."""
    (subnet,) = free_subnets(1)
    bridge = project.network("backend", subnet)
    web = project.attach("service.web[0]", on("backend", subnet, 2))
    db = project.attach("service.db[0]", on("backend", subnet, 3))

    assert web == f"/var/run/netns/{net.netns_name(project.id, 'service.web[0]')}"
    assert f"{gateway(subnet)}/24" in ip("-4", "-o", "addr", "show", "dev", bridge)
    web_ns, db_ns = web.rsplit("/", 1)[1], db.rsplit("/", 1)[1]
    assert f"{subnet.network_address + 2}/24" in ip("-n", web_ns, "-o", "addr", "show", "eth0")
    assert f"default via {gateway(subnet)} dev eth0" in ip("-n", web_ns, "route")
    assert ",UP" in ip("-n", web_ns, "link", "show", "lo")

    assert pings(str(subnet.network_address + 3), netns=web_ns)
    assert pings(str(subnet.network_address + 2), netns=db_ns)
    assert pings(str(gateway(subnet)), netns=web_ns)
    assert pings(str(subnet.network_address + 2))

    owned = net.list_owned(project.id)
    assert owned["bridges"] == [bridge]
    assert sorted(owned["netns"]) == sorted([web_ns, db_ns])
    assert len(owned["veths"]) == 2
    assert all(f"master {bridge}" in ip("link", "show", v) for v in owned["veths"])


def test_workload_on_two_networks_routes_by_default_through_the_first(project: Project) -> None:
    """A workload on two networks gets eth0 and eth1 in attachment order, default via eth0."""
    front, back = free_subnets(2)
    project.network("front", front)
    project.network("back", back)
    path = project.attach("service.api[0]", on("front", front, 10), on("back", back, 20))
    ns = path.rsplit("/", 1)[1]

    assert f"{front.network_address + 10}/24" in ip("-n", ns, "-o", "addr", "show", "eth0")
    assert f"{back.network_address + 20}/24" in ip("-n", ns, "-o", "addr", "show", "eth1")
    assert f"default via {gateway(front)} dev eth0" in ip("-n", ns, "route")
    assert pings(str(front.network_address + 10))
    assert pings(str(back.network_address + 20))


def test_ensure_network_is_idempotent_and_repairs_drift(project: Project) -> None:
    """ensure_network twice changes nothing; a deleted address comes back, a stale one goes."""
    subnet, other = free_subnets(2)
    first = project.network("backend", subnet)
    assert project.network("backend", subnet) == first
    assert net.network_present(project.id, "backend")
    want = f"{gateway(subnet)}/24"
    assert ip("-4", "-o", "addr", "show", "dev", first).count("inet ") == 1

    ip("addr", "del", want, "dev", first)
    ip("addr", "add", f"{gateway(other)}/24", "dev", first)
    ip("link", "set", first, "down")
    assert project.network("backend", subnet) == first

    addresses = ip("-4", "-o", "addr", "show", "dev", first)
    assert want in addresses
    assert str(gateway(other)) not in addresses
    assert ",UP" in ip("link", "show", first)


def test_attach_twice_recreates_the_same_namespace(project: Project) -> None:
    """A second attach of the same workload replaces the first and leaves one veth per network."""
    (subnet,) = free_subnets(1)
    project.network("backend", subnet)
    first = project.attach("service.web[0]", on("backend", subnet, 2))
    second = project.attach("service.web[0]", on("backend", subnet, 4))

    assert first == second
    owned = net.list_owned(project.id)
    assert len(owned["netns"]) == 1
    assert len(owned["veths"]) == 1
    ns = second.rsplit("/", 1)[1]
    assert f"{subnet.network_address + 4}/24" in ip("-n", ns, "-o", "addr", "show", "eth0")
    assert pings(str(subnet.network_address + 4))


def test_attach_to_a_missing_network_leaves_nothing(project: Project) -> None:
    """Attaching to a network whose bridge does not exist raises and makes nothing."""
    (subnet,) = free_subnets(1)
    with pytest.raises(NetworkError, match="network ghost has no bridge") as caught:
        project.attach("service.web[0]", on("ghost", subnet, 2))

    assert caught.value.workload == "service.web[0]"
    assert caught.value.network == "ghost"
    assert net.list_owned(project.id) == nothing_owned()


def test_attach_failing_midway_removes_what_it_made(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the kernel refuses the second veth, the namespace and the first veth are removed."""
    front, back = free_subnets(2)
    project.network("front", front)
    back_bridge = project.network("back", back)
    real_add_port = net._add_port
    seen: list[dict[str, list[str]]] = []

    def network_vanishes(ipr: Any, inner: Any, pid: str, workload: str, ns: str, port: Any) -> None:
        # The "back" bridge disappears between attach's checks and its use, as if another
        # process destroyed the network: the kernel then fails the enslave for real.
        if port.index == 1:
            seen.append(net.list_owned(pid))
            ip("link", "del", back_bridge)
        real_add_port(ipr, inner, pid, workload, ns, port)

    monkeypatch.setattr(net, "_add_port", network_vanishes)
    with pytest.raises(NetworkError, match="to network back") as caught:
        project.attach("service.api[0]", on("front", front, 2), on("back", back, 2))

    assert caught.value.network == "back"
    assert "errno" in str(caught.value)
    assert len(seen[0]["netns"]) == 1 and len(seen[0]["veths"]) == 1, "the failure was not midway"
    owned = net.list_owned(project.id)
    assert owned["netns"] == [] and owned["veths"] == []


def test_remove_network_and_detach_are_idempotent(project: Project) -> None:
    """Removing a network or detaching a workload twice, or before it ever existed, is fine."""
    (subnet,) = free_subnets(1)
    net.remove_network(project.id, "never")
    net.detach(project.id, "service.never[0]")

    project.network("backend", subnet)
    project.attach("service.web[0]", on("backend", subnet, 2))
    for _ in range(2):
        net.detach(project.id, "service.web[0]")
        assert net.list_owned(project.id)["netns"] == []
        assert net.list_owned(project.id)["veths"] == []
    for _ in range(2):
        net.remove_network(project.id, "backend")
        assert not net.network_present(project.id, "backend")

    assert net.list_owned(project.id) == nothing_owned()


def test_detach_removes_the_host_veth_of_a_vanished_namespace(project: Project) -> None:
    """If the namespace was deleted behind Forge's back, detach still removes the host veth."""
    (subnet,) = free_subnets(1)
    project.network("backend", subnet)
    path = project.attach("service.web[0]", on("backend", subnet, 2))
    veth = net.veth_name(project.id, "service.web[0]", 0)
    ns = path.rsplit("/", 1)[1]
    # Keep the namespace alive unnamed, as a running container would, so its veth survives.
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "30"])
    try:
        for _ in range(100):
            if ip("netns", "pids", ns).strip():
                break
            time.sleep(0.02)
        ip("netns", "del", ns)
        assert veth in ip("link", "show", veth)

        net.detach(project.id, "service.web[0]")
        assert ip("link", "show", veth, check=False) == ""
    finally:
        holder.kill()
        holder.wait()


def test_a_link_forge_did_not_make_is_never_touched(project: Project) -> None:
    """A foreign bridge holding a Forge bridge name makes ensure and remove fail, untouched."""
    (subnet,) = free_subnets(1)
    name = net.bridge_name(project.id, "backend")
    ip("link", "add", name, "type", "bridge")
    ip("link", "set", name, "alias", "made by someone else")
    try:
        with pytest.raises(NetworkError, match="not made by Forge"):
            net.ensure_network(project.id, "backend", str(subnet), str(gateway(subnet)))
        with pytest.raises(NetworkError, match="not made by Forge"):
            net.remove_network(project.id, "backend")
        assert name in ip("link", "show", name)
        assert str(gateway(subnet)) not in ip("addr", "show", name)
        assert net.list_owned(project.id) == nothing_owned()
    finally:
        ip("link", "del", name, check=False)


def test_a_reused_address_does_not_keep_the_old_containers_mac(project: Project) -> None:
    """The host's neighbour entry for an address (the MAC of whoever had it before) is dropped
    when a new workload takes the address, so the host does not talk to a MAC that is gone."""
    (subnet,) = free_subnets(1)
    bridge = project.network("backend", subnet)
    reused = str(subnet.network_address + 2)
    ip("neigh", "replace", reused, "lladdr", "02:00:00:00:00:99", "dev", bridge, "nud", "stale")
    assert "02:00:00:00:00:99" in ip("neigh", "show", reused, "dev", bridge)

    project.attach("service.web[0]", on("backend", subnet, 2))

    assert "02:00:00:00:00:99" not in ip("neigh", "show", reused, "dev", bridge)
