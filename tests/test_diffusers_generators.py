"""ReNO on diffusers pipelines (generators/diffusers_pipelines.py), on tiny pipelines built from configs.

Every pipeline is diffusers' own class with tiny random components (built in tests/tiny_diffusers.py), saved with
``save_pretrained`` and loaded back with ``load_pipeline``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'diffusers>=0.30'")

from reno_pack.generators import (  # noqa: E402
    PipelineLoadError,
    build_generator,
    infer_kind,
    load_pipeline,
    pipeline_kind,
    run_diffusers_item,
)
from reno_pack.optimizer import ReNOConfig  # noqa: E402
from reno_pack.reward_loaders import RewardEnsemble, WeightedReward, load_reward  # noqa: E402
from tiny_diffusers import KINDS, SIZE, one_thread, save_tiny_pipeline  # noqa: E402, F401 (one_thread: a fixture)
from tolerances import BATCH_K, ORACLE_IMAGE_K, assert_rounding_close, rounding_tol  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red cat on the mat"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each kind's tiny pipeline saved as a diffusers folder."""
    out = {}
    for kind in KINDS:
        out[kind] = save_tiny_pipeline(kind, tmp_path_factory.mktemp(kind))
    return out


def own_output(pipe, kind, noise):
    """The pipeline's own one-step image for ``noise``, called the way the official ReNO code calls it."""
    kw = dict(latents=noise.clone(), num_inference_steps=1, output_type="pt", height=SIZE, width=SIZE)
    if kind == "sd-turbo":
        kw.update(guidance_scale=1.0)
    elif kind == "sdxl-turbo":
        kw.update(guidance_scale=0.0)
    elif kind == "hyper-sdxl":
        kw.update(guidance_scale=0.0, timesteps=[800])
    elif kind == "pixart-dmd":
        kw.update(guidance_scale=1.0, timesteps=[400], use_resolution_binning=False, clean_caption=False,
                  max_sequence_length=120)
    elif kind == "flux-schnell":
        kw.update(guidance_scale=0.0, max_sequence_length=256)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, **kw).images


def redness(images):
    """A simple differentiable objective: loss = 1 - mean(red - (green + blue) / 2)."""
    score = (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).flatten(1).mean(1)
    return 1.0 - score, {"redness": score}


