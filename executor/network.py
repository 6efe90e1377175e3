"""The network driver: a Linux bridge per Forge network, a network namespace per workload.

A Forge network is a bridge on the host that holds the network's gateway address, so the host
reaches every workload on it directly. A workload gets a network namespace at
`/var/run/netns/<name>` (the path runc joins) and, for each network it is attached to, a veth
pair: the host end is a port of that network's bridge, the peer is created directly inside the
namespace as `eth<i>`.

Every name is derived from the project id and the Forge name through sha256, so two projects on
one host never collide and the driver can find what it made without keeping state of its own.
Links made here also carry an alias `forge:<project id>:...` (shown by `ip link`), which is how
`list_owned` finds them and how the driver refuses to touch a link it did not make.

pyroute2 is imported inside functions: importing it costs about 0.3 s.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from executor.errors import ExecutorError

log = logging.getLogger(__name__)

NETNS_DIR = "/var/run/netns"
BRIDGE_PREFIX = "fgb"
VETH_PREFIX = "fgv"
# A workload on more networks than this is almost certainly a mistake, and the bound lets
# `detach` find host veth ends by name even when their alias was never written.
MAX_ATTACHMENTS = 16

_IFNAMSIZ = 15  # the kernel's limit on an interface name, without the trailing NUL
_IFALIASZ = 255  # the kernel's limit on an interface alias, without the trailing NUL
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


class NetworkError(ExecutorError):
    """A Forge network or a workload's attachment could not be made, repaired or removed."""

    def __init__(
        self,
        message: str,
        *,
        project_id: str | None = None,
        network: str | None = None,
        workload: str | None = None,
    ) -> None:
        super().__init__(message)
        self.project_id = project_id
        self.network = network
        self.workload = workload


@dataclass(frozen=True)
class Attachment:
    """One network a workload joins: its address with prefix length, and the gateway."""

    network: str
    address: str
    gateway: str


# --- names ------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    # NUL cannot occur in any part, so ("a", "bc") and ("ab", "c") never share a digest.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _check_project_id(project_id: str) -> None:
    # The id ends up in a file name under /var/run/netns and in aliases split on ":".
    if not _PROJECT_ID.fullmatch(project_id):
        raise NetworkError(
            f"project id {project_id!r} is not usable in network names: use 1 to 32 letters,"
            " digits, '_', '.' or '-', starting with a letter or digit",
            project_id=project_id,
        )


def _check_name(kind: str, name: str, project_id: str) -> None:
    if not name or "\0" in name:
        raise NetworkError(
            f"{kind} name {name!r} of project {project_id} is empty or holds a NUL byte",
            project_id=project_id,
        )


def bridge_name(project_id: str, network: str) -> str:
    """The Linux bridge of Forge network `network`: "fgb" and 12 hex digits of sha256."""
    _check_project_id(project_id)
    _check_name("network", network, project_id)
    return BRIDGE_PREFIX + _digest(project_id, network)[: _IFNAMSIZ - len(BRIDGE_PREFIX)]


def netns_name(project_id: str, workload: str) -> str:
    """The network namespace of `workload`: "forge-<project id>-<10 hex of sha256(workload)>"."""
    _check_project_id(project_id)
    _check_name("workload", workload, project_id)
    return f"forge-{project_id}-{hashlib.sha256(workload.encode()).hexdigest()[:10]}"


def veth_name(project_id: str, workload: str, index: int) -> str:
    """The host end of the veth pair that is `eth<index>` inside `workload`'s namespace."""
    _check_project_id(project_id)
    _check_name("workload", workload, project_id)
    return VETH_PREFIX + _digest(project_id, workload, str(index))[: _IFNAMSIZ - len(VETH_PREFIX)]


def netns_path(project_id: str, workload: str) -> str:
    """Where the namespace of `workload` is mounted; runc joins it by this path."""
    return f"{NETNS_DIR}/{netns_name(project_id, workload)}"


def _bridge_alias(project_id: str, network: str) -> str:
    return f"forge:{project_id}:network:{network}"[:_IFALIASZ]


def _veth_alias(project_id: str, workload: str, index: int) -> str:
    return f"forge:{project_id}:veth:eth{index}:{workload}"[:_IFALIASZ]


def _owned_alias(alias: str | None, project_id: str) -> bool:
    # No alias means a crash came between creating the link and labelling it; the hashed name
    # is then the only mark, and it is specific enough to claim the link.
    return alias is None or alias.startswith(f"forge:{project_id}:")


