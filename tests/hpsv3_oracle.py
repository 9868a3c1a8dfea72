"""The HPSv3 oracle: the authors' own inference code (PyPI ``hpsv3`` 1.0.0, ``HPSv3RewardInferencer.reward``) on a
tiny checkpoint folder. Test-only: it runs in a separate virtual environment that has ``hpsv3`` (installed with
``--no-deps``) and the transformers it pins (4.45.2), never in the pack's; tests/test_hpsv3.py starts it.

    python hpsv3_oracle.py FOLDER PROMPT OUT.json IMAGES.npy [IMAGES.npy ...]

FOLDER is a reward folder as ``testing/tiny_hpsv3.write_tiny_hpsv3`` writes it; each IMAGES.npy is uint8 (B, H, W, 3)
(one batch). Writes a list, per batch, of ``{"scores": [mu per image], "input_ids": [...], "pixel_values_shape": [...],
"image_grid_thw": [...], "pixel_values_head": [...]}``.

The package imports training-only modules at import time (trl, peft, datasets, pandas, matplotlib, tensorboard,
fire) that inference never calls, and torchvision (used only for tensor and video inputs; this machine has no
torchvision build for its torch). Those are replaced by empty stand-ins below, before the import; every function
that runs (the config parsing, ``create_model_and_processor``, ``Qwen2VLRewardModelBT``, ``prepare_batch``,
``process_vision_info``/``fetch_image`` for PIL images, the processor, ``reward``) is the package's own.
"""

import importlib.machinery
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []  # a package, so submodules can be stubbed too
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


class _Anything:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return _Anything


def _install_stubs() -> None:
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.patches", "pandas", "datasets", "fire",
                 "torchvision.io", "torchvision.transforms.functional"):
        _stub(name)
    sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    sys.modules["matplotlib"].patches = sys.modules["matplotlib.patches"]
    _stub("torch.utils.tensorboard", SummaryWriter=_Anything)
    _stub("peft", PeftModel=_Anything, LoraConfig=_Anything, get_peft_model=lambda model, config: model)
    _stub("trl", RewardTrainer=_Anything, get_kbit_device_map=lambda: None,
          get_quantization_config=lambda model_config: None)
    transforms = _stub("torchvision.transforms", InterpolationMode=_Anything,
                       functional=sys.modules["torchvision.transforms.functional"])
    _stub("torchvision", io=sys.modules["torchvision.io"], transforms=transforms, __version__="0.0.0")


def main(folder: str, prompt: str, out_json: str, *batches: str) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    _install_stubs()  # after transformers has looked up which optional packages really exist
    from hpsv3 import HPSv3RewardInferencer

    folder = Path(folder)
    work = Path(tempfile.mkdtemp(prefix="hpsv3_oracle_"))
    try:
        # the base model folder create_model_and_processor starts from (Qwen2-VL-7B-Instruct in the real config):
        # the tiny folder's config, tokenizer and processor files, and any weights (the checkpoint replaces them all)
        base = work / "base"
        shutil.copytree(folder, base, ignore=shutil.ignore_patterns("HPSv3.safetensors"))
        config = Qwen2VLConfig.from_pretrained(str(base))
        torch.manual_seed(0)
        Qwen2VLForConditionalGeneration(config).save_pretrained(str(work / "weights"))
        shutil.copy(work / "weights" / "model.safetensors", base / "model.safetensors")
        # the authors' HPSv3_7B.yaml, with the base folder, float32 instead of bfloat16 (an exact comparison on the
        # CPU) and SDPA attention (no flash-attn on the CPU)
        import hpsv3
        yaml_text = (Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml").read_text()
        yaml_text = yaml_text.replace('model_name_or_path: "Qwen/Qwen2-VL-7B-Instruct"',
                                      f'model_name_or_path: "{base}"')
        yaml_text = yaml_text.replace("bf16: True", "bf16: False").replace('torch_dtype: "bfloat16"',
                                                                           'torch_dtype: "float32"')
        yaml_text = yaml_text.replace("disable_flash_attn2: False", "disable_flash_attn2: True")
        yaml_text = yaml_text.replace("output_dir: output_models", f"output_dir: {work / 'out'}")
        assert str(base) in yaml_text and "bf16: False" in yaml_text
        config_path = work / "HPSv3_7B.yaml"
        config_path.write_text(yaml_text)

        inferencer = HPSv3RewardInferencer(str(config_path), str(folder / "HPSv3.safetensors"), device="cpu")
        results = []
        for images_npy in batches:
            images = [Image.fromarray(a) for a in np.load(images_npy)]
            with torch.no_grad():
                batch = inferencer.prepare_batch(images, [prompt] * len(images))
                rewards = inferencer.reward(images, [prompt] * len(images))
            results.append({
                "scores": [float(r[0]) for r in rewards],  # mu ("we select miu as the final output")
                "input_ids": batch["input_ids"][0].tolist(),
                "pixel_values_shape": list(batch["pixel_values"].shape),
                "image_grid_thw": batch["image_grid_thw"].tolist(),
                "pixel_values_head": batch["pixel_values"][:4, :8].tolist(),
            })
        Path(out_json).write_text(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
