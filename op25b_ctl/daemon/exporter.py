"""The /metrics HTTP endpoint, started without a single name lookup.

`prometheus_client.start_http_server` binds through `http.server.HTTPServer.server_bind`,
which sets `server_name = socket.getfqdn(host)`: a reverse-DNS query for the bind address.
On a management address with an unreachable resolver that query blocks the daemon's loop
for the resolver's whole timeout (about 10 s with glibc's defaults) right after the start-up
sync, holding up READY and every store change (issue 17). Here the address must be an IP
literal (`parse_address`), the family comes from its text, and `server_name` is the address
itself; requests are not looked up either (`address_string` is the peer's address).
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app

# Names the daemon accepts without asking a resolver (no /etc/hosts, no DNS).
LOOPBACK_NAMES = {"localhost": "127.0.0.1", "ip6-localhost": "::1"}


def parse_address(text: str) -> tuple[str, int] | None:
    """`ADDR:PORT`, `[V6]:PORT` or `:PORT` (all addresses) -> (addr, port); `off` -> None.

    ADDR is an IP address (or `localhost`): a bind address that needs a name lookup would make
    the daemon's start depend on DNS."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics address {text!r}: expected ADDR:PORT, [IPV6]:PORT or off")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics address {text!r}: write an IPv6 address as [ADDR]:PORT")
    host = LOOPBACK_NAMES.get(host.lower(), host) or "0.0.0.0"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"metrics address {text!r}: {host!r} is not an IP address (give the address to "
            "bind, e.g. 192.0.2.10:9625: a name would need DNS at every start)"
        ) from None
    if bracketed and addr.version == 4:
        raise ValueError(f"metrics address {text!r}: an IPv4 address needs no brackets")
    return str(addr), int(port)


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged (one line per scrape would drown the journal)."""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape; `server_bind` without http.server's `getfqdn`."""

    daemon_threads = True  # never gathered at close (ThreadingMixIn's list would grow)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)  # what http.server resolves with getfqdn: not needed
        self.server_port = int(port)
        self.setup_environ()


def serve(address: tuple[str, int], registry: Any) -> Callable[[], None]:
    """Serve /metrics for `registry` on `address` (an IP literal) in a background thread.

    Returns the function that stops it. OSError if the port cannot be bound."""
    host, port = address
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
    server = server_class((host, port), _Handler)
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return shutdown
