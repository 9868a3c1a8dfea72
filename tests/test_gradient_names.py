"""The gradient modes' names have one definition, ``optimizer.chain.GradientMode``: the ReNO Sampler's combo
(``nodes/inputs.py`` reads ``GRADIENT_LABELS``) and reno-batch's ``--gradient`` (``runner/cli.py`` writes its
spellings out, because ``--help`` must not import torch) must agree with it."""

from reno_pack.optimizer.chain import GRADIENT_LABELS, GRADIENT_MODES, GradientMode, GradientPolicy
from reno_pack.runner import cli


def test_the_node_labels_and_library_names_come_from_the_enum():
    assert GRADIENT_LABELS == ("exact", "drtune", "last k")  # the combo's options: a public contract
    assert GRADIENT_MODES == ("exact", "drtune", "last_k")
    for mode in GradientMode:
        assert GradientMode.parse(mode.label) is mode and GradientPolicy(mode.label).mode == mode.value


def test_reno_batch_accepts_the_chains_spellings_and_passes_the_node_labels():
    for spelling, label in cli._GRADIENTS.items():
        assert GradientMode.parse(spelling).label == label, spelling
    assert set(cli._GRADIENTS.values()) == set(GRADIENT_LABELS)
