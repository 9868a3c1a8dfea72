"""The preference routes (nodes/preference_routes.py) on the engine's folder_paths and ComfyUI's own UserManager,
served by aiohttp's test server: marks land in the requesting user's reno_preferences/<dataset>/, and bad input
(traversal, oversize, unknown or other users) gets a clear JSON error."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import comfy_host
import pytest
from image_files import bomb_jpeg
from PIL import Image

PREFIX = "/reno/preferences"


@pytest.fixture
def routes(engine):
    return engine.packs[comfy_host.PACK_NAME]["module"].nodes.preference_routes


@pytest.fixture
def dirs(engine, tmp_path):
    """A fresh user folder; a PNG in temp/reno_prefs_test/ and a JPEG in output/."""
    fp = engine.folder_paths
    old = fp.get_user_directory()
    user = tmp_path / "user"
    user.mkdir()
    fp.user_directory = str(user)
    sub = engine.temp_dir / "reno_prefs_test"
    sub.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(("red", "blue")):
        Image.new("RGB", (8, 8), color).save(sub / f"img{i}.png")
    Image.new("RGB", (8, 8), "green").save(engine.output_dir / "reno_prefs_test.jpg", quality=90)
    yield {"user": user, "sub": sub}
    fp.user_directory = old


def ref(name="img0.png", subfolder="reno_prefs_test", kind="temp"):
    return {"filename": name, "subfolder": subfolder, "type": kind}


def mark_body(image=None, mark="preferred", prompt="a red square", dataset="default"):
    return {"image": image or ref(), "mark": mark, "prompt": prompt, "dataset": dataset, "node": "ReNOScoreImages"}


def serve(routes_module, calls):
    """Run ``calls(client)`` (async) against an app with the preference routes; returns its result."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        table = web.RouteTableDef()
        routes_module.add_routes(table)
        app = web.Application(client_max_size=100 * 1024 * 1024)  # the routes enforce their own limits
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            return await calls(client)

    return asyncio.run(main())


async def answer(response):
    body = await response.read()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body


def test_the_pack_registers_its_routes_on_the_server(engine, routes):
    import server

    paths = {getattr(r, "path", None) for r in server.PromptServer.instance.routes}
    assert {f"{PREFIX}/mark", PREFIX, f"{PREFIX}/datasets", f"{PREFIX}/export", f"{PREFIX}/delete"} <= paths


def test_mark_list_export_delete_round_trip(routes, dirs):
    async def calls(c):
        out = {}
        out["a"] = await answer(await c.post(f"{PREFIX}/mark", json=mark_body()))
        out["b"] = await answer(await c.post(f"{PREFIX}/mark", json=mark_body(ref("img1.png"), "rejected")))
        out["jpeg"] = await answer(await c.post(f"{PREFIX}/mark", json=mark_body(
            ref("reno_prefs_test.jpg", "", "output"), "rejected", dataset="jpegs")))
        out["list"] = await answer(await c.get(PREFIX, params={"dataset": "default"}))
        out["datasets"] = await answer(await c.get(f"{PREFIX}/datasets"))
        r = await c.get(f"{PREFIX}/export", params={"dataset": "default"})
        out["export"] = (r.status, r.headers.get("Content-Disposition"), await r.read())
        out["delete"] = await answer(await c.post(f"{PREFIX}/delete", json={"dataset": "default",
                                                                           "ids": [out["b"][1]["record"]["id"]]}))
        out["after"] = await answer(await c.get(PREFIX, params={"dataset": "default"}))
        return out

    out = serve(routes, calls)
    assert out["a"][0] == 200 and out["b"][0] == 200 and out["jpeg"][0] == 200, out
    a, b = out["a"][1]["record"], out["b"][1]["record"]
    assert a["mark"] == "preferred" and b["mark"] == "rejected" and "compared_with" not in b  # pairs are derived
    assert a["source"] == {"node": "ReNOScoreImages", "filename": "img0.png", "subfolder": "reno_prefs_test",
                           "type": "temp"}
    folder = dirs["user"] / "default" / "reno_preferences" / "default"  # single-user mode: ComfyUI's user/default
    lines = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    assert lines[:2] == [a, b]
    copied = folder / a["image"]
    assert copied.read_bytes() == (dirs["sub"] / "img0.png").read_bytes()  # a copy: it outlives temp/
    jpeg = dirs["user"] / "default" / "reno_preferences" / "jpegs" / out["jpeg"][1]["record"]["image"]
    with Image.open(jpeg) as im:
        assert im.format == "PNG" and im.size == (8, 8)  # converted to PNG
    assert out["list"][1]["records"] == [a, b] and out["list"][1]["pairs"] == 1
    assert out["datasets"][1] == {"datasets": ["default", "jpegs"]}
    status, disposition, data = out["export"]
    assert status == 200 and "reno_preferences_default.zip" in disposition
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert [json.loads(x) for x in z.read("default/records.jsonl").decode().splitlines()] == [a, b]
        assert z.read(f"default/{a['image']}") == copied.read_bytes()
    assert out["delete"] == (200, {"dataset": "default", "deleted": [b["id"]], "missing": []})
    assert out["after"][1]["records"] == [a]