# --- netlink helpers --------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    from pyroute2 import NetlinkError

    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (errno {exc.code})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} (errno {exc.errno})"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _netlink(project_id: str, **subject: str) -> Iterator[Any]:
    """An IPRoute of the host namespace; errors that escape become NetworkError."""
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetworkError:
        raise
    except Exception as exc:
        what = "".join(f"{k} {v} of " for k, v in subject.items())
        raise NetworkError(
            f"netlink request for {what}project {project_id} failed: {_reason(exc)}",
            project_id=project_id,
            **subject,
        ) from exc


def _link(ipr: Any, ifname: str) -> Any | None:
    """The link called `ifname` in the host namespace, or None."""
    indexes = ipr.link_lookup(ifname=ifname)
    return ipr.get_links(indexes[0])[0] if indexes else None


def _kind(link: Any) -> str | None:
    kind: str | None = link.get(("linkinfo", "kind"))
    return kind


def _owned_link(
    ipr: Any, ifname: str, kind: str, project_id: str, network: str | None = None
) -> Any | None:
    """The link `ifname` if this project made it; None if absent; NetworkError if foreign."""
    link = _link(ipr, ifname)
    if link is None:
        return None
    if _kind(link) != kind or not _owned_alias(link.get("ifalias"), project_id):
        raise NetworkError(
            f"link {ifname} exists but was not made by Forge for project {project_id}"
            f" (kind {_kind(link)}, alias {link.get('ifalias')!r}); refusing to touch it",
            project_id=project_id,
            network=network,
        )
    return link


def _delete_link(ipr: Any, index: int) -> None:
    from pyroute2 import NetlinkError

    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        # Gone already, e.g. a veth whose peer's namespace was just destroyed.
        if exc.code != 19:  # ENODEV
            raise


def _bridge_mac(project_id: str, network: str) -> str:
    # A bridge without a MAC of its own takes its lowest port's, which changes as workloads
    # come and go and makes every neighbour re-learn the gateway. 0x02: locally administered.
    octets = bytes.fromhex(_digest("mac", project_id, network)[:10])
    return ":".join(f"{b:02x}" for b in b"\x02" + octets)


# --- networks ---------------------------------------------------------------------------------


def _parse_network(
    project_id: str, network: str, subnet: str, gateway: str
) -> ipaddress.IPv4Interface:
    try:
        net = ipaddress.IPv4Network(subnet)
        gw = ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise NetworkError(
            f"network {network} of project {project_id}: bad subnet or gateway: {exc}",
            project_id=project_id,
            network=network,
        ) from exc
    hosts = range(int(net.network_address), int(net.broadcast_address) + 1)
    if net.prefixlen < 31:
        hosts = hosts[1:-1]
    if int(gw) not in hosts:
        raise NetworkError(
            f"network {network} of project {project_id}: gateway {gw} is not a host address"
            f" of subnet {net}",
            project_id=project_id,
            network=network,
        )
    return ipaddress.IPv4Interface(f"{gw}/{net.prefixlen}")


def ensure_network(project_id: str, network: str, subnet: str, gateway: str) -> str:
    """Make the bridge of `network` exist, hold `gateway` in `subnet` and be up; return its name."""
    name = bridge_name(project_id, network)
    want = _parse_network(project_id, network, subnet, gateway)
    started = time.monotonic()

    with _netlink(project_id, network=network) as ipr:
        link = _owned_link(ipr, name, "bridge", project_id, network)
        if link is None:
            link = _create_bridge(ipr, project_id, network, name)
        elif link.get("ifalias") is None:
            ipr.link("set", index=link["index"], ifalias=_bridge_alias(project_id, network))

        _converge_address(ipr, link["index"], want, project_id, network)
        ipr.link("set", index=link["index"], state="up")

    log.info(
        "network %s of project %s: bridge %s at %s ready in %.1f ms",
        network,
        project_id,
        name,
        want,
        (time.monotonic() - started) * 1000,
    )
    return name


def _create_bridge(ipr: Any, project_id: str, network: str, name: str) -> Any:
    from pyroute2 import NetlinkError

    try:
        ipr.link("add", ifname=name, kind="bridge", address=_bridge_mac(project_id, network))
    except NetlinkError as exc:
        if exc.code != 17:  # EEXIST: a concurrent ensure_network won the race; use its bridge
            raise
    link = _owned_link(ipr, name, "bridge", project_id, network)
    if link is None:
        raise NetworkError(
            f"network {network} of project {project_id}: bridge {name} vanished as it was made",
            project_id=project_id,
            network=network,
        )

    # The kernel ignores an alias given at creation, so the label is a second request.
    ipr.link("set", index=link["index"], ifalias=_bridge_alias(project_id, network))
    log.debug("network %s of project %s: created bridge %s", network, project_id, name)
    return link