# -- tests ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_iteration_zero_is_the_pipelines_own_one_step_image(folders, kind):
    """load_pipeline infers the kind; generate(noise) equals pipe(prompt, latents=noise, 1 step, output_type='pt'),
    has a gradient to the noise and none to any weight."""
    assert infer_kind(folders[kind]) == kind
    pipe = load_pipeline(folders[kind])
    assert pipeline_kind(pipe) == kind
    generate, shape = build_generator(pipe, PROMPT, height=SIZE, width=SIZE)
    expected_shape = (1, 64, 16) if kind == "flux-schnell" else (1, 4, SIZE // 2, SIZE // 2)
    assert shape == expected_shape
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = generate(noise)
        theirs = own_output(pipe, kind, noise)
    assert ours.shape == theirs.shape == (1, 3, SIZE, SIZE) and ours.dtype == torch.float32
    diff = (ours - theirs.float()).abs().max().item()
    print(f"{kind}: max |generate(noise) - pipe(latents=noise)| = {diff:.3e}")
    # the same model through the pipeline's call and ours (other orchestration, the same ops): as the engine's image
    # oracle, ORACLE_IMAGE_K roundings of |image| <= 1
    assert diff <= rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=1.0), \
        f"{kind}: iteration 0 differs from the pipeline's own output by {diff}"
    assert 0.02 < ours.std().item() and 0 <= ours.min() and ours.max() <= 1  # not a constant image

    z = noise.clone().requires_grad_(True)
    generate(z).mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            assert not module.training and not any(p.requires_grad or p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_reno_raises_the_reward(folders, kind, reward_root):
    """run_diffusers_item with the pack's tiny CLIPScore: the best image scores higher than the plain one-step image,
    the result carries both ends, and each text encoder ran once (not once per iteration, as the official code)."""
    clip = load_reward("clipscore", [reward_root])
    pipe = load_pipeline(folders[kind])
    calls = []
    for name, module in pipe.components.items():
        if name.startswith("text_encoder") and module is not None:
            module.register_forward_hook(lambda *_, name=name: calls.append(name))
    out = run_diffusers_item(pipe, PROMPT, 3, [WeightedReward("clipscore", 1.0, clip)],
                             {"iterations": 6, "height": SIZE, "width": SIZE})
    assert sorted(calls) == sorted(n for n, m in pipe.components.items() if n.startswith("text_encoder") and m)
    assert out.kind == kind and out.result.iterations_run == 6
    assert out.initial_image.shape == out.best_image.shape == (1, 3, SIZE, SIZE)
    assert out.best_loss < out.initial_loss and out.best_iteration > 0
    assert out.best_scores["clipscore"] > out.initial_scores["clipscore"]
    assert out.config.learning_rate == (10.0 if kind == "hyper-sdxl" else 5.0)
    json.dumps(out.to_dict())


def test_sd_turbo_trajectory_matches_the_papers_update_rule(folders):
    """10 iterations of run_diffusers_item against a plain loop written from the official code: the pipeline's own
    scheduler (set_timesteps(1), init_noise_sigma, scale_model_input, step), VAE decode, then torch.optim.SGD (lr 5,
    momentum 0.9, Nesterov), loss + 0.01 (0.5 |z|^2 - (d - 1) log |z|), clip_grad_norm_(z, 0.1)."""
    pipe = load_pipeline(folders["sd-turbo"])
    iterations, seed = 10, 7
    out = run_diffusers_item(pipe, PROMPT, seed, redness, {"iterations": iterations, "height": SIZE, "width": SIZE})

    with torch.no_grad():
        embeds = pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, False)[0]
    z = torch.nn.Parameter(torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(seed)))
    opt = torch.optim.SGD([z], lr=5.0, momentum=0.9, nesterov=True)
    d = z.numel()
    losses, best = [], (math.inf, None)
    for it in range(iterations):
        opt.zero_grad()
        sched = pipe.scheduler
        sched.set_timesteps(1)
        t = sched.timesteps[0]
        x = z * sched.init_noise_sigma
        eps = pipe.unet(sched.scale_model_input(x, t), t, encoder_hidden_states=embeds).sample
        x0 = sched.step(eps, t, x).prev_sample
        image = (pipe.vae.decode(x0 / 0.18215).sample / 2 + 0.5).clamp(0, 1)
        loss = redness(image)[0].sum()
        losses.append(loss.item())
        if loss.item() < best[0]:
            best = (loss.item(), z.detach().clone())
        norm = torch.linalg.vector_norm(z)
        total = loss + 0.01 * (0.5 * norm**2 - (d - 1) * torch.log(norm))
        if it != iterations - 1:
            total.backward()
            torch.nn.utils.clip_grad_norm_(z, 0.1)
            opt.step()

    ours = [r.loss[0] for r in out.result.records]
    # 10 steps of Nesterov SGD computed in two orders: each step's few roundings carried on by the next ones (the
    # toy objective is smooth, measured 1.1 roundings of |z| at the end): 64 roundings of |z|; the losses of images
    # from noises that close: as the image oracle, ORACLE_IMAGE_K roundings of |loss| (~1)
    loss_tol = rounding_tol(ORACLE_IMAGE_K, torch.float32, *losses, at_least=1.0)
    assert ours == pytest.approx(losses, rel=0, abs=loss_tol)
    assert out.best_loss == pytest.approx(best[0], rel=0, abs=loss_tol)
    assert_rounding_close(out.result.best_noise, best[1], 64)
    assert losses[-1] < losses[0]


