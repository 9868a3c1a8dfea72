"""Training, in plain PyTorch (no ComfyUI imports): the library side of the pack's two trainers.

* ``reward_finetuning``: fine-tune a denoiser's parameters (a LoRA) on rewards through the sampling chain
  (``optimizer/chain.py``): AlignProp, DRTune and ReFL rollouts and the training loop.
* ``preference_reward``: train an ImageReward-architecture reward on the artist's preference marks
  (``preferences/store.py``), saved as a custom reward under ``reno_rewards/custom/<name>/``.

The ComfyUI side (nodes, model patching, progress) is in ``nodes/``.
"""