def _converge_address(
    ipr: Any, index: int, want: ipaddress.IPv4Interface, project_id: str, network: str
) -> None:
    from pyroute2 import NetlinkError

    have = {
        ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
        for a in ipr.get_addr(index=index, family=socket.AF_INET)
    }
    # The bridge is Forge's own, so an address left from an earlier subnet is drift to undo:
    # it would keep routing that subnet to this bridge.
    for stale in have - {want}:
        log.warning(
            "network %s of project %s: removing stale address %s", network, project_id, stale
        )
        ipr.addr("del", index=index, address=str(stale.ip), prefixlen=stale.network.prefixlen)
    if want not in have:
        try:
            ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: added concurrently
                raise


def network_present(project_id: str, network: str) -> bool:
    """Whether the bridge of `network` exists (and was made by this project)."""
    name = bridge_name(project_id, network)
    with _netlink(project_id, network=network) as ipr:
        return _owned_link(ipr, name, "bridge", project_id, network) is not None


def remove_network(project_id: str, network: str) -> None:
    """Delete the bridge of `network` if it exists; a link Forge did not make is left alone."""
    name = bridge_name(project_id, network)
    with _netlink(project_id, network=network) as ipr:
        link = _owned_link(ipr, name, "bridge", project_id, network)
        if link is None:
            return
        _delete_link(ipr, link["index"])
    log.info("network %s of project %s: removed bridge %s", network, project_id, name)


# --- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Port:
    """An attachment resolved against the host: the bridge to join and the parsed address."""

    index: int
    network: str
    bridge_index: int
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address


def _parse_attachments(
    project_id: str, workload: str, attachments: list[Attachment]
) -> list[tuple[Attachment, ipaddress.IPv4Interface, ipaddress.IPv4Address]]:
    def fail(message: str, network: str | None = None) -> NetworkError:
        return NetworkError(
            f"attach {workload} of project {project_id}: {message}",
            project_id=project_id,
            workload=workload,
            network=network,
        )

    if len(attachments) > MAX_ATTACHMENTS:
        raise fail(f"{len(attachments)} networks, at most {MAX_ATTACHMENTS} are supported")
    networks = [a.network for a in attachments]
    if len(set(networks)) != len(networks):
        raise fail(f"a network appears twice in {networks}")

    parsed = []
    for att in attachments:
        try:
            if "/" not in att.address:
                raise ValueError(f"address {att.address!r} has no prefix length")
            address = ipaddress.IPv4Interface(att.address)
            gateway = ipaddress.IPv4Address(att.gateway)
        except ValueError as exc:
            raise fail(f"network {att.network}: {exc}", att.network) from exc
        if gateway not in address.network or gateway == address.ip:
            raise fail(
                f"network {att.network}: gateway {gateway} is not another host of {address}",
                att.network,
            )
        parsed.append((att, address, gateway))
    return parsed


def attach(project_id: str, workload: str, attachments: list[Attachment]) -> str:
    """Give `workload` a fresh network namespace joined to each network; return its path."""
    ns = netns_name(project_id, workload)
    parsed = _parse_attachments(project_id, workload, attachments)
    started = time.monotonic()

    with _netlink(project_id, workload=workload) as ipr:
        # Start from nothing so that a second attach gives the same result as the first. A
        # first attach (no namespace, no first veth: ports are made in order) has nothing to
        # remove, and skips the sixteen lookups of a full teardown.
        if os.path.lexists(f"{NETNS_DIR}/{ns}") or _link(ipr, veth_name(project_id, workload, 0)):
            _teardown(ipr, project_id, workload)
        ports = [
            _Port(i, att.network, _bridge_index(ipr, project_id, workload, att.network), addr, gw)
            for i, (att, addr, gw) in enumerate(parsed)
        ]
        try:
            _build_namespace(ipr, project_id, workload, ns, ports)
        except BaseException as exc:
            log.warning("attach of %s failed (%s: %s); undoing", workload, type(exc).__name__, exc)
            # Undo before raising so that a failed attach leaves no namespace and no veth. The
            # undo gets its own netlink socket: the failure may have left this one unusable.
            with _netlink(project_id, workload=workload) as fresh:
                clean = _undo(fresh, project_id, workload)
            if isinstance(exc, NetworkError) or not isinstance(exc, Exception):
                raise
            left = "nothing was left" if clean else "cleanup failed too, see the log"
            raise NetworkError(
                f"attach {workload} of project {project_id}: {_reason(exc)}; {left}",
                project_id=project_id,
                workload=workload,
            ) from exc

    log.info(
        "workload %s of project %s: netns %s on %s in %.1f ms",
        workload,
        project_id,
        ns,
        ", ".join(f"{p.network}={p.address}" for p in ports) or "no network",
        (time.monotonic() - started) * 1000,
    )
    return f"{NETNS_DIR}/{ns}"


