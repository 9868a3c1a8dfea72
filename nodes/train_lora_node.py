"""ReNO Train Reward LoRA: reward fine-tuning of a LoRA (AlignProp, DRTune, ReFL) with ComfyUI's own adapters."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch
from PIL import Image

from ..optimizer.chain import SAMPLERS
from ..training.reward_finetuning import METHODS, StepRecord, TrainConfig, TrainResult
from .events import send_iteration
from .guards import check_model_and_vae, with_oom_advice
from .history import ReNOHistory
from .inputs import finite_input, scheduler_input
from .memory import AUTO, MEMORY_INPUT, check_mode
from .preview_node import save_previews
from .run import make_ensemble, reward_info_of
from .training import PREVIEW_SIZE, Sampling, apply_lora, encode_prompts, parse_prompts, train_reward_lora

log = logging.getLogger(__name__)

CATEGORY = "ReNO/training"
NODE = "ReNO Train Reward LoRA"
HELD_OUT = "held-out"
MIN_LEARNING_RATE = 1e-7  # the widget's minimum: a learning rate of 0 trains nothing, and TrainConfig refuses it
# TrainConfig's fields named as the node's inputs, for its errors
CONFIG_INPUTS = {"steps": "training_steps", "patience": "early_stop_patience", "learning_rate": "learning_rate",
                 "batch_size": "batch_size", "grad_accumulation": "grad_accumulation", "sampler_steps": "sampler_steps",
                 "k": "k", "eval_every": "eval_every", "method": "method", "seed": "seed"}

_METHOD_TIP = (
    "alignprop: full rollouts, the gradient through the last K steps (K drawn in 1..k per rollout), reward on the "
    "final image.\n"
    "drtune: the model's input detached at every step, k equally spaced steps trained, the rollout stopped at a "
    "random late step and scored on its x0 prediction (cheap; good for low-level rewards).\n"
    "refl: no-grad sampling to a random late step, one step with gradient, its x0 scored; loss relu(c - reward)."
)


class ReNORewardLoRATrainer:
    DESCRIPTION = (
        "Trains a LoRA so the model itself scores higher on the connected rewards (reward fine-tuning through the "
        "sampling chain: AlignProp, DRTune or ReFL). The LoRA is ComfyUI's own format: save it with Save LoRA "
        "Weights, apply it with Load LoRA Model (or Load LoRA from the saved file). Watch the held-out reward: when it "
        "stops rising while the training reward still climbs, the model is learning to game the reward."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "reward fine-tuning", "train lora", "lora training", "alignprop", "drtune", "refl"
    ]
    FUNCTION = "train"
    RETURN_TYPES = ("MODEL", "LORA_MODEL", "RENO_HISTORY")
    RETURN_NAMES = ("model", "lora", "history")
    OUTPUT_TOOLTIPS = (
        "The model with the trained LoRA applied.",
        "The trained LoRA (ComfyUI's LORA_MODEL: connect Save LoRA Weights or Load LoRA Model).",
        "Per training step: the loss, each reward and the held-out reward (for ReNO Iteration Preview).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to train a LoRA for (a few-step or one-step model)."}),
                "clip": ("CLIP", {"tooltip": "Encodes the prompts (as CLIP Text Encode does)."}),
                "vae": ("VAE", {"tooltip": "Decodes the rollouts' latents for the rewards."}),
                "rewards": ("RENO_REWARDS", {"tooltip": "The reward stack (ReNO Load Reward nodes) to train for."}),
                "prompts": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                       "tooltip": "Training prompts, one per line (blank lines are ignored)."}),
                "method": (list(METHODS), {"default": "alignprop", "tooltip": _METHOD_TIP}),
                "training_steps": ("INT", {"default": 200, "min": 1, "max": 100000,
                                           "tooltip": "Optimizer steps (each batch_size x grad_accumulation rollouts)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": MIN_LEARNING_RATE, "max": 1.0, "step": 1e-5,
                                            "round": 1e-7,
                                            "tooltip": "AdamW learning rate of the LoRA (> 0; 1e-4 is typical)."}),
                "rank": ("INT", {"default": 8, "min": 1, "max": 128, "tooltip": "LoRA rank."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Rollouts per step (each its own prompt and noise)."}),
                "grad_accumulation": ("INT", {"default": 1, "min": 1, "max": 256,
                                              "tooltip": "Accumulate this many batches before each optimizer step."}),
                "sampler_steps": ("INT", {"default": 4, "min": 1, "max": 100,
                                          "tooltip": "Sampling steps of each rollout (the model's own step count)."}),
                "sampler_name": (list(SAMPLERS), {"default": "euler",
                                                  "tooltip": "The sampler of the rollouts (as ComfyUI's)."}),
                "scheduler": scheduler_input(),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance of the rollouts (1.0 for turbo models)."}),
                "k": ("INT", {"default": 1, "min": 1, "max": 100,
                              "tooltip": "alignprop: the most final steps that carry gradient; drtune: the steps "
                                         "trained per rollout; refl: ignored (one step)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the prompt order, the noises, the truncations and the held-out "
                                            "images."}),
            },
            "optional": {
                "existing_lora": ("LORA_MODEL", {"tooltip": "Continue training this LoRA (e.g. an earlier trainer's)."}),
                "held_out": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                        "tooltip": "Prompts never trained on, one per line: their reward is measured "
                                                   "every eval_every steps (the guard against reward hacking)."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Width of the training and held-out images."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Height of the training and held-out images."}),
                "eval_every": ("INT", {"default": 10, "min": 1, "max": 100000,
                                       "tooltip": "Measure the held-out reward every this many steps."}),
                "early_stop_patience": ("INT", {"default": 0, "min": 0, "max": 1000,
                                                "tooltip": "Stop when the held-out reward has not improved for this "
                                                           "many evaluations, and keep the best evaluated LoRA "
                                                           "(0: train all steps, keep the last)."}),
                "memory": (MEMORY_INPUT[0], dict(MEMORY_INPUT[1])),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, rewards, prompts, method, training_steps, learning_rate, rank, batch_size,
              grad_accumulation, sampler_steps, sampler_name, scheduler, cfg, k, seed, existing_lora=None,
              held_out="", width=512, height=512, eval_every=10, early_stop_patience=0, memory=AUTO, unique_id=None):
        return train_node(model, clip, vae, rewards, prompts, method, training_steps, learning_rate, rank,
                          batch_size, grad_accumulation, sampler_steps, sampler_name, scheduler, cfg, k, seed,
                          existing_lora, held_out, width, height, eval_every, early_stop_patience, memory, unique_id)


def train_node(model, clip, vae, rewards, prompts, method, training_steps, learning_rate, rank, batch_size,
               grad_accumulation, sampler_steps, sampler_name, scheduler, cfg, k, seed, existing_lora=None,
               held_out="", width=512, height=512, eval_every=10, early_stop_patience=0, memory=AUTO,
               unique_id=None):
    texts, held_texts = training_prompts(NODE, prompts, held_out)
    if sampler_name not in SAMPLERS:
        raise ValueError(f"{NODE}: sampler_name {sampler_name!r} is not one of {', '.join(SAMPLERS)}")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"{NODE}: scheduler {scheduler!r} is not one of this ComfyUI's schedulers")
    check_mode(memory)
    cfg = finite_input(NODE, "cfg", cfg, "1.0 = no guidance, for turbo models")
    lr = finite_input(NODE, "learning_rate", learning_rate, "the LoRA's AdamW step size, e.g. 1e-4")
    config = train_config(method=method, steps=int(training_steps), learning_rate=lr, batch_size=int(batch_size),
                          grad_accumulation=int(grad_accumulation), sampler_steps=int(sampler_steps), k=int(k),
                          eval_every=int(eval_every), patience=int(early_stop_patience), seed=int(seed) % 2**63)
    check_model_and_vae(model, vae)
    sampling = Sampling(int(sampler_steps), sampler_name, scheduler, cfg, int(width), int(height))
    adapters, result, history, held_previews = train_with_progress(
        NODE, clip, rewards, texts, held_texts, config, sampling, unique_id,
        lambda train_set, held_set, negative, on_step, previews: train_reward_lora(
            model, vae, rewards, train_set, held_set, negative, sampling, config, int(rank), existing_lora, memory,
            on_step, previews))
    lora = adapters.state()
    trained = apply_lora(model, lora)
    log.info("%s: %s", NODE, summary_line(result, config))
    ui = {"reno_chart": [history.chart()], "reno_training": [training_summary(result, config, held_texts)]}
    if held_previews:
        ui["images"] = _held_out_files(held_previews, result)
    return {"ui": ui, "result": (trained, lora, history)}


def training_prompts(node: str, prompts: str, held_out: str) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts), one per line; refused when there is none to train on or when a held-out
    prompt is also trained on."""
    texts = parse_prompts(prompts)
    if not texts:
        raise ValueError(f"{node}: 'prompts' is empty: write the training prompts, one per line.")
    held_texts = parse_prompts(held_out)
    overlap = sorted(set(texts) & set(held_texts))
    if overlap:
        raise ValueError(f"{node}: the held-out prompts must never be trained on, but {overlap[0]!r} is in both "
                         "'prompts' and 'held_out'.")
    return texts, held_texts


