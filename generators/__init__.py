"""Generators that turn noise into images differentiably, outside ComfyUI.

``diffusers_pipelines``: the one-step text-to-image models of the ReNO paper (SD-Turbo, SDXL-Turbo,
Hyper-SDXL 1-step, PixArt-alpha DMD, FLUX.1-schnell) driven from diffusers pipelines, called the way the
official ReNO code calls them at one step, and through optimizer/chain.py's sampling chain at several. diffusers is an optional extra (``pip install diffusers``): this package
imports without it and says so when a function needs it.
"""

from .diffusers_pipelines import (
    KINDS,
    DiffusersGenerator,
    DiffusersItemResult,
    OneStepGenerator,
    PipelineLoadError,
    build_generator,
    infer_kind,
    load_pipeline,
    pipeline_kind,
    run_diffusers_item,
)

__all__ = ["KINDS", "DiffusersGenerator", "DiffusersItemResult", "OneStepGenerator", "PipelineLoadError",
           "build_generator", "infer_kind", "load_pipeline", "pipeline_kind", "run_diffusers_item"]
