"""Where a run's random numbers come from: the host generator, and the tensor generator that
draws on the device (distinct only on a GPU), both restored on resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from prolificli.recipe_files import PACKAGE_RECIPES
from prolificli.methods import build_recipe
from prolificli.optimize import Interrupted, device_generator

TINY_RECIPE = str(PACKAGE_RECIPES / "tiny.yaml")


def test_on_the_cpu_the_tensor_generator_is_the_host_generator():
    host = torch.Generator().manual_seed(0)
    assert device_generator(host, "cpu") is host  # CPU runs draw exactly as they always did


@pytest.mark.slow
def test_a_separate_tensor_generator_is_checkpointed_and_restored(tiny_model_dir, tmp_path, monkeypatch):
    """As on a GPU, the stage's tensors come from a second generator (here a CPU one standing in
    for cuda's): a run interrupted by Ctrl-C and resumed ends with the uninterrupted run's weights,
    which it could not if that generator's state were not saved and restored."""
    from prolificli.stages import common, nerf

    monkeypatch.setattr(common, "device_generator", lambda host, device: torch.Generator().manual_seed(1234))
    recipe = build_recipe(TINY_RECIPE, [f"prior.model={tiny_model_dir}", "nerf.steps=8", "nerf.checkpoint_every=3"])
    nerf.run(tmp_path / "whole", recipe, prompt="a cube")

    original = common.optimization_step

    def ctrl_c_at_step_four(*args, **kwargs):
        logs = original(*args, **kwargs)
        if args[3] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the loop finishes this step, checkpoints and stops
        return logs

    monkeypatch.setattr(common, "optimization_step", ctrl_c_at_step_four)
    with pytest.raises(Interrupted):
        nerf.run(tmp_path / "cut", recipe, prompt="a cube")
    monkeypatch.setattr(common, "optimization_step", original)
    saved = load_file(tmp_path / "cut" / "nerf" / "checkpoint" / "weights.safetensors")
    assert "rng.tensor_generator" in saved
    nerf.run(tmp_path / "cut", recipe, prompt="a cube", resume=True)

    expected = load_file(tmp_path / "whole" / "nerf" / "checkpoint" / "weights.safetensors")
    got = load_file(tmp_path / "cut" / "nerf" / "checkpoint" / "weights.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
