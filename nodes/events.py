"""Live events for the front end: one ``reno.iteration`` message per iteration, to the queuing client only."""

from __future__ import annotations

import base64
import io
import logging

import torch
from PIL import Image

from ..optimizer.objective import weighted_total

log = logging.getLogger(__name__)

EVENT = "reno.iteration"


def _server():
    try:
        import server

        return server.PromptServer.instance
    except Exception:  # noqa: BLE001 - no server (library use, some headless hosts)
        return None


def jpeg_data_url(image: torch.Tensor, quality: int = 80) -> str:
    """(h, w, 3) uint8 -> a ``data:image/jpeg;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(image.numpy()).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def send_iteration(node_id, record, iterations: int, rewards: list[dict], best_iteration: list[int],
                   preview: torch.Tensor) -> bool:
    """Send one iteration's figures and a small preview of batch element 0; False when nobody listens."""
    instance = _server()
    sid = getattr(instance, "client_id", None)
    if instance is None or sid is None:  # never broadcast: only the client that queued the prompt
        return False
    totals = [weighted_total((r["weight"], record.scores[r["label"]][b]) for r in rewards) for b in range(len(record.loss))]
    payload = {
        "node": None if node_id is None else str(node_id),
        "prompt_id": getattr(instance, "last_prompt_id", None),
        "iteration": record.iteration,
        "iterations": iterations,
        "rewards": rewards,
        "scores": record.scores,
        "total": totals,
        "loss": record.loss,
        "latent_norm": record.latent_norm,
        "grad_norm": record.grad_norm,
        "best_iteration": best_iteration,
        "preview": jpeg_data_url(preview[0]),
    }
    try:
        instance.send_sync(EVENT, payload, sid)
    except Exception as e:  # noqa: BLE001 - a broken socket must not stop the run
        log.warning("ReNO: could not send %s: %s", EVENT, e)
        return False
    return True
