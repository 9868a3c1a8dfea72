"""Every shipped workflow is a valid UI-format graph whose nodes exist and whose widget values fit; converted
to an API prompt (widget values by INPUT_TYPES order, as the frontend's graphToPrompt does) it passes the
engine's own validate_prompt, and the few-step workflows run the sampling chain their model is made for.

A workflow may hold subgraphs (``definitions.subgraphs``, a node whose type is a subgraph's id is an instance of
it): its API prompt is the frontend's, with no subgraph in it: each inner node once per instance, id
``"<instance id>:<inner id>"``, links through the subgraph's inputs and outputs followed to the nodes they come
from (an input left unlinked on the instance gives the instance's widget value)."""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path

import comfy_host
import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
#: core node modules the workflows use besides the conftest's (ModelSamplingDiscrete for LCM-LoRA, ModelSamplingAuraFlow;
#: Flux2Scheduler and EmptyFlux2LatentImage for FLUX.2 Klein; T5TokenizerOptions for Chroma; StringConcatenate for
#: Lumina 2's system prompt; CFGNorm for Lens; TextEncodeMageFlowEdit for Mage-Flow, 0.33+; QuadrupleCLIPLoader for
#: HiDream; EmptyHunyuanImageLatent for HunyuanImage 2.1)
EXTRA_NODES = ("nodes_model_advanced.py", "nodes_flux.py", "nodes_cond.py", "nodes_string.py", "nodes_cfg.py",
               "nodes_mage.py", "nodes_hidream.py", "nodes_hunyuan.py")
#: the model-file inputs of the loaders the workflows use, and the model folder each lists
MODEL_INPUTS = {"ckpt_name": "checkpoints", "unet_name": "diffusion_models", "lora_name": "loras",
                "vae_name": "vae", "clip_name": "text_encoders", "clip_name1": "text_encoders",
                "clip_name2": "text_encoders", "clip_name3": "text_encoders", "clip_name4": "text_encoders"}