def _undo(ipr: Any, project_id: str, workload: str) -> bool:
    """Tear down after a failed attach; whether that worked."""
    try:
        _teardown(ipr, project_id, workload)
        return True
    except Exception:
        # The error that made attach fail is the one to report; this one goes to the log.
        log.exception(
            "workload %s of project %s: cleanup after a failed attach", workload, project_id
        )
        return False


def _bridge_index(ipr: Any, project_id: str, workload: str, network: str) -> int:
    name = bridge_name(project_id, network)
    link = _owned_link(ipr, name, "bridge", project_id, network)
    if link is None:
        raise NetworkError(
            f"attach {workload} of project {project_id}: network {network} has no bridge"
            f" {name}; it must be created before workloads join it",
            project_id=project_id,
            network=network,
            workload=workload,
        )
    index: int = link["index"]
    return index


def _build_namespace(ipr: Any, project_id: str, workload: str, ns: str, ports: list[_Port]) -> None:
    from pyroute2 import IPRoute

    for port in ports:
        name = veth_name(project_id, workload, port.index)
        if _link(ipr, name) is not None:
            raise NetworkError(
                f"attach {workload} of project {project_id}: link {name} for network"
                f" {port.network} exists but was not made by Forge; refusing to touch it",
                project_id=project_id,
                network=port.network,
                workload=workload,
            )

    with IPRoute(fileno=_new_netns(ns)) as inner:
        inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
        for port in ports:
            _add_port(ipr, inner, project_id, workload, ns, port)
        if ports:
            inner.route("add", dst="default", gateway=str(ports[0].gateway))


_CLONE_NEWNET, _MS_BIND, _MS_REC, _MS_SHARED = 0x40000000, 4096, 16384, 1 << 20
_SHARED_DIR = threading.Lock()


def _new_netns(name: str) -> int:
    """Create the network namespace `name`, bound at NETNS_DIR/NAME as `ip netns add` binds it,
    and return a netlink socket inside it (its file descriptor).

    A thread of its own enters the new namespace (a namespace belongs to a thread, so nothing
    else in this process moves), binds it and opens the socket there, then ends. pyroute2 forks
    a child of this whole process for each of those two steps instead: with hundreds of
    services, those forks were most of an attach's cost (system time in page tables)."""
    libc = ctypes.CDLL(None, use_errno=True)
    path = f"{NETNS_DIR}/{name}"
    result: dict[str, Any] = {}

    def enter() -> None:
        try:
            if libc.unshare(_CLONE_NEWNET) != 0:
                raise _os_error("unshare(CLONE_NEWNET)")
            own = b"/proc/thread-self/ns/net"
            if libc.mount(own, path.encode(), b"none", _MS_BIND, None) != 0:
                raise _os_error(f"bind {name}")
            result["fd"] = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE
            ).detach()
        except BaseException as error:  # handed to the caller
            result["error"] = error

    _share_netns_dir(libc)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    thread = threading.Thread(target=enter, name=f"netns {name}")
    thread.start()
    thread.join()
    if "error" in result:
        with suppress(OSError):
            libc.umount2(path.encode(), 2)  # MNT_DETACH, if the bind happened
            os.unlink(path)
        raise result["error"]
    fd: int = result["fd"]
    return fd


def _share_netns_dir(libc: Any) -> None:
    """NETNS_DIR as iproute2 keeps it: a mount point of its own, shared, so that namespaces
    bound there are seen from other mount namespaces too."""
    with _SHARED_DIR:
        os.makedirs(NETNS_DIR, exist_ok=True)
        target = NETNS_DIR.encode()
        if libc.mount(b"", target, b"none", _MS_SHARED | _MS_REC, None) == 0:
            return
        if libc.mount(target, target, b"none", _MS_BIND | _MS_REC, None) != 0:
            raise _os_error(f"bind {NETNS_DIR}")
        if libc.mount(b"", target, b"none", _MS_SHARED | _MS_REC, None) != 0:
            raise _os_error(f"share {NETNS_DIR}")


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def _add_port(ipr: Any, inner: Any, project_id: str, workload: str, ns: str, port: _Port) -> None:
    host, peer = veth_name(project_id, workload, port.index), f"eth{port.index}"
    try:
        ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
        index = ipr.link_lookup(ifname=host)[0]
        ipr.link(
            "set",
            index=index,
            ifalias=_veth_alias(project_id, workload, port.index),
            master=port.bridge_index,
            state="up",
        )

        peer_index = inner.link_lookup(ifname=peer)[0]
        inner.addr(
            "add",
            index=peer_index,
            address=str(port.address.ip),
            prefixlen=port.address.network.prefixlen,
        )
        inner.link("set", index=peer_index, state="up")
        _forget_neighbour(ipr, port)
    except Exception as exc:
        raise NetworkError(
            f"attach {workload} of project {project_id} to network {port.network}"
            f" ({host} <-> {peer} at {port.address}): {_reason(exc)}",
            project_id=project_id,
            network=port.network,
            workload=workload,
        ) from exc


