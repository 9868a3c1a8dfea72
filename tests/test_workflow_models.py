"""The shipped workflows carry each loader's model files with their download links, as ComfyUI's own templates do.

Every loader node (checkpoint, diffusion model, text encoders, VAE, LoRA) in workflows/*.json lists the files its
widgets name in `properties.models`: [{name, url, directory}] (the format of the core templates, e.g.
comfyui_workflow_templates' sdxlturbo_example.json). ComfyUI's frontend reads them when a workflow opens: 1.58's
Missing Models panel offers each missing file for download (tests/browser checks that panel). The frontend only
offers a download for an https://huggingface.co/ or https://civitai.com/ URL of a .safetensors/.sft/.ckpt/.pth/.pt
file, and saves it under `directory`/`name`.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))

#: the models folder each loader type reads its widgets' files from
FOLDER = {
    "CheckpointLoaderSimple": "checkpoints",
    "UNETLoader": "diffusion_models",
    "VAELoader": "vae",
    "CLIPLoader": "text_encoders",
    "DualCLIPLoader": "text_encoders",
    "TripleCLIPLoader": "text_encoders",
    "QuadrupleCLIPLoader": "text_encoders",
    "LoraLoader": "loras",
    "LoraLoaderModelOnly": "loras",
}
MODEL_EXT = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
#: what the 1.58 frontend offers to download (missingModelMetadata: its allowed hosts and suffixes)
DOWNLOADABLE_EXT = (".safetensors", ".sft", ".ckpt", ".pth", ".pt")
ALLOWED_URL_PREFIXES = ("https://huggingface.co/", "https://civitai.com/")
#: files whose download has another name in its repository (README: "renamed")
RENAMED = {"lcm-lora-sdv1-5.safetensors": "pytorch_lora_weights.safetensors"}


def _model_files(node: dict) -> list[str]:
    values = node.get("widgets_values")
    if not isinstance(values, list):
        return []
    return [v for v in values if isinstance(v, str) and v.lower().endswith(MODEL_EXT)]


def _loaders(workflow: dict) -> list[dict]:
    return [n for n in workflow["nodes"] if _model_files(n)]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_loader_lists_its_files_with_a_download_link(path: Path):
    workflow = json.loads(path.read_text())
    loaders = _loaders(workflow)
    assert loaders, f"{path.name}: no loader names a model file"
    for node in loaders:
        assert node["type"] in FOLDER, (path.name, node["type"], "a loader type this test does not know: add its folder")
        folder = FOLDER[node["type"]]
        models = node.get("properties", {}).get("models")
        assert isinstance(models, list) and models, (path.name, node["id"], node["type"], "no properties.models")
        assert [m.get("name") for m in models] == _model_files(node), (path.name, node["id"], models)
        for m in models:
            assert set(m) <= {"name", "url", "directory", "hash", "hash_type"} and {"name", "url", "directory"} <= set(m), m
            assert m["directory"] == folder, (path.name, node["type"], m)
            url = urlparse(m["url"])
            assert m["url"].startswith(ALLOWED_URL_PREFIXES) and url.scheme == "https" and not url.query, m["url"]
            assert "/resolve/main/" in url.path, ("a direct download link (…/resolve/main/…), not a page", m["url"])
            assert url.path.rsplit("/", 1)[-1] == RENAMED.get(m["name"], m["name"]), m
            assert m["name"].endswith(DOWNLOADABLE_EXT), m


def test_one_link_per_file_across_the_workflows():
    """The same file (folder and name) downloads from the same place in every workflow."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for path in WORKFLOWS:
        for node in _loaders(json.loads(path.read_text())):
            for m in node.get("properties", {}).get("models", []):
                key = (m["directory"], m["name"])
                first = seen.setdefault(key, (m["url"], path.name))
                assert first[0] == m["url"], (key, first, (m["url"], path.name))