CHAIN = ("steps", "sampler_name", "scheduler", "gradient", "gradient_steps")
#: what each few-step workflow's ReNO node must run (the model's own sampler, scheduler and steps)
FEW_STEP = {
    "ReNO 10 SDXL-Lightning, 4 steps.json": {"steps": 4, "sampler_name": "euler", "scheduler": "sgm_uniform", "cfg": 1.0,
                                       "learning_rate": 10.0},
    "ReNO 14 SDXL with the Hyper-SD 8-step LoRA.json": {"steps": 8, "sampler_name": "euler", "scheduler": "sgm_uniform",
                                           "cfg": 1.0, "learning_rate": 10.0},
    "ReNO 15 SD 1.5 with LCM-LoRA, 4 steps.json": {"steps": 4, "sampler_name": "lcm", "scheduler": "sgm_uniform", "cfg": 1.0,
                                      "learning_rate": 5.0},
    "ReNO 11 FLUX.1-schnell, 4 steps.json": {"steps": 4, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0,
                                     "learning_rate": 5.0},
    "ReNO 12 FLUX.1-schnell, optimize at 1 step, render at 4.json": {"steps": 1, "sampler_name": "euler", "scheduler": "simple",
                                              "cfg": 1.0, "learning_rate": 5.0},
    # ComfyUI's image_z_image_turbo template: KSampler 8 steps, res_multistep, simple, cfg 1
    "ReNO 01 Z-Image-Turbo, 8 steps (start here).json": {"steps": 8, "sampler_name": "res_multistep", "scheduler": "simple", "cfg": 1.0,
                                "learning_rate": 5.0},
    # ReNO 01 with its ReNO part collapsed into one subgraph node (the frontend's Convert to Subgraph)
    "ReNO 02 Z-Image-Turbo as a subgraph.json": {"steps": 8, "sampler_name": "res_multistep", "scheduler": "simple",
                                                 "cfg": 1.0, "learning_rate": 5.0},
    # ComfyUI's image_qwen_image_2512_with_2steps_lora template: KSampler 2 steps, euler, simple, cfg 1
    "ReNO 03 Qwen-Image, Lightning 2 steps.json": {"steps": 2, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0,
                                                   "learning_rate": 5.0},
    # ComfyUI's image_krea2_turbo_t2i template: KSampler 8 steps, euler, simple, cfg 1
    "ReNO 18 Krea 2 Turbo, 8 steps.json": {"steps": 8, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0,
                                           "learning_rate": 5.0},
    # ComfyUI's image_netayume_lumina_t2i template: KSampler 30 steps, res_multistep, simple, cfg 4 (not few-step:
    # the model's own chain all the same)
    "ReNO 20 Lumina 2 (NetaYume), 30 steps.json": {"steps": 30, "sampler_name": "res_multistep", "scheduler": "simple",
                                                   "cfg": 4.0, "learning_rate": 5.0},
    # ComfyUI's image_mage_flow_turbo_t2i_int8 template: KSampler 4 steps, euler, simple, cfg 1
    "ReNO 22 Mage-Flow Turbo, 4 steps.json": {"steps": 4, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0,
                                              "learning_rate": 5.0},
    # ComfyUI's image_ernie_image_turbo template: KSampler 8 steps, euler, simple, cfg 1
    "ReNO 23 ERNIE-Image Turbo, 8 steps.json": {"steps": 8, "sampler_name": "euler", "scheduler": "simple", "cfg": 1.0,
                                                "learning_rate": 5.0},
    # ComfyUI's hidream_i1_fast template: KSampler 16 steps, lcm, normal, cfg 1; euler in ReNO, not lcm (lcm's fresh
    # noise per step leaves the start noise almost no say: tests/engine/test_hidream.py)
    "ReNO 24 HiDream-I1 Fast, 16 steps.json": {"steps": 16, "sampler_name": "euler", "scheduler": "normal", "cfg": 1.0,
                                               "learning_rate": 5.0},
    # no ComfyUI template for HunyuanImage 2.1: ComfyUI's defaults for it, KSampler's 20 steps, euler, simple, at
    # HunyuanImage 2.1's guidance scale 3.5 (tests/engine/test_hunyuan_image21.py; not few-step: its own chain)
    "ReNO 25 HunyuanImage 2.1, 20 steps.json": {"steps": 20, "sampler_name": "euler", "scheduler": "simple", "cfg": 3.5,
                                                "learning_rate": 5.0},
}
#: what each SamplerCustomAdvanced (SamplerCustom) template's ReNO Sampler (custom) must run (the template's KSamplerSelect sampler;
#: its steps are the template's scheduler's, checked by the family tests on tiny weights)
CUSTOM_CHAIN = {
    # image_flux2_klein_text_to_image: KSamplerSelect euler, Flux2Scheduler 4 steps, CFGGuider cfg 1
    "ReNO 04 FLUX.2 Klein, 4 steps.json": {"sampler_name": "euler", "learning_rate": 5.0},
    # image_chroma_text_to_image: KSamplerSelect euler, BasicScheduler beta 26 steps, CFGGuider cfg 3.5
    "ReNO 19 Chroma, 26 steps.json": {"sampler_name": "euler", "learning_rate": 5.0},
    # image_lens_turbo_t2i: KSamplerSelect euler, BasicScheduler simple 4 steps, SamplerCustom cfg 1
    "ReNO 21 Lens Turbo, 4 steps.json": {"sampler_name": "euler", "learning_rate": 5.0},
}
#: workflows whose model family is newer than some engines: (the comfy.supported_models class they need)
NEEDS_MODEL_CLASS = {"ReNO 18 Krea 2 Turbo, 8 steps.json": "Krea2", "ReNO 21 Lens Turbo, 4 steps.json": "Lens",
                     "ReNO 22 Mage-Flow Turbo, 4 steps.json": "MageFlow",
                     "ReNO 23 ERNIE-Image Turbo, 8 steps.json": "ErnieImage"}
