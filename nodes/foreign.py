"""Models that ride along in the conditioning: ControlNets, T2I-Adapters, ControlLoRAs, GLIGEN, hook models.

ComfyUI loads them beside the diffusion model (``comfy.sampler_helpers.get_additional_models``) and runs them
inside the model call, so ReNO's gradient flows through them too. Their weights were made under the
executor's inference mode, like the model's: the bridge must swap them for normal tensors as well, or the
first backward fails with "Inference tensors cannot be saved for backward".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn


def _control_chain(control) -> Iterable:
    seen: set[int] = set()
    while control is not None and id(control) not in seen:
        seen.add(id(control))
        yield control
        control = getattr(control, "previous_controlnet", None)


def _modules_of(obj) -> list[nn.Module]:
    """The nn.Modules a control object, a ModelPatcher or a module stands for."""
    if isinstance(obj, nn.Module):
        return [obj]
    inner = getattr(obj, "model", None)  # a ModelPatcher
    return [inner] if isinstance(inner, nn.Module) else []


def _cond_entries(conds) -> Iterable[Mapping]:
    if isinstance(conds, Mapping):  # the guider's {"positive": [...], "negative": [...]}
        for value in conds.values():
            yield from _cond_entries(value)
    elif isinstance(conds, (list, tuple)):
        for value in conds:
            if isinstance(value, Mapping):
                yield value
            elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], Mapping):
                yield value[1]  # CONDITIONING as nodes pass it: [tensor, {...}]


def control_modules(model_wrap) -> list[nn.Module]:
    """Every nn.Module of the control models and additional models in the conditioning that a sampler's
    ``sample(model_wrap, ...)`` runs with, once each.

    The processed conditioning is on the guider (``model_wrap.conds``). For each ``control`` (and its
    ``previous_controlnet`` chain): its ``control_model`` (ControlNet, ControlLoRA once pre-run),
    ``t2i_model`` (T2I-Adapter) and the models of ``get_models()``; plus ``gligen`` and ``additional_models``.
    """
    sources = [getattr(model_wrap, "conds", None)]
    found: list[nn.Module] = []
    seen: set[int] = set()

    def add(obj):
        for module in _modules_of(obj):
            if id(module) not in seen:
                seen.add(id(module))
                found.append(module)

    for source in sources:
        for entry in _cond_entries(source):
            for control in _control_chain(entry.get("control")):
                add(getattr(control, "control_model", None))
                add(getattr(control, "t2i_model", None))
                get_models = getattr(control, "get_models", None)
                for patcher in (get_models() if callable(get_models) else []):
                    add(patcher)
            gligen = entry.get("gligen")
            if isinstance(gligen, (list, tuple)):
                for item in gligen:
                    add(item)
            extra = entry.get("additional_models")
            for patcher in (extra if isinstance(extra, (list, tuple)) else [extra] if extra is not None else []):
                add(patcher)
    return found
