"""The recording stand-in for ``server.PromptServer.instance`` when no real server runs (the headless engine), and
the records it keeps: every event sent (``SentEvent``) and every progress-bar update (``ProgressEvent``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple


class SentEvent(NamedTuple):
    event: Any  # str for JSON events, int for binary ones (BinaryEventTypes)
    data: Any
    sid: Any


class ProgressEvent(NamedTuple):
    value: Any
    total: Any
    has_preview: bool
    node_id: Any


class RecordingPromptServer:
    """Stand-in for ``server.PromptServer.instance`` when no real server runs.

    Has what the executors, the progress handlers and typical custom nodes touch:
    ``client_id``, ``last_node_id``, ``last_prompt_id``, ``sockets``, ``sockets_metadata``,
    ``send_sync``, ``send`` / ``send_json`` (async), ``send_progress_text``, ``routes``, ``app``,
    ``supports``, ``queue_updated``, ``add_on_prompt_handler``, ``trigger_on_prompt``."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets: dict = {}
        self.sockets_metadata: dict = {}
        self.supports = ["custom_nodes_from_web"]
        self.number = 0
        self.loop = None
        self.prompt_queue = None
        self.on_prompt_handlers: list = []
        self.sent: list[SentEvent] = []
        self.sent_times: list[float] = []  # time.perf_counter() of each entry of ``sent``
        self._lock = threading.Lock()
        try:
            from aiohttp import web

            self.routes = web.RouteTableDef()
            self.app = web.Application()
        except Exception:  # pragma: no cover - aiohttp is a hard dependency of both servers
            self.routes = None
            self.app = None

    # JSON / binary events ---------------------------------------------------------------
    def send_sync(self, event, data, sid=None):
        with self._lock:
            self.sent.append(SentEvent(event, data, sid))
            self.sent_times.append(time.perf_counter())

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    async def send_json(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        self.send_sync("progress_text", {"node_id": node_id, "text": text}, sid)

    # misc server API ----------------------------------------------------------------------
    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):
        for handler in self.on_prompt_handlers:
            json_data = handler(json_data)
        return json_data

    def clear(self):
        with self._lock:
            self.sent.clear()
            self.sent_times.clear()
