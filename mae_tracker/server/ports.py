"""Can a server listen on ``host:port``? Asked before starting one, so that a busy port is said
in one line instead of a child process's exit code."""

from __future__ import annotations

import errno
import socket


def port_in_use(host: str, port: int) -> str:
    """Why a server cannot listen on ``host:port`` ('' when it can). Tried the way servers bind
    (SO_REUSEADDR), so a port whose last connection is in TIME_WAIT counts as free."""
    name = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"cannot resolve --host {host}: {err.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use (another server listens there): choose another with --port"
            if err.errno == errno.EACCES:
                return f"port {port} on {host} needs root privileges: choose one above 1023 with --port"
            return f"cannot listen on {host}:{port}: {err.strerror}"
    return ""
