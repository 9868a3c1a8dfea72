"""Image files for the tests of the preference store's routes and trainer (tests/engine/test_preference_routes.py,
tests/test_preference_training.py)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image


def bomb_jpeg(path: Path, width: int, height: int) -> Path:
    """A tiny JPEG whose header claims ``width`` x ``height`` pixels (what a decompression bomb's header says)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5: sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path
