"""`--tensorboard`: a stage's metrics and previews as TensorBoard events, read back with
TensorBoard's own reader; without the extra, a one-line error before any work."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from prolificli.cli import app
from prolificli.recipe_files import PACKAGE_RECIPES

pytestmark = pytest.mark.slow  # whole stages, torchrun, Chromium or a download: python -m pytest -m 'not slow' skips them

TINY_RECIPE = str(PACKAGE_RECIPES / "tiny.yaml")


def events(directory):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_nerf_stage_writes_its_metrics_and_previews_to_tensorboard(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["nerf", "an elephant skull", "--model", str(tiny_model_dir), "--recipe",
                                      TINY_RECIPE, "--out", str(out), "--tensorboard"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    stage = out / "nerf"
    assert json.loads((stage / "manifest.json").read_text())["config"]["log"] == {"tensorboard": True}
    logged = events(stage / "tb")
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "step_seconds"):
        scalars = logged.Scalars(key)
        assert [s.step for s in scalars] == [r["step"] for r in records if key in r]
        np.testing.assert_allclose([s.value for s in scalars], [r[key] for r in records if key in r], rtol=1e-6)
    previews = logged.Images("preview")
    assert [p.step for p in previews] == [3, 6]  # preview_every 3 of 6 steps, as previews/ holds
    for preview in previews:
        from io import BytesIO

        shown = np.asarray(Image.open(BytesIO(preview.encoded_image_string)).convert("RGB"))
        written = np.asarray(Image.open(stage / "previews" / f"step-{preview.step:06d}.png").convert("RGB"))
        np.testing.assert_array_equal(shown, written)


def test_a_resumed_stage_replaces_the_steps_it_redoes(tmp_path):
    """purge_step: the events an interrupted attempt logged after its checkpoint are dropped."""
    from prolificli.rundir.tensorboard_log import TensorBoardLog

    first = TensorBoardLog(tmp_path)
    for step in range(1, 6):
        first.scalars(step, {"loss": float(step)})
    first.close()
    resumed = TensorBoardLog(tmp_path, start_step=3)  # the checkpoint was at step 3
    for step in range(4, 7):
        resumed.scalars(step, {"loss": 10.0 * step})
    resumed.close()
    loss = events(tmp_path / "tb").Scalars("loss")
    assert [(s.step, s.value) for s in loss] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]


@pytest.mark.parametrize("command", [["nerf", "an elephant skull"], ["geometry"], ["batch"]])
def test_tensorboard_without_the_extra_is_a_one_line_error(command, tiny_nerf_run, tiny_model_dir, tmp_path,
                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    if command[0] == "nerf":
        args = [*command, "--model", str(tiny_model_dir), "--recipe", TINY_RECIPE, "--out", str(tmp_path / "new")]
    elif command[0] == "batch":
        (tmp_path / "prompts.txt").write_text("a red cube\n")
        args = ["batch", str(tmp_path / "prompts.txt"), "--recipe", TINY_RECIPE, "--out", str(tmp_path / "new")]
    else:
        args = [*command, str(tiny_nerf_run)]
    result = CliRunner().invoke(app, [*args, "--tensorboard"])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'prolificli[tensorboard]'" in lines[0], result.stderr
    assert not (tmp_path / "new").exists() and not (tiny_nerf_run / "geometry").exists()  # nothing started