def _forget_neighbour(ipr: Any, port: _Port) -> None:
    """The host may still map this address to the MAC of a container that had it before (a
    replacement, a rollback): drop that entry, or the host keeps talking to the old MAC until
    the entry goes stale, seconds of timeouts."""
    from pyroute2.netlink.exceptions import NetlinkError

    with suppress(NetlinkError):
        ipr.neigh("del", dst=str(port.address.ip), ifindex=port.bridge_index)


def detach(project_id: str, workload: str) -> None:
    """Remove `workload`'s network namespace and the host ends of its veth pairs, if present."""
    with _netlink(project_id, workload=workload) as ipr:
        removed = _teardown(ipr, project_id, workload)
    if removed:
        log.info("workload %s of project %s: removed %s", workload, project_id, ", ".join(removed))


def _teardown(ipr: Any, project_id: str, workload: str) -> list[str]:
    from pyroute2 import netns

    removed = []
    # Host ends first: deleting one deletes its peer at once, whereas a namespace with no
    # process left in it is destroyed by the kernel later, veths included.
    for index in range(MAX_ATTACHMENTS):
        name = veth_name(project_id, workload, index)
        link = _link(ipr, name)
        if link is None:
            break  # ports are made in order, 0 first: one that is missing ends them
        if _kind(link) == "veth":
            if not _owned_alias(link.get("ifalias"), project_id):
                continue
            _delete_link(ipr, link["index"])
            removed.append(name)

    ns = netns_name(project_id, workload)
    if os.path.lexists(f"{NETNS_DIR}/{ns}"):
        with suppress(FileNotFoundError):  # removed concurrently
            netns.remove(ns)
        removed.append(f"netns {ns}")
    return removed


# --- inventory --------------------------------------------------------------------------------


def list_owned(project_id: str) -> dict[str, list[str]]:
    """The bridges, host veths and namespaces on this host that belong to `project_id`."""
    _check_project_id(project_id)
    owned: dict[str, list[str]] = {"bridges": [], "veths": [], "netns": []}
    tag = f"forge:{project_id}:"

    with _netlink(project_id) as ipr:
        for link in ipr.get_links():
            alias, name = link.get("ifalias"), link.get("ifname")
            if alias is None or not alias.startswith(tag):
                continue
            if _kind(link) == "bridge" and name.startswith(BRIDGE_PREFIX):
                owned["bridges"].append(name)
            elif _kind(link) == "veth" and name.startswith(VETH_PREFIX):
                owned["veths"].append(name)

    pattern = re.compile(rf"forge-{re.escape(project_id)}-[0-9a-f]{{10}}")
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        entries = []
    owned["netns"] = [e for e in entries if pattern.fullmatch(e)]

    return {kind: sorted(names) for kind, names in owned.items()}


def foreign_routes(project_id: str) -> list[tuple[str, str]]:
    """IPv4 prefixes the host already routes on links this project does not own.

    Each is (CIDR, device name). A Forge network whose subnet overlaps one of them would take
    traffic from another project's bridge, or from the host's own interfaces.
    """
    _check_project_id(project_id)
    tag = f"forge:{project_id}:"
    found: list[tuple[str, str]] = []
    with _netlink(project_id) as ipr:
        names = {
            link["index"]: (link.get("ifname"), link.get("ifalias")) for link in ipr.get_links()
        }
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            dst, length = route.get("dst"), route["dst_len"]
            if dst is None or length == 0:
                continue  # the default route overlaps everything and is nobody's subnet
            name, alias = names.get(route.get("oif"), (None, None))
            if alias is not None and alias.startswith(tag):
                continue
            found.append((f"{dst}/{length}", name or "?"))
        for address in ipr.get_addr(family=socket.AF_INET):
            name, alias = names.get(address["index"], (None, None))
            if alias is not None and alias.startswith(tag):
                continue
            found.append((f"{address.get('address')}/32", name or "?"))
    return sorted(set(found))
