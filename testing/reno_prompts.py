"""API-format ReNO prompts on the tiny fixture model (shared by the engine tests and the demo)."""

from __future__ import annotations

SAMPLER_ID = "7"
SAVE_ID = "8"


def reno_api_prompt(*, prompt: str, iterations: int = 6, batch: int = 1, seed: int = 0, transformer_depth: int = 0,
                    rewards=(("pickscore", 1.0), ("clipscore", 0.5)), width: int = 64, height: int = 64,
                    learning_rate: float = 5.0, cfg: float = 1.0, preview: bool = False) -> dict:
    """Tiny SD model -> conditioning -> empty latent -> chained reward loaders -> ReNO Sampler -> SaveImage
    (-> ReNO Iteration Preview as node "9" when ``preview``)."""
    p = {
        "1": {"class_type": "ReNOTestTinySD",
              "inputs": {"transformer_depth": transformer_depth, "context_dim": 32, "seed": 0}},
        "2": {"class_type": "ReNOTestConditioning", "inputs": {"text": prompt, "context_dim": 32}},
        "3": {"class_type": "ReNOTestConditioning", "inputs": {"text": "", "context_dim": 32}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }
    prev = None
    for k, (name, weight) in enumerate(rewards):
        node = f"5{k}"
        p[node] = {"class_type": "ReNORewardLoader", "inputs": {"reward": name, "weight": weight}}
        if prev:
            p[node]["inputs"]["rewards"] = [prev, 0]
        prev = node
    p[SAMPLER_ID] = {"class_type": "ReNOSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 1], "latent_image": ["4", 0],
        "rewards": [prev, 0], "prompt": prompt, "seed": seed, "iterations": iterations,
        "learning_rate": learning_rate, "cfg": cfg, "regularization": 0.01, "grad_clip": 0.1}}
    p[SAVE_ID] = {"class_type": "SaveImage", "inputs": {"images": [SAMPLER_ID, 1], "filename_prefix": "reno"}}
    if preview:
        p["9"] = {"class_type": "ReNOIterationPreview", "inputs": {"history": [SAMPLER_ID, 2]}}
    return p
