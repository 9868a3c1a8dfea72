"""ReNO on diffusers pipelines (generators/diffusers_pipelines.py), on tiny pipelines built from configs.

Every pipeline is diffusers' own class with tiny random components (diffusers' test style: UNet2DConditionModel,
FluxTransformer2DModel, PixArtTransformer2DModel, AutoencoderKL, CLIPTextModel(WithProjection), T5EncoderModel),
saved with ``save_pretrained`` and loaded back with ``load_pipeline``. Nothing is downloaded: the CLIP tokenizer is
the real byte-level BPE format of tests/tiny_rewards.py, the T5 tokenizer a real (tokenizers-backed) T5Tokenizer
over a small Unigram vocabulary written here.
"""

from __future__ import annotations

import json
import math
import string

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
from tiny_rewards import write_clip_tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

PROMPT = "a red cat on the mat"
SIZE = 32  # pixels; the tiny VAEs halve it (scale factor 2)
KINDS = ("sd-turbo", "sdxl-turbo", "hyper-sdxl", "pixart-dmd", "flux-schnell")
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# -- tiny components --------------------------------------------------------------------------------------------------

def clip_tokenizer(tmp):
    vocab = write_clip_tokenizer(tmp / "clip_tok")
    return CLIPTokenizer.from_pretrained(str(tmp / "clip_tok")), vocab


def clip_text(vocab, hidden=16, projection=None):
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1,
                         **({} if projection is None else {"projection_dim": projection}))
    return CLIPTextModel(cfg) if projection is None else CLIPTextModelWithProjection(cfg)


def t5_pair(d_model=16):
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase] + [("▁" + c, -3.5) for c in string.ascii_lowercase]
    pieces += [(w, -1.0) for w in ("▁a", "▁red", "▁cat", "▁on", "▁the", "▁mat", "▁blue", "▁dog")]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    enc = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=1,
                                  num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                  decoder_start_token_id=0))
    return tok, enc


def vae(latent_channels=4, **kw):
    return diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                                   norm_num_groups=4, layers_per_block=1, sample_size=SIZE, **kw)


def unet(cross, **kw):
    return diffusers.UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=2, norm_num_groups=4, **kw)


def tiny_pipeline(kind, tmp):
    torch.manual_seed(0)
    if kind == "sd-turbo":
        tok, v = clip_tokenizer(tmp)
        return diffusers.StableDiffusionPipeline(
            vae=vae(scaling_factor=0.18215), text_encoder=clip_text(v), tokenizer=tok, unet=unet(16),
            scheduler=diffusers.EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if kind in ("sdxl-turbo", "hyper-sdxl"):
        tok, v = clip_tokenizer(tmp)
        sched = (diffusers.EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1)
                 if kind == "sdxl-turbo" else diffusers.LCMScheduler(**BETAS, steps_offset=1))
        return diffusers.StableDiffusionXLPipeline(
            vae=vae(scaling_factor=0.13025), text_encoder=clip_text(v), text_encoder_2=clip_text(v, projection=8),
            tokenizer=tok, tokenizer_2=tok,
            unet=unet(32, addition_embed_type="text_time", addition_time_embed_dim=4,
                      projection_class_embeddings_input_dim=6 * 4 + 8, use_linear_projection=True),
            scheduler=sched, add_watermarker=False)
    if kind == "pixart-dmd":
        tok, enc = t5_pair(16)
        tr = diffusers.PixArtTransformer2DModel(
            sample_size=SIZE // 2, num_layers=1, patch_size=2, attention_head_dim=4, num_attention_heads=2,
            caption_channels=16, in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6)
        return diffusers.PixArtAlphaPipeline(
            tokenizer=tok, text_encoder=enc, vae=vae(), transformer=tr,
            scheduler=diffusers.DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                              clip_sample=False))
    if kind == "flux-schnell":
        tok, v = clip_tokenizer(tmp)
        tok2, enc2 = t5_pair(16)
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              pooled_projection_dim=16, axes_dims_rope=[4, 4, 8])
        return diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
            vae=vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=clip_text(v), tokenizer=tok, text_encoder_2=enc2, tokenizer_2=tok2, transformer=tr)
    raise ValueError(kind)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread (two threads on two shared cores mostly wait for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each kind's tiny pipeline saved as a diffusers folder."""
    out = {}
    for kind in KINDS:
        tmp = tmp_path_factory.mktemp(kind)
        pipe = tiny_pipeline(kind, tmp)
        pipe.save_pretrained(str(tmp / "pipe"))
        out[kind] = tmp / "pipe"
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
    assert diff < 1e-5, f"{kind}: iteration 0 differs from the pipeline's own output by {diff}"
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
    assert ours == pytest.approx(losses, rel=1e-4, abs=1e-5)
    assert out.best_loss == pytest.approx(best[0], rel=1e-4, abs=1e-5)
    torch.testing.assert_close(out.result.best_noise, best[1], rtol=1e-4, atol=1e-4)
    assert losses[-1] < losses[0]


def test_batch_elements_are_independent(folders):
    """A batch of two noises gives each element the image it gives alone (embeddings broadcast, not mixed)."""
    pipe = load_pipeline(folders["sdxl-turbo"])
    generate, shape = build_generator(pipe, PROMPT)
    noise = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = generate(noise)
        torch.testing.assert_close(both[1:], generate(noise[1:]), rtol=1e-4, atol=1e-5)
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
    """The README's "ReNO on diffusers pipelines" block, verbatim but for the folder, device and dtype."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## ReNO on diffusers pipelines"):]
    section = section[:section.find("\n## ", 5)]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    for a, b in (('"cuda", "float16"', '"cpu", "float32"'), ('"models/sd-turbo"', repr(str(folders["sd-turbo"])))):
        assert a in code
        code = code.replace(a, b)
    (tmp_path / "reno").symlink_to(root, target_is_directory=True)
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(PYTHONPATH=str(tmp_path), RENO_REWARDS_DIR=str(reward_root), RENO_DOWNLOADS="0", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(tmp_path / "example.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"^loss (\S+) -> (\S+) at iteration (\d+)$", proc.stdout, re.M)
    assert m and float(m.group(2)) <= float(m.group(1)) and 0 <= int(m.group(3)) < 50, proc.stdout