def train_with_progress(node: str, clip, rewards, texts: list[str], held_texts: list[str], config: TrainConfig,
                        sampling: Sampling, unique_id, train):
    """The trainers' shared frame: the prompts encoded once, every step reported (progress bar with the step's
    preview, a live chart event, Cancel), ``train(train_set, held_set, negative, on_step, held_previews)`` run with
    the out-of-memory advice; returns (adapters, TrainResult, the RENO_HISTORY of the steps, held-out previews)."""
    reward_info = reward_info_of(make_ensemble(rewards, texts[0], node))  # no reward: the samplers' message
    train_set = encode_prompts(clip, texts)
    held_set = encode_prompts(clip, held_texts) if held_texts else None
    negative = encode_prompts(clip, [""]).conds[0]

    info = reward_info + ([{"label": HELD_OUT, "name": HELD_OUT, "weight": 0.0, "offset": 0.0}] if held_set else [])
    pbar = comfy.utils.ProgressBar(config.steps, node_id=unique_id)
    held_previews: list[torch.Tensor] = []
    step_previews: list[torch.Tensor] = []
    records: list[dict] = []

    def on_step(record: StepRecord):
        comfy.model_management.throw_exception_if_processing_interrupted()
        rec = history_record(record, reward_info, record.held_out_last if held_set else None)
        records.append(rec)
        preview = record.preview
        step_previews.append(preview)
        pbar.update_absolute(record.step, config.steps,
                             ("JPEG", Image.fromarray(preview[0].numpy()), PREVIEW_SIZE) if preview is not None
                             else None)
        send_iteration(unique_id, SimpleNamespace(**{k: rec[k] for k in ("iteration", "loss", "scores", "latent_norm",
                                                                         "grad_norm")}),
                       config.steps, info, [rec["iteration"]], preview)

    adapters, result = with_oom_advice(node, train, train_set, held_set, negative, on_step, held_previews)
    history = training_history(texts, held_texts, info, config, sampling, records, step_previews, result)
    return adapters, result, history, held_previews


