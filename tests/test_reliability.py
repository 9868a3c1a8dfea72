"""Library-level reliability and security (RELIABILITY.md): safe loading, and properties of the optimizer."""

import ast
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer import ReNOConfig, optimize_noise
from reno_pack.reward_loaders import RewardLoadError, load_reward
from tolerances import EPS32

ROOT = Path(__file__).resolve().parents[1]


class Boom:
    """Unpickling this runs code: what a malicious checkpoint does."""

    def __reduce__(self):
        return (Path("/tmp/reno_pwned").touch, ())


def test_every_torch_load_in_the_pack_is_weights_only():
    calls = []
    for path in list(ROOT.glob("*.py")) + [p for d in ("optimizer", "reward_loaders", "nodes")
                                         for p in (ROOT / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                calls.append(path.name)
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, path
            assert not (isinstance(node, ast.Attribute) and node.attr in ("loads",) and
                        getattr(node.value, "id", None) == "pickle"), f"{path}: pickle.loads"
    assert calls  # the check saw the loaders


def test_a_clip_folder_with_a_code_running_pickle_is_refused(tmp_path, reward_root):
    target = tmp_path / "root" / "clipscore"
    shutil.copytree(reward_root / "clipscore", target)
    (target / "model.safetensors").unlink()
    with open(target / "pytorch_model.bin", "wb") as f:
        pickle.dump({"text_model.embeddings.token_embedding.weight": Boom()}, f)
    marker = Path("/tmp/reno_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(RewardLoadError):
        load_reward("clipscore", [tmp_path / "root"])
    assert not marker.exists(), "the checkpoint ran code"


@pytest.mark.parametrize("name", ["imagereward", "hpsv2.1", "aesthetic"])
def test_torch_checkpoints_with_code_are_refused(tmp_path, name):
    from tiny_rewards import write_reward_root

    root = write_reward_root(tmp_path / "root", (name,))
    file = {"imagereward": "ImageReward.pt", "hpsv2.1": "HPS_v2.1_compressed.pt",
            "aesthetic": "sac+logos+ava1-l14-linearMSE.pth"}[name]
    torch.save({"state_dict": Boom()}, root / name / file)
    marker = Path("/tmp/reno_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(RewardLoadError):
        load_reward(name, [root])
    assert not marker.exists(), "the checkpoint ran code"


# -- properties of the optimizer over shapes, dtypes, batches and parameters --------------------------

def toy_generate(z):
    return torch.sigmoid(z.float().mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)), None


def toy_objective(image):
    score = -(image - 0.7).pow(2).flatten(1).mean(dim=1)
    return 1.0 - score, {"toy": score}


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    iterations=st.integers(1, 6),
    lr=st.sampled_from([0.0, 0.1, 5.0, 1e3, 1e8]),
    clip=st.sampled_from([0.0, 0.1, 10.0]),
    reg=st.sampled_from([0.0, 0.01, 100.0]),
    momentum=st.sampled_from([0.0, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_optimizer_invariants(batch, channels, h, w, dtype, iterations, lr, clip, reg, momentum, seed):
    noise = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)
    config = ReNOConfig(iterations=iterations, learning_rate=lr, grad_clip=clip, regularization=reg,
                        momentum=momentum)
    res = optimize_noise(toy_generate, toy_objective, noise, config)
    # every iteration runs unless every element stopped on a non-finite value (extreme steps can land exactly
    # on z = 0, where the chi penalty is +inf): then the run says so
    assert res.iterations_run == iterations or (res.stop_reason and not any(res.records[-1].active))
    assert res.best_noise.shape == noise.shape and res.best_noise.dtype == torch.float32
    assert res.best_image.shape == (batch, 3, h, w) and torch.isfinite(res.best_image).all()
    for b in range(batch):
        losses = [r.loss[b] for r in res.records]
        assert 0 <= res.best_iteration[b] < iterations
        assert res.best_loss[b] == min(losses) and res.best_loss[b] <= losses[0]
        assert math.isfinite(res.best_loss[b])
    if clip > 0 and momentum == 0 and iterations > 1:  # each step is at most lr * clip long
        seen = []
        optimize_noise(lambda z: (seen.append(z.detach().clone()), toy_generate(z))[1], toy_objective, noise, config)
        step = (seen[1] - seen[0]).flatten(1).norm(dim=1)
        # clip / (|g| + 1e-6) <= clip / |g| (a few float32 roundings of lr * clip), plus each entry of z1 = z0 - step
        # rounded in float32 (eps |z| each, sqrt(entries) of them in the norm)
        z_max = torch.maximum(seen[0].abs().flatten(1).amax(dim=1), seen[1].abs().flatten(1).amax(dim=1))
        assert torch.all(step <= lr * clip * (1 + 4 * EPS32) + seen[0][0].numel() ** 0.5 * EPS32 * z_max)
