"""The privacy test's network guard, loaded by every Python process started with this
folder on PYTHONPATH (``sitecustomize`` is imported at start-up, worker processes
included).  An audit hook refuses every outbound connection, datagram and name
lookup that is not loopback or a Unix socket, and appends each attempt to
$CCI_NETGUARD_LOG, so that an attempt a library catches and hides still shows."""

import ipaddress
import os
import socket
import sys

_LOG = os.environ.get("CCI_NETGUARD_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%")[0].strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(event: str, target) -> None:
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {event} {target!r}\n")
    raise PermissionError(f"network guard: {event} to {target!r} refused (only loopback)")


def _hook(event: str, args) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", None):
            return
        if isinstance(address, tuple) and address and not _is_local(address[0]):
            _refuse(event, address)
    elif event == "socket.getaddrinfo":
        if not _is_local(args[0]):
            _refuse(event, args[0])
    elif event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        if not _is_local(args[0]):
            _refuse(event, args[0])


sys.addaudithook(_hook)
