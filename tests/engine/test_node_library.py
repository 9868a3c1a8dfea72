"""What the node library shows of the pack, as the engine's own /object_info says it: one category tree, search
aliases, and a default for every text input ("prompt: undefined" otherwise)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from engine_support import pack_module

ROOT = Path(__file__).resolve().parents[2]
TREE = "ReNO"
#: what an artist typed into the node search and found nothing (issue 20): the node each must find
SEARCHES = {"pickscore": "ReNORewardLoader", "aesthetic score": "ReNORewardLoader", "noise optimization": "ReNOSampler"}


@pytest.fixture(scope="module")
def pack(engine):
    return pack_module(engine)


@pytest.fixture(scope="module")
def object_info(engine, pack, tmp_path_factory):
    """``GET /object_info/<class>`` for each of the pack's nodes, answered by a real ``server.PromptServer`` of the
    engine's ComfyUI (built without starting it; the engine's recording server is put back afterwards)."""
    import server
    from comfy.cli_args import args

    web_root = tmp_path_factory.mktemp("web_root")
    saved_instance, saved_root = server.PromptServer.instance, args.front_end_root
    args.front_end_root = str(web_root)  # no frontend package is looked for
    loop = asyncio.new_event_loop()
    try:
        prompt_server = server.PromptServer(loop)
        handler = next(r.handler for r in prompt_server.routes
                       if getattr(r, "path", None) == "/object_info/{node_class}" and r.method == "GET")

        class Request:
            def __init__(self, name):
                self.match_info = {"node_class": name}

        infos = {}
        for name in [*pack.NODE_CLASS_MAPPINGS, "CLIPTextEncode"]:
            response = loop.run_until_complete(handler(Request(name)))
            infos.update(json.loads(response.body))
        return infos
    finally:
        server.PromptServer.instance = saved_instance
        args.front_end_root = saved_root
        loop.close()


def test_every_node_is_in_one_category_tree(pack, object_info):
    categories = {name: object_info[name]["category"] for name in pack.NODE_CLASS_MAPPINGS}
    assert {c.split("/")[0] for c in categories.values()} == {TREE}, categories
    assert set(categories.values()) == {"ReNO/sampling", "ReNO/rewards", "ReNO/training"}, categories
    assert categories["ReNOSampler"] == "ReNO/sampling" and categories["ReNORewardLoader"] == "ReNO/rewards"


def test_search_aliases_find_what_artists_type(pack, object_info):
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        aliases = cls.SEARCH_ALIASES
        assert aliases and all(isinstance(a, str) and a.strip() == a and a for a in aliases), name
        assert len(set(map(str.lower, aliases))) == len(aliases), f"{name}: duplicate aliases"
    for search, name in SEARCHES.items():
        assert search in pack.NODE_CLASS_MAPPINGS[name].SEARCH_ALIASES, (search, name)


def test_search_aliases_are_in_object_info_where_the_host_sends_them(pack, object_info):
    if "search_aliases" not in object_info["CLIPTextEncode"]:
        pytest.skip("this ComfyUI's /object_info has no search_aliases (0.3.75): web/js/reno_search.js adds them "
                    "(tests/js/reno_search.test.mjs); run with COMFYUI_PATH set to 0.33 or later")
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert object_info[name]["search_aliases"] == cls.SEARCH_ALIASES, name


def test_the_web_extension_adds_the_same_aliases_for_older_servers(pack):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node executable")
    module = (ROOT / "web" / "js" / "reno_search.js").as_uri()
    out = subprocess.run([node, "--input-type=module", "-e",
                          f"const m = await import({json.dumps(module)}); console.log(JSON.stringify(m.SEARCH_ALIASES))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {name: cls.SEARCH_ALIASES for name, cls in pack.NODE_CLASS_MAPPINGS.items()}


def test_every_text_input_has_a_default(pack, object_info):
    """The node library shows each input's default: a STRING input without one reads "prompt: undefined"."""
    seen = 0
    for name in pack.NODE_CLASS_MAPPINGS:
        for section in ("required", "optional"):
            for input_name, spec in object_info[name]["input"].get(section, {}).items():
                if spec[0] == "STRING":
                    seen += 1
                    assert isinstance(spec[1].get("default"), str), f"{name}.{input_name} has no default"
    assert seen >= 5  # prompt ×3, prompts, held_out, name
    assert object_info["ReNOSampler"]["input"]["required"]["prompt"][1]["default"] == ""
