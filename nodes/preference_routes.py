"""HTTP routes of the gallery's preference picks (thin: the store is ``preferences/store.py``).

* ``POST /reno/preferences/mark``  ``{"prompt", "image": {"filename", "subfolder", "type"}, "mark", "dataset",
  "node"}`` → ``{"record", "replaced"}`` (the ids of earlier marks of the same image and prompt it replaced)
* ``GET  /reno/preferences?dataset=NAME`` → ``{"dataset", "records", "pairs"}`` (``pairs``: how many the trainer
  derives from the marks, at most ``PAIRS_PER_PROMPT`` per prompt)
* ``GET  /reno/preferences/datasets`` → ``{"datasets"}``
* ``GET  /reno/preferences/export?dataset=NAME`` → a zip (records.jsonl + images)
* ``POST /reno/preferences/delete``  ``{"dataset", "ids": [...]}`` → ``{"deleted"}``

Records live in the requesting user's folder (ComfyUI's user manager resolves the ``comfy-user`` header; in
single-user mode that is ``user/default``), so a user sees and deletes only their own. Every input is checked:
dataset names are safe folder names, image references resolve inside ComfyUI's output/temp/input folders,
bodies are at most 64 KiB (and JSON nested at most as deep as Python's parser goes: deeper is a 400), images
50 MiB and 67.1 megapixels (``preferences.MAX_PIXELS``, 8192 x 8192, checked from the header before decoding),
prompts 10k characters. Errors are JSON ``{"error": "..."}`` with HTTP 400 (bad input), 403 (unknown user, a path
outside the allowed folders), 404 (no such image, dataset or record) or 413 (too large).

The server's event loop serves every route and the websocket: reading, decoding and converting an image,
and reading a dataset's records, run in a worker thread (``asyncio.to_thread``), never on the loop.

What ``--multi-user`` protects: ComfyUI has no authentication; the ``comfy-user`` header names a user, it does
not prove one. Per-user folders keep honest users' marks apart; anyone who can reach the server can send any
user's id (and read or write that user's files through ComfyUI's own ``/userdata`` route too).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os

from aiohttp import web

from ..preferences import store

MAX_BODY = 64 * 1024
MAX_IMAGE = 50 * 1024 * 1024
MAX_IDS = 10_000
IMAGE_TYPES = ("output", "temp", "input")
NODES = ("ReNOSampler", "ReNOIterationPreview", "ReNOScoreImages")

log = logging.getLogger("ReNO")


class RouteError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _folder_paths():
    import folder_paths

    return folder_paths


def user_root(request) -> str:
    """The requesting user's folder (ComfyUI's ``user/<user id>``); RouteError(403) for an unknown user."""
    folder_paths = _folder_paths()
    manager = None
    try:
        import server

        manager = getattr(server.PromptServer.instance, "user_manager", None)
    except Exception:  # no server module (tests that call the routes without one)
        manager = None
    if manager is None:
        return os.path.join(folder_paths.get_user_directory(), "default")
    try:
        path = manager.get_request_user_filepath(request, None, create_dir=False)
    except KeyError as e:
        raise RouteError(403, f"preference records: {e.args[0] if e.args else 'unknown user'} (pick a user in "
                              "ComfyUI's user menu)") from None
    if not path:
        raise RouteError(403, "preference records: this user has no user folder")
    return path


async def _json_body(request) -> dict:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RouteError(413, f"request body is {request.content_length} bytes; at most {MAX_BODY} are accepted")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise RouteError(413, f"request body is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RouteError(400, "request body is not JSON") from None
    except RecursionError:  # "[[[[..." deeper than the parser's recursion limit
        raise RouteError(400, "request body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise RouteError(400, "request body must be a JSON object")
    return body


def _dataset(value) -> str:
    try:
        return store.validate_dataset_name("default" if value is None else value)
    except store.PreferenceError as e:
        raise RouteError(400, str(e)) from None


def resolve_image(ref) -> str:
    """The file an image reference ({filename, subfolder, type}, as ComfyUI's /view takes it) names, checked to be
    inside ComfyUI's output, temp or input folder."""
    if not isinstance(ref, dict):
        raise RouteError(400, "'image' must be an object {filename, subfolder, type}")
    filename, subfolder, kind = ref.get("filename"), ref.get("subfolder", ""), ref.get("type", "output")
    if not isinstance(filename, str) or not isinstance(subfolder, str) or not isinstance(kind, str):
        raise RouteError(400, "'image' filename, subfolder and type must be strings")
    folder_paths = _folder_paths()
    name, base = folder_paths.annotated_filepath(filename)  # "x.png [temp]" names its folder
    if base is None:
        if kind not in IMAGE_TYPES:
            raise RouteError(400, f"image type {kind[:20]!r} is not one of {', '.join(IMAGE_TYPES)}")
        base = folder_paths.get_directory_by_type(kind)
    if not name or name != os.path.basename(name) or name in (".", "..") or "\\" in name or "\x00" in name + subfolder:
        raise RouteError(400, f"image filename {filename[:80]!r} is not a plain file name")
    base = os.path.realpath(base)
    path = os.path.realpath(os.path.join(base, subfolder, name))
    if os.path.commonpath((base, path)) != base:
        raise RouteError(403, "the image is outside ComfyUI's output, temp and input folders")
    if not os.path.isfile(path):
        raise RouteError(404, f"no image {os.path.join(subfolder, name)!r} in ComfyUI's {kind} folder (cleared on "
                              "restart: run the workflow again)")
    if os.path.getsize(path) > MAX_IMAGE:
        raise RouteError(413, f"the image is {os.path.getsize(path)} bytes; at most {MAX_IMAGE} are stored")
    return path


def png_bytes(path: str) -> bytes:
    """The image file as PNG data (PNGs as they are; other formats converted); RouteError(400) if not an image,
    RouteError(413) if it has more than ``store.MAX_PIXELS`` pixels (read from the header: nothing is decoded).
    Blocking work: call it in a worker thread."""
    with open(path, "rb") as f:
        data = f.read()
    from PIL import Image

    name = os.path.basename(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            store.check_pixels(*im.size, what=f"{name!r}")
            im.verify()
        if data.startswith(store.PNG_SIGNATURE):
            return data
        with Image.open(io.BytesIO(data)) as im:
            out = io.BytesIO()
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(out, format="PNG")
            return out.getvalue()
    except store.PreferenceError as e:
        raise RouteError(413, str(e)) from None
    except Image.DecompressionBombError:  # PIL's own limit (twice its 89.5 megapixels), met reading the header
        raise RouteError(413, f"{name!r} has more than {store.MAX_PIXELS / 1e6:.1f} megapixels; scale it down "
                              "first") from None
    except Exception:
        raise RouteError(400, f"{name!r} is not an image ComfyUI can read") from None


async def mark(request):
    body = await _json_body(request)
    dataset = _dataset(body.get("dataset"))
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RouteError(400, "'prompt' (the text the image was made for) must be a string")
    if len(prompt) > store.MAX_PROMPT:
        raise RouteError(413, f"the prompt is {len(prompt)} characters; at most {store.MAX_PROMPT} are stored")
    if body.get("mark") not in store.MARKS:
        raise RouteError(400, "'mark' must be 'preferred' or 'rejected' (to clear a mark, delete its record)")
    node = body.get("node") if body.get("node") in NODES else ""
    ref = body.get("image")
    root = user_root(request)
    data = await asyncio.to_thread(lambda: png_bytes(resolve_image(ref)))  # file work off the event loop
    fields = {"prompt": prompt, "mark": body["mark"],
              "source": {"node": node, "filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                         "type": ref.get("type", "output")}}
    replaced: list[str] = []
    record = await asyncio.to_thread(store.append_record, root, dataset, fields, data, replaced=replaced)
    return web.json_response({"dataset": dataset, "record": record, "replaced": replaced})


def _listing(root: str, dataset: str) -> dict:
    records = store.read_records(root, dataset)
    return {"dataset": dataset, "records": records, "pairs": store.pair_count(records)}


async def list_records(request):
    dataset = _dataset(request.rel_url.query.get("dataset"))
    root = user_root(request)
    return web.json_response(await asyncio.to_thread(_listing, root, dataset))


async def list_datasets(request):
    root = user_root(request)
    return web.json_response({"datasets": await asyncio.to_thread(store.list_datasets, root)})


async def export(request):
    dataset = _dataset(request.rel_url.query.get("dataset"))
    root = user_root(request)
    if not os.path.isfile(os.path.join(store.dataset_dir(root, dataset), store.RECORDS)):
        raise RouteError(404, f"no preference dataset {dataset!r} for this user")
    dest = os.path.join(root, store.FOLDER, ".exports", f"{dataset}.zip")
    await asyncio.to_thread(store.export_dataset, root, dataset, dest)
    return web.FileResponse(dest, headers={"Content-Type": "application/zip", "Content-Disposition":
                                           f'attachment; filename="reno_preferences_{dataset}.zip"'})


async def delete(request):
    body = await _json_body(request)
    dataset = _dataset(body.get("dataset"))
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or not all(store.is_record_id(i) for i in ids):
        raise RouteError(400, f"'ids' must be a list of 1 to {MAX_IDS} record ids (32 hex digits)")
    root = user_root(request)
    deleted = await asyncio.to_thread(store.delete_records, root, dataset, ids)
    missing = [i for i in dict.fromkeys(ids) if i not in deleted]
    if missing and not deleted:
        raise RouteError(404, f"no live record {missing[0]!r} in dataset {dataset!r} for this user")
    return web.json_response({"dataset": dataset, "deleted": deleted, "missing": missing})


def _guarded(handler):
    async def run(request):
        try:
            return await handler(request)
        except RouteError as e:
            return _fail(e.status, e.message)
        except store.PreferenceError as e:
            return _fail(400, str(e))
        except OSError as e:
            log.warning("ReNO preferences: %s failed: %s", request.path, e)
            return _fail(500, f"preference store: {e.strerror or e} ({getattr(e, 'filename', '') or ''})")

    run.__name__ = f"reno_preferences_{handler.__name__}"
    return run


def add_routes(routes) -> None:
    """Register the routes on an aiohttp RouteTableDef (ComfyUI's ``PromptServer.instance.routes``)."""
    routes.post("/reno/preferences/mark")(_guarded(mark))
    routes.get("/reno/preferences")(_guarded(list_records))
    routes.get("/reno/preferences/datasets")(_guarded(list_datasets))
    routes.get("/reno/preferences/export")(_guarded(export))
    routes.post("/reno/preferences/delete")(_guarded(delete))


def register() -> bool:
    """Add the routes to the running ComfyUI server, when there is one with routes; returns whether it did."""
    try:
        import server

        routes = getattr(getattr(server.PromptServer, "instance", None), "routes", None)
    except Exception:
        return False
    if routes is None:
        return False
    add_routes(routes)
    return True