@pytest.mark.parametrize(("image", "status", "words"), [
    (ref("../../etc/passwd"), 400, "plain file name"),
    (ref("img0.png", "../.."), 403, "outside"),
    (ref("img0.png", "/etc"), 403, "outside"),
    (ref("passwd", "../../../../../../../../etc"), 403, "outside"),
    (ref("img0.png", "reno_prefs_test", "models"), 400, "not one of output, temp, input"),
    (ref("nothere.png"), 404, "no image"),
    ({"filename": 3}, 400, "strings"),
    ("img0.png", 400, "must be an object"),
])
def test_image_references_outside_comfyui_folders_are_refused(routes, dirs, image, status, words):
    got = serve(routes, lambda c: _post(c, "mark", mark_body(image)))
    assert got[0] == status and words in got[1]["error"], got
    assert not (dirs["user"] / "default" / "reno_preferences").exists()


@pytest.mark.parametrize(("body", "status", "words"), [
    (mark_body(dataset="../evil"), 400, "dataset name"),
    (mark_body(dataset=".hidden"), 400, "dataset name"),
    (mark_body(mark="meh"), 400, "'preferred' or 'rejected'"),
    (mark_body(prompt=None), 400, "'prompt'"),
    (mark_body(prompt="p" * 10_001), 413, "at most 10000"),
    ({"dataset": "default", "ids": ["../x"]}, 400, "record ids"),
])
def test_bad_fields_are_refused(routes, dirs, body, status, words):
    route = "delete" if "ids" in body else "mark"
    got = serve(routes, lambda c: _post(c, route, body))
    assert got[0] == status and words in got[1]["error"], got


def test_oversize_bodies_and_images_are_refused(routes, dirs):
    big = dirs["sub"] / "huge.png"
    with open(big, "wb") as f:  # sparse: 50 MiB + 1 byte
        f.truncate(50 * 1024 * 1024 + 1)

    async def calls(c):
        return [
            await _post(c, "mark", mark_body(prompt="p" * (70 * 1024))),
            await answer(await c.post(f"{PREFIX}/mark", data=b"x" * (65 * 1024),
                                      headers={"Content-Type": "application/json"})),
            await _post(c, "mark", mark_body(ref("huge.png"))),
            await answer(await c.post(f"{PREFIX}/mark", data=b"not json")),
            await answer(await c.get(f"{PREFIX}/export", params={"dataset": "nothing"})),
            await answer(await c.get(PREFIX, params={"dataset": "a/b"})),
        ]

    got = serve(routes, calls)
    assert [g[0] for g in got] == [413, 413, 413, 400, 404, 400], got
    assert "at most 65536" in got[0][1]["error"] and "at most 65536" in got[1][1]["error"], got
    assert "at most 52428800" in got[2][1]["error"], got
    big.unlink()


