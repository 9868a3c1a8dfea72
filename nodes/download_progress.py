"""Reward downloads as the user sees them: the node's progress bar, a status line, and Cancel.

``reward_loaders`` never imports ComfyUI; it calls a ``progress(DownloadProgress)`` callback. This module makes
that callback for a node: ComfyUI's progress bar on the node (bytes of the current file out of its size), a
``reno.download`` event for the status line the web extension shows on the node (the queuing client only), and
the host's cancel check on every chunk (``throw_exception_if_processing_interrupted``: Cancel raises the host's
interruption inside the download, which stops it and leaves nothing behind).
"""

from __future__ import annotations

import contextlib
import logging
import time

import comfy.model_management
import comfy.utils

from ..reward_loaders.download import DownloadProgress
from ..reward_loaders.errors import RewardLoadError
from .events import _server

log = logging.getLogger(__name__)

EVENT = "reno.download"
# the bar and the status line are updated at most this often (plus each file's first and last report): a
# 4 GB file is about 4000 chunks
MIN_INTERVAL_S = 0.25


def send_download(node_id, payload: dict) -> bool:
    """One ``reno.download`` event to the client that queued the prompt; False when nobody listens."""
    instance = _server()
    sid = getattr(instance, "client_id", None)
    if instance is None or sid is None:  # never broadcast
        return False
    message = {"node": None if node_id is None else str(node_id),
               "prompt_id": getattr(instance, "last_prompt_id", None), **payload}
    try:
        instance.send_sync(EVENT, message, sid)
    except Exception as e:  # noqa: BLE001 - a broken socket must not stop the download
        log.warning("ReNO: could not send %s: %s", EVENT, e)
        return False
    return True


class NodeDownloads:
    """The ``progress`` callback for ``load_reward`` / ``ensure_files`` on node ``node_id``.

    Every report first checks for Cancel (raising the host's interruption, after telling the status line);
    then, throttled to ``MIN_INTERVAL_S`` except for each file's first and last reports and phase changes, it
    moves the node's progress bar to the bytes received and sends the status line's figures.
    """

    def __init__(self, node_id=None, clock=time.monotonic):
        self.node_id = node_id
        self.clock = clock
        self.last: DownloadProgress | None = None
        self._bar = None
        self._bar_file = None
        self._sent_at = None
        self._sent_key = None

    @staticmethod
    def payload(p: DownloadProgress, phase: str | None = None) -> dict:
        return {"reward": p.reward, "file": p.file, "index": p.index, "count": p.count, "phase": phase or p.phase,
                "done": int(p.done), "total": None if p.total is None else int(p.total)}

    def __call__(self, p: DownloadProgress) -> None:
        self.last = p
        try:
            comfy.model_management.throw_exception_if_processing_interrupted()
            now = self.clock()
            key = (p.file, p.phase)
            first_or_last = key != self._sent_key or p.phase != "download" or (p.total is not None and p.done >= p.total)
            if not first_or_last and self._sent_at is not None and now - self._sent_at < MIN_INTERVAL_S:
                return
            self._sent_at, self._sent_key = now, key
            self._update_bar(p)  # the host's progress hook checks for Cancel too
        except BaseException:
            self.finish("stopped")
            raise
        send_download(self.node_id, self.payload(p))

    def _update_bar(self, p: DownloadProgress) -> None:
        total = p.total if p.total else max(p.done, 1)
        if self._bar is None or self._bar_file != p.file:
            self._bar = comfy.utils.ProgressBar(total, node_id=self.node_id)
            self._bar_file = p.file
        self._bar.update_absolute(min(p.done, total), total)

    def finish(self, phase: str) -> None:
        """Tell the status line the downloads ended ("stopped": cancelled, "failed": an error) mid-way."""
        last = self.last
        if last is not None and not (last.phase == "done" and last.index == last.count):
            send_download(self.node_id, self.payload(self.last, phase))

    @contextlib.contextmanager
    def reporting(self):
        """Around the load: a failed download is shown as such on the status line before the error surfaces."""
        try:
            yield self
        except RewardLoadError:
            self.finish("failed")
            raise