def train_config(**fields) -> TrainConfig:
    """TrainConfig(**fields); its refusal (e.g. learning_rate 0 from a hand-edited API prompt) raised again naming
    the node and the input, before any work."""
    try:
        return TrainConfig(**fields)
    except ValueError as e:
        message = str(e)
        for field_name, input_name in CONFIG_INPUTS.items():
            message = message.replace(f"TrainConfig.{field_name} ", f"{input_name} ")
        raise ValueError(f"{NODE}: {message}") from None


def history_record(record: StepRecord, reward_info: list[dict], held: float | None) -> dict:
    """One training step as an iteration record of RENO_HISTORY (batch of one)."""
    scores = {r["label"]: [record.scores.get(r["label"])] for r in reward_info}
    if held is not None:
        scores[HELD_OUT] = [held]
    return {"iteration": record.step - 1, "loss": [record.loss], "scores": scores, "latent_norm": [0.0],
            "grad_norm": [record.grad_norm], "active": [True], "best_iteration": [record.step - 1],
            "held_out": record.held_out}


def training_history(texts, held_texts, info, config: TrainConfig, sampling: Sampling, records, previews,
                     result: TrainResult) -> ReNOHistory:
    best = (result.best_step or len(records)) - 1 if records else 0
    best = max(0, min(best, len(records) - 1))
    return ReNOHistory(
        prompt="\n".join(texts), seed=config.seed, rewards=info,
        config={"training": True, "method": config.method, "training_steps": config.steps,
                "learning_rate": config.learning_rate, "batch_size": config.batch_size,
                "grad_accumulation": config.grad_accumulation, "k": config.k, "steps": sampling.steps,
                "sampler": sampling.sampler, "scheduler": sampling.scheduler, "cfg": sampling.cfg,
                "held_out_prompts": held_texts, "evaluations": result.evaluations},
        sigma=0.0, records=records, previews=[p for p in previews if p is not None],
        best_iteration=[best], best_loss=[records[best]["loss"][0]] if records else [],
        stop_reason=result.stop_reason,
    )


def summary_line(result: TrainResult, config: TrainConfig) -> str:
    held = ""
    if result.held_out_before is not None:
        held = f"; held-out reward {result.held_out_before:.4f} -> {result.held_out_after:.4f}"
    return f"{config.method}, {len(result.records)} step(s){held}" + (f" ({result.stop_reason})"
                                                                        if result.stop_reason else "")


def training_summary(result: TrainResult, config: TrainConfig, held_texts) -> dict:
    return {"method": config.method, "steps": len(result.records), "evaluations": result.evaluations,
            "held_out_before": result.held_out_before, "held_out_after": result.held_out_after,
            "best_step": result.best_step, "stop_reason": result.stop_reason, "held_out_prompts": len(held_texts)}


def _held_out_files(previews, result: TrainResult) -> list[dict]:
    """The first held-out prompt's image at each evaluation, as temp PNGs, each tagged with its step."""
    fake = SimpleNamespace(previews=[p[None] for p in previews])
    files = save_previews(fake, prefix="reno_train_heldout")
    for f, (step, _) in zip(files, result.evaluations):
        f["step"] = step
    return files