@contextmanager
def multi_user(engine, user_dir: Path, users: dict):
    """ComfyUI's own UserManager in --multi-user mode, as the server's user_manager."""
    import server
    from app.user_manager import UserManager
    from comfy.cli_args import args

    (user_dir / "users.json").write_text(json.dumps(users))
    instance = server.PromptServer.instance
    old_flag, old_manager = args.multi_user, getattr(instance, "user_manager", None)
    args.multi_user = True
    try:
        instance.user_manager = UserManager()
        yield
    finally:
        args.multi_user = old_flag
        if old_manager is None:
            del instance.user_manager
        else:
            instance.user_manager = old_manager


def test_records_are_per_user_in_multi_user_mode(engine, routes, dirs):
    alice, bob = {"comfy-user": "alice_1"}, {"comfy-user": "bob_2"}

    async def calls(c):
        out = {}
        out["mark"] = await answer(await c.post(f"{PREFIX}/mark", json=mark_body(), headers=alice))
        rid = out["mark"][1]["record"]["id"]
        out["bob_list"] = await answer(await c.get(PREFIX, params={"dataset": "default"}, headers=bob))
        out["bob_export"] = await answer(await c.get(f"{PREFIX}/export", params={"dataset": "default"}, headers=bob))
        out["bob_delete"] = await answer(await c.post(f"{PREFIX}/delete", json={"dataset": "default", "ids": [rid]},
                                                      headers=bob))
        out["stranger"] = await answer(await c.post(f"{PREFIX}/mark", json=mark_body(),
                                                    headers={"comfy-user": "mallory"}))
        out["system"] = await answer(await c.get(f"{PREFIX}/datasets", headers={"comfy-user": "__system"}))
        out["alice_list"] = await answer(await c.get(PREFIX, params={"dataset": "default"}, headers=alice))
        return out

    with multi_user(engine, dirs["user"], {"alice_1": "alice", "bob_2": "bob"}):
        out = serve(routes, calls)
    assert out["mark"][0] == 200, out
    assert (dirs["user"] / "alice_1" / "reno_preferences" / "default" / "records.jsonl").is_file()
    assert out["bob_list"] == (200, {"dataset": "default", "records": [], "pairs": 0})
    assert out["bob_export"][0] == 404
    assert out["bob_delete"][0] == 404 and "no live record" in out["bob_delete"][1]["error"]
    assert out["stranger"][0] == 403 and "Unknown user" in out["stranger"][1]["error"]
    assert out["system"][0] == 403
    assert [r["id"] for r in out["alice_list"][1]["records"]] == [out["mark"][1]["record"]["id"]]
    assert not (dirs["user"] / "bob_2").exists() and not (dirs["user"] / "mallory").exists()


async def _post(client, route, body):
    return await answer(await client.post(f"{PREFIX}/{route}", json=body))



def test_the_three_nodes_give_the_gallery_images_and_prompt_to_mark(engine, routes, dirs):
    """ReNO Sampler (reno_images), ReNO Iteration Preview (images) and ReNO Score Images (images) name their gallery's
    saved images and carry the prompt (reno_prompt); such an image marks through the route."""
    from engine_support import PROMPT_TEXT, reno_prompt
    from reno_prompts import SAMPLER_ID
    from tiny_rewards import write_reward_root

    write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), ("pickscore", "clipscore"))
    prompt = reno_prompt(engine, iterations=2, preview=True)
    prompt["10"] = {"class_type": "ReNOScoreImages", "inputs": {"images": [SAMPLER_ID, 1], "rewards": ["51", 0],
                                                                "prompt": PROMPT_TEXT}}
    res = engine.execute(prompt)
    res.raise_for_error()
    sampler, preview, score = res.ui_outputs[SAMPLER_ID], res.ui_outputs["9"], res.ui_outputs["10"]
    assert [(m["iteration"], m["batch_index"], m["type"]) for m in sampler["reno_images"]] == [(0, 0, "temp"),
                                                                                              (1, 0, "temp")]
    assert [m["iteration"] for m in score["images"]] == [0] and len(score["reno_scores"]) == 1
    for ui in (sampler, preview, score):
        assert ui["reno_prompt"] == [PROMPT_TEXT]
    for m in (*sampler["reno_images"], *score["images"]):
        assert (engine.temp_dir / m["subfolder"] / m["filename"]).is_file()

    image = {k: sampler["reno_images"][1][k] for k in ("filename", "subfolder", "type")}
    got = serve(routes, lambda c: _post(c, "mark", {"image": image, "prompt": sampler["reno_prompt"][0],
                                                    "mark": "preferred", "node": "ReNOSampler"}))
    assert got[0] == 200 and got[1]["record"]["source"] == {"node": "ReNOSampler", **image}, got
    assert got[1]["dataset"] == "default" and got[1]["record"]["prompt"] == PROMPT_TEXT