def test_batch_elements_are_independent(folders):
    """A batch of two noises gives each element the image it gives alone (embeddings broadcast, not mixed)."""
    pipe = load_pipeline(folders["sdxl-turbo"])
    generate, shape = build_generator(pipe, PROMPT)
    noise = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = generate(noise)
        assert_rounding_close(both[1:], generate(noise[1:]), BATCH_K, scale=1.0)  # batch vs single, |image| <= 1
    with pytest.raises(ValueError, match="noise must have shape"):
        generate(torch.randn(1, 4, 8, 8))


def write_index(folder, pipeline_class, scheduler_class=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    if scheduler_class:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": scheduler_class}))
    return folder


def test_unknown_or_ambiguous_folders_say_what_to_do(tmp_path):
    with pytest.raises(PipelineLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineLoadError, match="model_index.json is missing"):
        infer_kind(tmp_path / "empty")
    with pytest.raises(PipelineLoadError, match=r"'StableDiffusion3Pipeline' is not a one-step model.*sd-turbo"):
        infer_kind(write_index(tmp_path / "sd3", "StableDiffusion3Pipeline"))
    with pytest.raises(PipelineLoadError, match="kind='sdxl-turbo' or kind='hyper-sdxl'"):
        infer_kind(write_index(tmp_path / "sdxl", "StableDiffusionXLPipeline", "EulerDiscreteScheduler"))
    assert infer_kind(write_index(tmp_path / "hyper", "StableDiffusionXLPipeline", "TCDScheduler")) == "hyper-sdxl"
    with pytest.raises(PipelineLoadError, match="needs a StableDiffusionXLPipeline"):
        load_pipeline(write_index(tmp_path / "sd", "StableDiffusionPipeline"), kind="sdxl-turbo")
    with pytest.raises(PipelineLoadError, match="unknown kind 'sd3'"):
        load_pipeline(tmp_path / "sd", kind="sd3")


def test_run_item_refuses_bad_options_and_a_foreign_prompt(folders, reward_root):
    pipe = load_pipeline(folders["sd-turbo"])
    with pytest.raises(ValueError, match="unknown option.*lr.*valid options are"):
        run_diffusers_item(pipe, PROMPT, 0, redness, {"lr": 3})
    clip = load_reward("clipscore", [reward_root])
    other = RewardEnsemble([WeightedReward("clipscore", 1.0, clip)], "a blue dog")
    with pytest.raises(ValueError, match="rewards score the prompt 'a blue dog'"):
        run_diffusers_item(pipe, PROMPT, 0, other, {"iterations": 1})
    with pytest.raises(ValueError, match="seed"):
        run_diffusers_item(pipe, PROMPT, -1, redness)
    out = run_diffusers_item(pipe, PROMPT, 0, redness, {"config": ReNOConfig(iterations=2), "learning_rate": 1.0})
    assert out.config.iterations == 2 and out.config.learning_rate == 1.0


def test_readme_diffusers_example_runs(folders, reward_root, tmp_path):
    """The README's "ReNO on diffusers pipelines" block, verbatim but for the folder (on this CPU it picks the CPU and
    float32 itself), with the pack installed as the README says (``pip install -e``, tests/editable_install.py)."""
    import os
    import re
    import subprocess
    from pathlib import Path

    from editable_install import editable_site, run_script

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## ReNO on diffusers pipelines"):]
    section = section[:section.find("\n## ", 5)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert "torch.cuda.is_available()" in code  # the device is chosen, not assumed (it runs here, on the CPU)
    code = code.replace('"models/sd-turbo"', repr(str(folders["sd-turbo"])))
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    site = editable_site(tmp_path / "install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(RENO_REWARDS_DIR=str(reward_root), RENO_DOWNLOADS="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")  # the CPU branch, as on a machine without a GPU
    proc = subprocess.run(run_script(site, tmp_path / "example.py"), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"^loss (\S+) -> (\S+) at iteration (\d+)$", proc.stdout, re.M)
    assert m and float(m.group(2)) <= float(m.group(1)) and 0 <= int(m.group(3)) < 50, proc.stdout
