"""ComfyUI's progress, heard over its websocket (coordination/runners/adapters/comfyui.py says why and
when a socket is opened): one socket as the client that queued a job's prompts, read in the
background of the event loop that asks about the job."""

import asyncio
import json
import logging
import time
from urllib.parse import urlencode

WS_IDLE = 30.0  # seconds: a websocket no poll asked about for this long is closed
WS_REOPEN = 5.0  # seconds: a job's websocket is opened at most this often (one that failed or closed)
WS_CONNECT_TIMEOUT = 10.0  # seconds a websocket's opening may take
WS_HEARTBEAT = 30.0  # seconds between pings on an open websocket (a connection gone silent is closed)
WS_CLOSE_WAIT = 1.0  # seconds a prompt's end (or cancel) waits for its websocket to close

logger = logging.getLogger(__name__)


def websocket_url(server: str, client_id: str) -> str:
    scheme, rest = server.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?{urlencode({'clientId': client_id})}"


class Listening:
    """One websocket to a ComfyUI server as the client that queued a job's prompts, in one event loop:
    what it last said of each prompt's progress (0-1), read in the background."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.task: asyncio.Task | None = None
        self.opened_at = float("-inf")
        self.asked_at = time.monotonic()
        self.progress: dict[str, float] = {}
        self.unnamed: float | None = None  # an older server's: its progress names no prompt
        self.failed = False

    def of(self, prompt_id: str) -> float | None:
        progress = self.progress.get(prompt_id)
        return progress if progress is not None else self.unnamed

    def heard(self, text: str) -> None:
        """One text frame: each prompt's latest progress, kept until the socket closes (at the prompt's
        end, read from its history: forgotten at ComfyUI's `executing {node: null}`, the polls just
        before would show none); the rest ignored."""
        try:
            message = json.loads(text)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict):
            return
        kind, prompt_id = message.get("type"), data.get("prompt_id")
        if kind == "progress":
            value, most = data.get("value"), data.get("max")
            if isinstance(value, (int, float)) and isinstance(most, (int, float)) and most > 0:
                fraction = min(1.0, max(0.0, value / most))
                if prompt_id is None:
                    self.unnamed = fraction
                else:
                    self.progress[str(prompt_id)] = fraction
        elif kind == "execution_start":  # another prompt of the job's (a retry's): an older server's is not its
            self.unnamed = None

    async def listen(self, url: str, ssl) -> None:
        """Until the server closes it, nobody asked for WS_IDLE seconds, or it is cancelled."""
        import aiohttp  # here: a worker imports it only when it waits for a ComfyUI prompt itself

        timeout = aiohttp.ClientTimeout(total=None, connect=WS_CONNECT_TIMEOUT, sock_connect=WS_CONNECT_TIMEOUT)
        session = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
        try:
            ws = await session.ws_connect(url, ssl=ssl, heartbeat=WS_HEARTBEAT,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=WS_CLOSE_WAIT))
            while time.monotonic() - self.asked_at < WS_IDLE:
                try:
                    message = await ws.receive(timeout=WS_IDLE / 3)
                except TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.heard(message.data)
                elif message.type != aiohttp.WSMsgType.BINARY:  # closed, closing, an error
                    break
            await ws.close()
        except Exception as error:  # whatever it is, only progress is missing: said once per job
            if not self.failed:
                logger.info("ComfyUI's websocket %s: %s: %s (progress is not shown meanwhile)", url.split("?")[0],
                            type(error).__name__, error)
            self.failed = True
        finally:
            self.progress.clear()
            self.unnamed = None
            await session.close()