# -- issue 20 §2: image work and listing off the event loop, a pixel cap, deeply nested JSON --------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns over 89.5 megapixels
def test_an_image_over_the_pixel_cap_is_refused_from_its_header(routes, dirs):
    bomb_jpeg(dirs["sub"] / "bomb.jpg", 12000, 12000)  # the 12000 x 12000 JPEG that froze the server
    Image.new("1", (9000, 8000)).save(dirs["sub"] / "bomb.png")  # 72 megapixels in a few kB of PNG
    got = serve(routes, lambda c: asyncio.gather(_post(c, "mark", mark_body(ref("bomb.jpg"))),
                                                 _post(c, "mark", mark_body(ref("bomb.png")))))
    assert [g[0] for g in got] == [413, 413], got
    assert "12000 x 12000 pixels (144.0 megapixels); at most 67.1 megapixels" in got[0][1]["error"], got
    assert "9000 x 8000 pixels" in got[1][1]["error"], got
    assert not (dirs["user"] / "default" / "reno_preferences" / "default" / "images").exists() or not list(
        (dirs["user"] / "default" / "reno_preferences" / "default" / "images").iterdir())


def test_image_conversion_and_listing_run_off_the_event_loop(routes, dirs, monkeypatch):
    """A slow conversion (a large JPEG) or a slow listing (a large dataset) must not hold up other routes: while
    each is under way, GET /datasets answers."""
    import time

    slow = 1.0
    real_png, real_read = routes.png_bytes, routes.store.read_records

    def slow_png(path):
        time.sleep(slow)  # blocking, as PIL's decode is
        return real_png(path)

    def slow_read(*args, **kwargs):
        time.sleep(slow)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(routes, "png_bytes", slow_png)
    monkeypatch.setattr(routes.store, "read_records", slow_read)

    async def calls(c):
        done = []
        t0 = time.perf_counter()

        async def timed(name, request):
            status, _ = await answer(await request)
            done.append((name, status, time.perf_counter() - t0))

        async def quick():
            await asyncio.sleep(slow / 4)  # once the slow request is being served (the client shares the loop:
            await timed("datasets", c.get(f"{PREFIX}/datasets"))  # a blocked loop delays this past `slow`)

        await asyncio.gather(timed("mark", c.post(f"{PREFIX}/mark", json=mark_body())), quick())
        t0 = time.perf_counter()
        await asyncio.gather(timed("list", c.get(PREFIX, params={"dataset": "default"})), quick())
        return done

    done = serve(routes, calls)
    assert [(name, status) for name, status, _ in done] == [("datasets", 200), ("mark", 200), ("datasets", 200),
                                                           ("list", 200)], done
    assert done[0][2] < 0.75 * slow <= slow <= done[1][2] and done[2][2] < 0.75 * slow <= slow <= done[3][2], done


def test_deeply_nested_json_is_a_clear_400(routes, dirs):
    deep = b'{"dataset": "default", "ids": ' + b"[" * 30000 + b"]" * 30000 + b"}"  # under 64 KiB

    async def calls(c):
        headers = {"Content-Type": "application/json"}
        return [await answer(await c.post(f"{PREFIX}/{route}", data=deep, headers=headers))
                for route in ("mark", "delete")]

    got = serve(routes, calls)
    assert [g[0] for g in got] == [400, 400], got
    assert all("nested too deeply" in g[1]["error"] for g in got), got
