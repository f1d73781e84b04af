"""What every fake provider shares: a threaded HTTP/1.1 server on 127.0.0.1 (keep-alive, as a real
API), a record of what it was asked, limits on demand (`limit(n, retry_after=...)`: the next n
requests are answered 429), and a clock for its jobs.

A fake subclasses FakeServer and answers in `answer(request)`: a Request in, an Answer out (JSON by
default; `raw` bytes for a file). A fake whose jobs move on by themselves (they end, they call back)
does so in `tick()`, called every TICK seconds on a thread of its own until `stop()`; `post()` sends
its webhooks. With `tls` set (`localhost_tls()`), it serves https: for a provider's own client whose
scheme is fixed (fal's). A fake that serves websockets (ComfyUI's) says which requests it takes as one in
`takes_websocket(request)` and serves each in `websocket(request, socket)`: a WebSocket, RFC 6455's
server side as much as a fake needs. A fake that takes uploads reads them with `request.form()`."""

import base64
import datetime
import email.parser
import email.policy
import hashlib
import ipaddress
import json
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict  # name -> first value
    headers: dict  # lower-case name -> value
    raw: bytes

    @property
    def json(self):
        return json.loads(self.raw or b"null")

    def form(self) -> tuple[dict, dict] | None:
        """A multipart/form-data body (RFC 7578): its fields {name: text} and files {name: (filename,
        content type, bytes)}, in the order sent; None when the body is not one."""
        content_type = self.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return None
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + self.raw)
        if not message.is_multipart():
            return None
        fields, files = {}, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                files[name] = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
            else:
                fields[name] = part.get_payload(decode=True).decode()
        return fields, files


@dataclass(frozen=True)
class Answer:
    status: int
    body: object = None
    headers: dict = field(default_factory=dict)
    raw: bytes | None = None  # sent as is (with its Content-Type in headers) instead of JSON
    # Instead of `raw`, a large body never whole in memory: its length, and a callable giving its pieces.
    pieces: tuple[int, object] | None = None


class WebSocket:
    """A websocket's server side (RFC 6455): text frames sent unmasked, from any thread; what the client
    sends is read and dropped (a ping answered, a close answered and ended) until it closes."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, rfile, wfile):
        self._rfile, self._wfile, self._lock = rfile, wfile, threading.Lock()
        self.closed = False

    @classmethod
    def accept(cls, key: str) -> str:
        return base64.b64encode(hashlib.sha1((key + cls.GUID).encode()).digest()).decode()

    def _frame(self, opcode: int, data: bytes) -> bool:
        size = len(data)
        length = bytes([size]) if size < 126 else (bytes([126]) + size.to_bytes(2, "big") if size < 65536
                                                   else bytes([127]) + size.to_bytes(8, "big"))
        with self._lock:
            try:
                if not self.closed:
                    self._wfile.write(bytes([0x80 | opcode]) + length + data)
            except OSError:
                self.closed = True
        return not self.closed

    def send(self, text: str) -> bool:
        """One text frame; False once the socket is closed."""
        return self._frame(0x1, text.encode())

    def serve(self) -> None:
        """Read the client's frames until it closes (or the connection is gone)."""
        try:
            while not self.closed:
                head = self._rfile.read(2)
                if len(head) < 2:
                    break
                size = head[1] & 0x7F
                if size >= 126:
                    size = int.from_bytes(self._rfile.read(2 if size == 126 else 8), "big")
                mask = self._rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
                data = bytes(byte ^ mask[i % 4] for i, byte in enumerate(self._rfile.read(size)))
                if head[0] & 0x0F == 0x9:  # a ping: its pong
                    self._frame(0xA, data)
                elif head[0] & 0x0F == 0x8:  # a close: answered, and that is the end
                    self._frame(0x8, data[:2])
                    break
        except OSError:
            pass
        finally:
            self.closed = True


TICK = 0.02  # seconds between a fake's ticks


def post(url: str, data: bytes, headers: dict, *, timeout: float = 10) -> int | None:
    """POST `data` to `url`, as a provider sends a webhook: the answer's status code (None: no answer)."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


class FakeServer:
    limit_answer = Answer(429, {"detail": "Request was throttled."})  # what a fake says when limited
    tls: ssl.SSLContext | None = None  # serve https with this context (localhost_tls())

    def __init__(self):
        self.stopped = threading.Event()
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self._limit_left = 0
        self._retry_after: str | None = None
        self.port = 0

    # --- running it ---------------------------------------------------------------------------

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        threading.Thread(target=self._ticking, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    def tick(self) -> None:
        """What happens by itself every TICK seconds (nothing, unless a fake says)."""

    def _ticking(self) -> None:
        while not self.stopped.wait(TICK):
            self.tick()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def limit(self, count: int, retry_after: str | None = None) -> None:
        """The next `count` requests are answered 429 (with Retry-After when given)."""
        with self.lock:
            self._limit_left, self._retry_after = count, retry_after

    def asked(self, method: str, prefix: str = "") -> list[Request]:
        """The requests it was sent with this method, whose path starts with `prefix`."""
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    @staticmethod
    def now() -> float:
        return time.monotonic()

    # --- answering ------------------------------------------------------------------------------

    def answer(self, request: Request) -> Answer:
        raise NotImplementedError

    def takes_websocket(self, request: Request) -> bool:
        """Whether this request to open a websocket is taken (else it is answered as any other)."""
        return False

    def websocket(self, request: Request, socket: WebSocket) -> None:
        """Serve a websocket taken (its handshake done), on its connection's thread, until it closes."""
        socket.serve()

    def _limited(self) -> Answer | None:
        with self.lock:
            if self._limit_left <= 0:
                return None
            self._limit_left -= 1
            retry_after = self._retry_after
        limited = self.limit_answer
        return Answer(limited.status, limited.body, {**limited.headers, **({"Retry-After": retry_after} if retry_after else {})})


def localhost_tls() -> tuple[ssl.SSLContext, str]:
    """A server TLS context with a certificate made now for 127.0.0.1, and the certificate's file (for a
    client to trust: SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    folder = Path(tempfile.mkdtemp(prefix="fake-tls-"))
    (folder / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, str(folder / "cert.pem")


def _handler(fake: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = Request(self.command, parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                              {k.lower(): v for k, v in self.headers.items()}, raw)
            with fake.lock:
                fake.requests.append(request)
            if request.headers.get("upgrade", "").lower() == "websocket" and fake.takes_websocket(request):
                self.send_response(101, "Switching Protocols")
                for key, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                   ("Sec-WebSocket-Accept", WebSocket.accept(request.headers.get("sec-websocket-key", "")))):
                    self.send_header(key, value)
                self.end_headers()
                fake.websocket(request, WebSocket(self.rfile, self.wfile))
                self.close_connection = True
                return
            answer = fake._limited() or fake.answer(request)
            if answer.pieces is not None:
                length, pieces = answer.pieces
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                for piece in pieces():
                    self.wfile.write(piece)
                return
            data = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
            self.send_response(answer.status)
            if answer.raw is None:
                self.send_header("Content-Type", "application/json")
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
