"""How a webhook travels: one POST to the address its URL was checked at (coordination/webhooks.py
sends, this carries).

Each sending thread keeps its connection to a receiver open for the next POST (HTTP keep-alive), by
receiver and checked address: a webhook a job pays no new TCP connection and, over https, no new
TLS handshake. As urllib3 does, a kept connection is looked at before it is used again: one the
receiver closed (or wrote to unasked) meanwhile is dropped, and the POST goes on a new one. A POST
is never sent twice here: one that fails is a failed try like any other, recorded and tried again
later with the same webhook-id."""

import http.client
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse

from django.conf import settings

# A connection unused this long is closed rather than trusted (a receiver closes idle ones: gunicorn
# after 2 s, nginx after 75 s); a thread keeps at most KEPT_PER_THREAD, the least recently used going
# first; and one is kept only after an answer of at most KEEP_ANSWER_BYTES, read whole as the next
# request needs (a longer or unsized one is not read: its connection is closed).
KEEP_SECONDS = 30
KEPT_PER_THREAD = 16
KEEP_ANSWER_BYTES = 64 * 1024

_kept = threading.local()
_tls: list[ssl.SSLContext] = []


def post(url: str, address: str, body: bytes, headers: dict) -> int:
    """POST to `url`, connecting to `address` (the one url_check passed: a name that resolves elsewhere
    by now is not asked again), with the host's name kept for TLS and the Host header. A redirect is an
    answer like any other (not followed). Returns the status code; raises what the connection raised."""
    parts = urllib.parse.urlsplit(url)
    key = (parts.scheme, parts.hostname, parts.port, address)
    kept = _kept_here()
    connection = kept.pop(key, (None, 0))[0] or _connect(parts, address)
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                           body=body, headers=headers)
        response = connection.getresponse()
    except BaseException:
        connection.close()
        raise
    if _drained(response):
        kept[key] = (connection, time.monotonic())
        while len(kept) > KEPT_PER_THREAD:
            kept.pop(next(iter(kept)))[0].close()
    else:
        connection.close()
    return response.status


def _kept_here() -> dict:
    """This thread's kept connections that may still be used: those gone stale or closed by their
    receiver are closed and forgotten first, and a forked process never writes on its parent's sockets."""
    if getattr(_kept, "pid", None) != os.getpid():
        _kept.pid, _kept.connections = os.getpid(), {}
    kept = _kept.connections
    now = time.monotonic()
    for key, (connection, last_used) in list(kept.items()):
        if now - last_used > KEEP_SECONDS or _closed_meanwhile(connection):
            connection.close()
            del kept[key]
    return kept


def _closed_meanwhile(connection: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read has been closed by its receiver (or carries bytes
    nobody asked for): either way it cannot carry the next request."""
    if connection.sock is None:
        return True
    readable, _, _ = select.select([connection.sock], [], [], 0)
    return bool(readable)


def _drained(response: http.client.HTTPResponse) -> bool:
    """Whether the connection may carry another request: the answer read whole, which its status
    already decided (a body that fails to arrive leaves the answer as it was, not the connection)."""
    if response.will_close or response.length is None or response.length > KEEP_ANSWER_BYTES:
        return False
    try:
        response.read()
    except (OSError, http.client.HTTPException):
        return False
    return True


def _connect(parts: urllib.parse.SplitResult, address: str) -> http.client.HTTPConnection:
    timeout = settings.COORDINATOR_WEBHOOK_TIMEOUT
    if parts.scheme == "https":
        if not _tls:  # made once: loading the system's certificates costs more than a send
            _tls.append(ssl.create_default_context())
        connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=_tls[0])
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    port = connection.port
    connection._create_connection = lambda _, *args, **kwargs: socket.create_connection((address, port), *args, **kwargs)
    return connection


def kept_close() -> None:
    """Close this thread's kept connections (a test's receiver going away)."""
    for connection, _ in getattr(_kept, "connections", {}).values():
        connection.close()
    _kept.connections = {}