PAPER_MIX = [("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01)]


@pytest.fixture(scope="module")
def wf_engine(engine):
    """The engine with the extra core node modules the workflows use."""
    extra = [f for f in EXTRA_NODES if (engine.host.root / "comfy_extras" / f).is_file()]
    if extra:
        comfy_host.boot_engine(engine.host, (), extra_nodes=extra)
    return engine


def widget_names(cls) -> list[tuple[str, bool]]:
    """The widget values a frontend stores for a node class, in order (seed control included),
    each with whether it is required (saved workflows may lack trailing optional ones)."""
    names = []
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO":
                if opts.get("forceInput"):
                    continue
                names.append((name, section == "required"))
                if kind == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    names.append((f"{name}:control_after_generate", section == "required"))
    return names


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ holds no .json file"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_consistent_ui_format(path):
    wf = json.loads(path.read_text())
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) <= wf["last_node_id"]
    for link_id, origin, o_slot, target, t_slot, kind in wf["links"]:
        assert link_id <= wf["last_link_id"]
        out = nodes[origin]["outputs"][o_slot]
        inp = nodes[target]["inputs"][t_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"link {link_id} is not wired both ways"
        assert out["type"] == inp["type"] == kind, f"link {link_id}: {out['type']} -> {inp['type']} ({kind})"
    linked = {lk[0] for lk in wf["links"]}
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in linked
    assert (path.with_suffix(".png").exists() or path.with_suffix(".jpg").exists()), "no preview image"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_exist_and_widget_values_fit(path, wf_engine):
    engine = wf_engine
    wf = json.loads(path.read_text())
    missing = []
    for n in all_nodes(wf):
        if n["type"] in FRONTEND_ONLY:
            continue
        cls = engine.nodes.NODE_CLASS_MAPPINGS.get(n["type"])
        if cls is None and _too_new(path.name, engine):
            missing.append(n["type"])
            continue
        assert cls is not None, f"{path.name}: node type {n['type']} is not registered on {engine.info}"
        if n["type"].startswith("ReNO"):
            names = widget_names(cls)
            values = n.get("widgets_values", [])
            required = sum(req for _, req in names)
            assert required <= len(values) <= len(names), f"{n['type']}: widgets_values {values} do not match {names}"
            names = [name for name, _ in names]
            types = cls.INPUT_TYPES()
            specs = {**types["required"], **types.get("optional", {})}
            for name, value in zip(names, values):
                if ":" in name:
                    assert value in ("fixed", "increment", "decrement", "randomize")
                    continue
                kind = specs[name][0]
                if isinstance(kind, list):
                    assert value in kind, f"{n['type']}.{name}: {value!r} is not one of {kind}"
                elif kind in ("INT", "FLOAT"):
                    opts = specs[name][1]
                    assert isinstance(value, (int, float)) and opts["min"] <= value <= opts["max"], (name, value)
                elif kind == "STRING":
                    assert isinstance(value, str)
    if missing:
        pytest.skip(f"{path.name}: core node type(s) {sorted(set(missing))} are not in {engine.info} (newer ComfyUI)")


SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # the ids of a subgraph's input and output nodes in its links


def _subgraphs(wf: dict) -> dict[str, dict]:
    return {sg["id"]: sg for sg in wf.get("definitions", {}).get("subgraphs", [])}


def _links(graph: dict) -> dict[int, tuple]:
    """A graph's links by id as (origin, origin slot, target, target slot, type): the top level saves them as
    lists, a subgraph definition as objects."""
    return {lk[0]: tuple(lk[1:6]) for lk in graph["links"]} if graph["links"] and isinstance(graph["links"][0], list) \
        else {lk["id"]: (lk["origin_id"], lk["origin_slot"], lk["target_id"], lk["target_slot"], lk["type"])
              for lk in graph["links"]}


def all_nodes(wf: dict) -> list[dict]:
    """The workflow's nodes, those inside its subgraph definitions included, its subgraph instances left out
    (a workflow without subgraphs: its nodes)."""
    subgraphs = _subgraphs(wf)
    return [n for n in wf["nodes"] if n["type"] not in subgraphs] + [n for sg in subgraphs.values() for n in sg["nodes"]]


def flat_nodes(wf: dict) -> list[tuple[str, dict, dict]]:
    """Each node the API prompt holds as (its prompt id, the node, {linked input: [source id, slot] or the
    promoted widget's value}), subgraphs expanded as the frontend's graphToPrompt does (module docstring)."""
    subgraphs = _subgraphs(wf)
    flat = []

    def source(graph: dict, links: dict, prefix: str, parent, link_id):
        """What link `link_id` of `graph` carries: [prompt id, slot], a value, or None (unconnected)."""
        origin, slot = links[link_id][:2]
        if origin == SUBGRAPH_INPUT:  # from the instance's input `slot`: its link outside, or its widget's value
            instance, outer_graph, outer_links, outer_prefix, outer_parent = parent
            inp = instance["inputs"][slot]
            if inp.get("link") is not None:
                return source(outer_graph, outer_links, outer_prefix, outer_parent, inp["link"])
            widgets = [i["name"] for i in instance["inputs"] if i.get("widget")]
            if inp.get("widget") and inp["name"] in widgets:
                return instance["widgets_values"][widgets.index(inp["name"])]
            return None
        node = next(n for n in graph["nodes"] if n["id"] == origin)
        if node["type"] in subgraphs:  # from the instance's output `slot`: the inner link into the output node
            sg = subgraphs[node["type"]]
            inner = _links(sg)
            (inner_id,) = [i for i, lk in inner.items() if lk[2] == SUBGRAPH_OUTPUT and lk[3] == slot]
            return source(sg, inner, f"{prefix}{origin}:", (node, graph, links, prefix, parent), inner_id)
        return [f"{prefix}{origin}", slot]

    def walk(graph: dict, prefix: str, parent) -> None:
        links = _links(graph)
        for n in graph["nodes"]:
            if n["type"] in subgraphs:
                if n.get("mode", 0) == 0:
                    walk(subgraphs[n["type"]], f"{prefix}{n['id']}:", (n, graph, links, prefix, parent))
                continue
            sources = {inp["name"]: source(graph, links, prefix, parent, inp["link"])
                       for inp in n.get("inputs", []) if inp.get("link") is not None}
            flat.append((f"{prefix}{n['id']}", n, {k: v for k, v in sources.items() if v is not None}))

    walk(wf, "", None)
    return flat


def to_api(wf: dict, engine) -> dict:
    """The API prompt of a UI-format workflow: each widget value to its input by INPUT_TYPES order (a seed's
    control_after_generate value skipped), each link to [source id, slot], a linked widget's own value dropped
    (subgraphs expanded: flat_nodes)."""
    prompt = {}
    for node_id, n, sources in flat_nodes(wf):
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) != 0:
            continue
        cls = engine.nodes.NODE_CLASS_MAPPINGS[n["type"]]
        inputs = {}
        for (name, _), value in zip(widget_names(cls), n.get("widgets_values", [])):
            if ":" not in name:
                inputs[name] = value
        inputs.update(sources)
        prompt[node_id] = {"class_type": n["type"], "inputs": inputs}
    return prompt


@contextlib.contextmanager
def placeholder_models(engine, prompt: dict, root: Path):
    """Empty files for the model names the prompt loads, in a temporary extra folder per model type, so that
    validation (which checks each name against the folder's listing) sees them; removed afterwards."""
    fp = engine.folder_paths
    added = []
    for node in prompt.values():
        for name, value in node["inputs"].items():
            folder = MODEL_INPUTS.get(name)
            if folder is None or not isinstance(value, str) or folder not in fp.folder_names_and_paths:
                continue
            target = root / folder
            target.mkdir(parents=True, exist_ok=True)
            (target / value).touch()
            if (folder, str(target)) not in added:
                fp.add_model_folder_path(folder, str(target))
                added.append((folder, str(target)))
    try:
        yield
    finally:
        for folder, path in added:
            with contextlib.suppress(ValueError):
                fp.folder_names_and_paths[folder][0].remove(path)
        fp.filename_list_cache.clear() if hasattr(fp, "filename_list_cache") else None


def _too_new(name: str, engine) -> str | None:
    """Why ``engine`` cannot run the workflow ``name`` (its model family is newer: NEEDS_MODEL_CLASS), or None."""
    import comfy.supported_models

    needs = NEEDS_MODEL_CLASS.get(name)
    if needs and not hasattr(comfy.supported_models, needs):
        return f"{name}: {engine.info} has no comfy.supported_models.{needs}"
    return None


def _core_types_missing(wf: dict, engine) -> list[str]:
    return sorted({n["type"] for n in all_nodes(wf)
                   if n["type"] not in FRONTEND_ONLY and n["type"] not in engine.nodes.NODE_CLASS_MAPPINGS})


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_api_prompt_passes_validation(path, wf_engine, tmp_path):
    """What Queue would send for the shipped workflow (its model files present, empty) passes validate_prompt,
    and every ReNO Sampler gets the sampling-chain inputs: the saved ones, or the defaults (one step, euler,
    simple, exact) for a workflow saved before they existed."""
    engine = wf_engine
    reason = _too_new(path.name, engine)
    if reason:
        pytest.skip(f"{reason} (its loaders' types do not validate there: a newer ComfyUI runs it)")
    wf = json.loads(path.read_text())
    missing = _core_types_missing(wf, engine)
    assert not missing, f"{path.name}: {missing} not registered on {engine.info}"
    prompt = to_api(wf, engine)
    with placeholder_models(engine, prompt, tmp_path):
        ok, error, outputs, node_errors = engine.validate(prompt)
    assert ok, f"{path.name}: {error}\n{json.dumps(node_errors, indent=1)[:3000]}"
    assert outputs, f"{path.name}: no output node"
    one_step = {"steps": 1, "sampler_name": "euler", "scheduler": "simple", "gradient": "exact", "gradient_steps": 1}
    cls = engine.nodes.NODE_CLASS_MAPPINGS["ReNOSampler"]
    optional = cls.INPUT_TYPES()["optional"]
    signature = inspect.signature(cls.sample).parameters
    for node in prompt.values():
        if node["class_type"] != "ReNOSampler":
            continue
        if path.name in FEW_STEP:
            assert set(CHAIN) <= set(node["inputs"]), f"{path.name}: the chain inputs are not saved"
            continue
        # saved before the chain existed: what is not in the prompt runs at the defaults, today's one step
        for k in CHAIN:
            got = node["inputs"].get(k, signature[k].default)
            assert got == one_step[k] == optional[k][1]["default"], (path.name, k, got)


def _skip_where_nodes_are_newer(name: str, wf: dict, engine) -> None:
    """Skip, naming the engine, where the workflow's family and some of its core nodes are newer than the engine."""
    missing = _core_types_missing(wf, engine)
    reason = _too_new(name, engine)
    if missing and reason:
        pytest.skip(f"{reason}, nor {', '.join(missing)} (a newer ComfyUI runs it)")


def _reno_nodes(wf: dict, type_: str) -> list[dict]:
    return [n for n in all_nodes(wf) if n["type"] == type_]


def _by_name(engine, node: dict) -> dict:
    cls = engine.nodes.NODE_CLASS_MAPPINGS[node["type"]]
    return {name: v for (name, _), v in zip(widget_names(cls), node.get("widgets_values", [])) if ":" not in name}


@pytest.mark.parametrize("name", sorted(FEW_STEP))
def test_few_step_workflow_runs_its_models_chain(name, wf_engine):
    """Each few-step workflow saves every ReNO Sampler widget (append-only: the saved values line up with
    INPUT_TYPES order, so steps/sampler_name/scheduler land where the frontend puts them) with the model's own
    sampler, scheduler, steps, cfg and learning rate, the paper's reward mix, and a Note naming its files."""
    engine = wf_engine
    path = next(p for p in WORKFLOWS if p.name == name)
    wf = json.loads(path.read_text())
    _skip_where_nodes_are_newer(name, wf, engine)
    (reno,) = _reno_nodes(wf, "ReNOSampler")
    cls = engine.nodes.NODE_CLASS_MAPPINGS["ReNOSampler"]
    assert len(reno["widgets_values"]) == len(widget_names(cls)), "every ReNO Sampler widget saved"
    values = _by_name(engine, reno)
    want = FEW_STEP[name]
    assert {k: values[k] for k in want} == want
    assert values["gradient"] == "exact" and values["memory"] == "auto"
    mix = [tuple(n["widgets_values"][:2]) for n in _reno_nodes(wf, "ReNORewardLoader")]
    assert mix == PAPER_MIX
    (note,) = _reno_nodes(wf, "Note")
    text = note["widgets_values"][0]
    assert "https://huggingface.co/" in text and "not measured yet" in text
    for n in all_nodes(wf):
        for key, value in _by_name(engine, n).items() if n["type"] not in FRONTEND_ONLY else ():
            if key in MODEL_INPUTS and MODEL_INPUTS[key] != "text_encoders":
                assert value in text, f"{name}: the Note does not name {value}"


@pytest.mark.parametrize("name", sorted(CUSTOM_CHAIN))
def test_custom_sampler_workflow_runs_its_models_chain(name, wf_engine):
    """Each SamplerCustomAdvanced (or SamplerCustom) template's workflow saves every ReNO Sampler (custom) widget with
    the template's sampler (KSamplerSelect's) and the learning rate, runs it as that sampler node's SAMPLER, and has
    the paper's reward mix and a Note naming its files."""
    engine = wf_engine
    wf = json.loads(next(p for p in WORKFLOWS if p.name == name).read_text())
    _skip_where_nodes_are_newer(name, wf, engine)
    (reno,) = _reno_nodes(wf, "ReNOSamplerCustom")
    cls = engine.nodes.NODE_CLASS_MAPPINGS["ReNOSamplerCustom"]
    assert len(reno["widgets_values"]) == len(widget_names(cls)), "every ReNO Sampler (custom) widget saved"
    values = _by_name(engine, reno)
    want = CUSTOM_CHAIN[name]
    assert {k: values[k] for k in want} == want
    assert values["gradient"] == "exact" and values["memory"] == "auto"
    assert not _reno_nodes(wf, "KSamplerSelect"), "ReNO Sampler (custom) is the SAMPLER in KSamplerSelect's place"
    (host,) = _reno_nodes(wf, "SamplerCustomAdvanced") + _reno_nodes(wf, "SamplerCustom")
    (link,) = [lk for lk in wf["links"] if lk[3] == host["id"] and lk[5] == "SAMPLER"]
    assert link[1] == reno["id"]
    mix = [tuple(n["widgets_values"][:2]) for n in _reno_nodes(wf, "ReNORewardLoader")]
    assert mix == PAPER_MIX
    (note,) = _reno_nodes(wf, "Note")
    text = note["widgets_values"][0]
    assert "https://huggingface.co/" in text and "not measured yet" in text
    for n in all_nodes(wf):
        for key, value in _by_name(engine, n).items() if n["type"] not in FRONTEND_ONLY else ():
            if key in MODEL_INPUTS and MODEL_INPUTS[key] != "text_encoders":
                assert value in text, f"{name}: the Note does not name {value}"


def test_lora_workflows_load_the_lora_as_their_makers_say(wf_engine):
    """Hyper-SD 8-step LoRA at full strength (ByteDance fuses the SDXL LoRAs at scale 1); LCM-LoRA through
    LoraLoader then ModelSamplingDiscrete(lcm) into ReNO, as ComfyUI runs LCM."""
    engine = wf_engine
    hyper = json.loads((WORKFLOWS[0].parent / "ReNO 14 SDXL with the Hyper-SD 8-step LoRA.json").read_text())
    (lora,) = _reno_nodes(hyper, "LoraLoader")
    assert _by_name(engine, lora) == {"lora_name": "Hyper-SDXL-8steps-lora.safetensors", "strength_model": 1.0,
                                      "strength_clip": 1.0}
    lcm = json.loads((WORKFLOWS[0].parent / "ReNO 15 SD 1.5 with LCM-LoRA, 4 steps.json").read_text())
    prompt = to_api(lcm, engine)
    (reno,) = [n for n in prompt.values() if n["class_type"] == "ReNOSampler"]
    sampling = prompt[reno["inputs"]["model"][0]]
    assert sampling["class_type"] == "ModelSamplingDiscrete" and sampling["inputs"]["sampling"] == "lcm"
    assert prompt[sampling["inputs"]["model"][0]]["class_type"] == "LoraLoader"


def test_flux_render_workflow_renders_the_optimized_noise_at_4_steps(wf_engine):
    """ReNO at 1 step; ReNO Noise -> SamplerCustomAdvanced (BasicGuider, KSamplerSelect euler, BasicScheduler
    simple 4 steps, the same model and latent); both images saved."""
    engine = wf_engine
    wf = json.loads((WORKFLOWS[0].parent / "ReNO 12 FLUX.1-schnell, optimize at 1 step, render at 4.json").read_text())
    prompt = to_api(wf, engine)
    (reno_id,) = [i for i, n in prompt.items() if n["class_type"] == "ReNOSampler"]
    (host,) = [n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced"]
    src = {k: prompt[v[0]] for k, v in host["inputs"].items()}
    assert src["noise"]["class_type"] == "ReNONoise" and src["noise"]["inputs"]["history"] == [reno_id, 2]
    assert src["guider"]["class_type"] == "BasicGuider"
    assert src["sampler"] == {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    assert src["sigmas"]["class_type"] == "BasicScheduler"
    assert {k: src["sigmas"]["inputs"][k] for k in ("scheduler", "steps", "denoise")} == {
        "scheduler": "simple", "steps": 4, "denoise": 1.0}
    reno = prompt[reno_id]["inputs"]
    assert src["guider"]["inputs"]["model"] == reno["model"] == src["sigmas"]["inputs"]["model"]
    assert host["inputs"]["latent_image"] == reno["latent_image"]
    saved = [n for n in prompt.values() if n["class_type"] == "SaveImage"]
    assert sorted(str(n["inputs"]["images"][0]) for n in saved) == sorted(
        [reno_id, next(i for i, n in prompt.items() if n["class_type"] == "VAEDecode")])


def test_hyper_sdxl_1step_runs_at_t_800(wf_engine):
    """Hyper-SDXL 1-step goes through ReNO Sampler (custom) with sigmas [sigma(t=800), 0]: BasicScheduler (simple,
    1 step) then SetFirstSigma; the model maps that sigma to exactly timestep 800."""
    engine = wf_engine
    wf = json.loads((WORKFLOWS[0].parent / "ReNO 13 Hyper-SDXL, 1 step.json").read_text())
    prompt = to_api(wf, engine)
    (host,) = [n for n in prompt.values() if n["class_type"] == "SamplerCustomAdvanced"]
    assert prompt[host["inputs"]["sampler"][0]]["class_type"] == "ReNOSamplerCustom"
    first = prompt[host["inputs"]["sigmas"][0]]
    assert first["class_type"] == "SetFirstSigma"
    sched = prompt[first["inputs"]["sigmas"][0]]
    assert sched["class_type"] == "BasicScheduler" and sched["inputs"]["steps"] == 1
    import torch
    from comfy.model_sampling import ModelSamplingDiscrete

    ms = ModelSamplingDiscrete(None)  # SDXL's schedule: scaled_linear, 0.00085 to 0.012, 1000 steps
    sigma = torch.tensor(float(first["inputs"]["sigma"]))
    assert int(ms.timestep(sigma)) == 800
    # the workflow's 6-decimal literal (off by <= 5e-7) against the float32 schedule (<= 2 roundings of ~5.1)
    assert abs(float(sigma) - float(ms.sigma(torch.tensor(800.0)))) <= 5e-7 + 2 * torch.finfo(torch.float32).eps * 5.2
    assert _by_name(engine, next(n for n in wf["nodes"] if n["type"] == "ReNOSamplerCustom"))["learning_rate"] == 10.0


SUBGRAPH_WORKFLOWS = [p for p in WORKFLOWS if _subgraphs(json.loads(p.read_text()))]


@pytest.mark.parametrize("path", SUBGRAPH_WORKFLOWS, ids=lambda p: p.name)
def test_subgraphs_are_consistent(path):
    """Each subgraph definition's links are wired both ways (through its input and output nodes too), with one
    type at both ends; each instance has the inputs and outputs of its subgraph, in order."""
    wf = json.loads(path.read_text())
    subgraphs = _subgraphs(wf)
    for sg in subgraphs.values():
        nodes = {n["id"]: n for n in sg["nodes"]}
        assert len(nodes) == len(sg["nodes"])
        for link_id, (origin, o_slot, target, t_slot, kind) in _links(sg).items():
            if origin == SUBGRAPH_INPUT:
                out = sg["inputs"][o_slot]
                assert link_id in out["linkIds"], f"{sg['name']}: link {link_id} is not on its input"
            else:
                out = nodes[origin]["outputs"][o_slot]
                assert link_id in out["links"], f"{sg['name']}: link {link_id} is not on its origin"
            if target == SUBGRAPH_OUTPUT:
                inp = sg["outputs"][t_slot]
                assert link_id in inp["linkIds"], f"{sg['name']}: link {link_id} is not on its output"
            else:
                inp = nodes[target]["inputs"][t_slot]
                assert inp["link"] == link_id, f"{sg['name']}: link {link_id} is not on its target"
            assert out["type"] == inp["type"] == kind, f"{sg['name']}: link {link_id}: {out['type']} -> {inp['type']}"
        linked = set(_links(sg))
        for n in sg["nodes"]:
            for inp in n.get("inputs", []):
                assert inp.get("link") is None or inp["link"] in linked
    instances = [n for n in wf["nodes"] if n["type"] in subgraphs]
    assert instances, f"{path.name}: no node is an instance of its subgraphs"
    for n in instances:
        sg = subgraphs[n["type"]]
        assert [(i["name"], i["type"]) for i in n["inputs"]] == [(i["name"], i["type"]) for i in sg["inputs"]]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == [(o["name"], o["type"]) for o in sg["outputs"]]


def test_the_z_image_subgraph_workflow_sends_what_the_z_image_workflow_sends(wf_engine):
    """ReNO 02 is ReNO 01 with its ReNO part (ModelSamplingAuraFlow, the prompt's encoding and the zeroed negative,
    the reward loaders, the ReNO Sampler) in one subgraph node (model, clip, prompt, vae, latent and the promoted
    seed in; image and history out): its API prompt is ReNO 01's, the inner nodes' ids as "<instance>:<id>"."""
    engine = wf_engine
    plain = json.loads((WORKFLOWS[0].parent / "ReNO 01 Z-Image-Turbo, 8 steps (start here).json").read_text())
    wf = json.loads((WORKFLOWS[0].parent / "ReNO 02 Z-Image-Turbo as a subgraph.json").read_text())
    (sg,) = _subgraphs(wf).values()
    (instance,) = [n for n in wf["nodes"] if n["type"] == sg["id"]]
    assert instance["title"] == sg["name"] == "ReNO Z-Image"
    assert [i.get("label", i["name"]) for i in instance["inputs"]] == ["model", "clip", "prompt", "vae", "latent", "seed"]
    assert [o["name"] for o in instance["outputs"]] == ["image", "history"]
    inner = {str(n["id"]) for n in sg["nodes"]}
    assert {n["type"] for n in sg["nodes"]} == {"ModelSamplingAuraFlow", "CLIPTextEncode", "ConditioningZeroOut",
                                                "ReNORewardLoader", "ReNOSampler"}

    def rename(node_id: str) -> str:
        return f"{instance['id']}:{node_id}" if node_id in inner else node_id

    want = {rename(i): {"class_type": n["class_type"],
                        "inputs": {k: [rename(v[0]), v[1]] if isinstance(v, list) else v for k, v in n["inputs"].items()}}
            for i, n in to_api(plain, engine).items()}
    got = to_api(wf, engine)
    for node_id, node in got.items():  # inputs appended to a node after ReNO 01 was saved: at their defaults
        cls = engine.nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
        optional = cls.INPUT_TYPES().get("optional", {})
        for k in set(node["inputs"]) - set(want.get(node_id, {}).get("inputs", {})):
            assert k in optional and node["inputs"].pop(k) == optional[k][1]["default"], (node_id, k)
    assert got == want
    assert got[f"{instance['id']}:13"]["inputs"]["seed"] == instance["widgets_values"][1]  # the promoted seed widget
