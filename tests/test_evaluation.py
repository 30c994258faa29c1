"""`prolific render` and `prolific eval`: the metrics against closed forms and against the models'
own forward passes, every artifact kind rendered on CPU, and the report's HTML."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from typer.testing import CliRunner

from prolificli.cli import app
from prolificli.config import ConfigError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


# -- FID -------------------------------------------------------------------------------------------

def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    from prolificli.evaluation.fid import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
    shift = rng.normal(size=8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # equal covariances: the trace term vanishes and only ||mu_a - mu_b||^2 remains
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    from prolificli.evaluation.fid import frechet_distance

    rng = np.random.default_rng(1)
    # scale a fixed whitened sample so the empirical covariances are exactly diagonal
    z = rng.normal(size=(4000, 3))
    z = (z - z.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    s_a, s_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 0.5])
    a, b = z * np.sqrt(s_a), z * np.sqrt(s_b) + 1.0
    expected = 3 * 1.0 + float((s_a + s_b - 2 * np.sqrt(s_a * s_b)).sum())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_refuses_too_few_images():
    from prolificli.evaluation.fid import frechet_distance

    with pytest.raises(ConfigError, match="at least 10"):
        frechet_distance(np.zeros((3, 4)), np.zeros((30, 4)))


@pytest.mark.slow
def test_inception_fid_is_zero_on_the_same_images_and_grows_with_noise():
    from prolificli.evaluation.fid import InceptionFeatures, frechet_distance

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 32, 32, generator=generator)
    inception = InceptionFeatures()
    reference = inception(images)
    assert reference.shape == (10, 2048)

    def fid_with_noise(sigma):
        noisy = (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        return frechet_distance(reference, inception(noisy))

    assert frechet_distance(reference, inception(images)) == pytest.approx(0.0, abs=1e-3)
    small, large = fid_with_noise(0.05), fid_with_noise(0.3)
    assert 0 < small < large


def test_prior_samples_are_cached_by_their_settings(tiny_prior, tmp_path):
    from prolificli.evaluation.fid import prior_samples

    first = prior_samples(tiny_prior, "tiny", ["a cube", "a cube"], steps=2, directory=tmp_path)
    assert first.shape == (2, 3, 32, 32) and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = prior_samples(None, "tiny", ["a cube", "a cube"], steps=2, directory=tmp_path)  # no prior needed
    assert torch.allclose(first, again, atol=1 / 255)
    prior_samples(tiny_prior, "tiny", ["a cube", "a cube"], steps=3, directory=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


# -- CLIP ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random-weight CLIPModel with the tiny diffusion model's CLIP tokenizer, saved like a hub repo."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from prolificli.prior.tiny import VOCAB_SIZE, build_tiny_model

    model_dir = build_tiny_model(tmp_path_factory.mktemp("tiny-for-clip"), latent=False)
    out = tmp_path_factory.mktemp("tiny-clip")
    for f in (model_dir / "tokenizer").iterdir():
        shutil.copy(f, out / f.name)
    tokenizer = CLIPTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(out)
    return out


@pytest.fixture
def hub_that_knows_nothing():
    """A local HTTP server answering 404 to everything, like a hub (or a proxy) without the model."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("hub", ["refused", "offline"])
def test_a_clip_hub_id_offline_fails_in_seconds_with_the_priors_advice(hub, monkeypatch):
    """Not cached and the hub unreachable (a refused local port stands in for no network), or
    HF_HUB_OFFLINE set: one line within 5 s, not huggingface_hub's ~45 s of retries."""
    import time

    import huggingface_hub.constants

    from prolificli.evaluation.clip import load_clip

    if hub == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    from transformers import CLIPModel, CLIPTokenizer  # noqa: F401  (the clock times the hub, not imports)

    tic = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        load_clip("prolificli-tests/no-such-clip")
    seconds = time.perf_counter() - tic
    message = str(error.value)
    assert seconds < 5.0, seconds
    assert "\n" not in message and "hf download prolificli-tests/no-such-clip" in message
    assert "--clip-model DIR" in message and "--clip-model toy" in message
    assert ("HF_HUB_OFFLINE is set" if hub == "offline" else "the hub is unreachable") in message


def test_a_hub_without_the_clip_model_fails_in_seconds_with_the_same_advice(hub_that_knows_nothing, tmp_path):
    """A hub (or a proxy) that answers, but not with the model: the same advice, within 5 s. In a
    fresh process, because huggingface_hub reads HF_ENDPOINT when it is imported."""
    script = ("import json, time\n"
              "from prolificli.config import ConfigError\n"
              "from prolificli.evaluation.clip import load_clip\n"
              "from transformers import CLIPModel, CLIPTokenizer\n"
              "tic = time.perf_counter()\n"
              "try:\n"
              "    load_clip('prolificli-tests/no-such-clip')\n"
              "except ConfigError as exc:\n"
              "    print(json.dumps({'seconds': time.perf_counter() - tic, 'message': str(exc)}))\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub_that_knows_nothing, HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    result = json.loads(done.stdout)
    assert result["seconds"] < 5.0, result
    message = result["message"]
    assert "\n" not in message and "from the Hugging Face hub" in message
    assert "hf download prolificli-tests/no-such-clip" in message and "--clip-model DIR" in message, message


def test_clip_similarity_is_the_models_own_logits_over_its_temperature(tiny_clip_dir):
    from prolificli.evaluation.clip import HubClip

    clip = HubClip(str(tiny_clip_dir))
    images = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    prompts = ["a red cube", "a blue sphere"]
    ours = clip.similarity(images, prompts)
    tokens = clip.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip.model(**tokens, pixel_values=clip._pixels(images))
    assert torch.allclose(ours, out.logits_per_image / clip.model.logit_scale.exp(), atol=1e-5)
    assert ours.abs().max() <= 1 + 1e-5  # cosines


def test_an_unavailable_clip_model_is_a_clear_error(tmp_path):
    from prolificli.evaluation.clip import load_clip

    with pytest.raises(ConfigError, match="--clip-model"):
        load_clip(str(tmp_path / "no-such-clip"))


def test_r_precision_counts_views_whose_best_prompt_is_their_own():
    from prolificli.evaluation.clip import r_precision

    similarity = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.5]])
    assert r_precision(similarity, 0) == 0.75 and r_precision(similarity, 1) == 0.25


# -- geometry --------------------------------------------------------------------------------------

def test_volume_iou_of_spheres_matches_the_volume_ratio():
    from prolificli.evaluation.geometry import volume_iou

    sphere = trimesh.creation.icosphere(4, 0.3)

    def inside(radius):
        return lambda points: np.linalg.norm(points, axis=1) < radius

    lo, hi = np.full(3, -0.4), np.full(3, 0.4)
    assert volume_iou(sphere, inside(0.3), lo, hi) > 0.93
    assert volume_iou(sphere, inside(0.15), lo, hi) == pytest.approx(1 / 8, abs=0.03)  # nested: (r/R)^3


def test_normals_from_depth_of_a_plane_are_its_normal():
    from prolificli.evaluation.frames import normals_from_depth

    u, v = torch.meshgrid(torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 9), indexing="ij")
    normal = torch.tensor([1.0, 2.0, 2.0]) / 3
    e1 = torch.nn.functional.normalize(torch.linalg.cross(normal, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    e2 = torch.linalg.cross(normal, e1)
    points = (u[..., None] * e1 + v[..., None] * e2)[None]
    estimate = normals_from_depth(points, torch.ones(1, 9, 9, dtype=torch.bool))
    inner = estimate[0, 1:-1, 1:-1].reshape(-1, 3)
    assert torch.allclose(inner.abs(), normal.abs().expand_as(inner), atol=1e-5)
    assert (estimate[0, 0] == 0).all()  # a border pixel lacks a neighbour


# -- render and eval end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_run(tiny_nerf_run_template, tmp_path_factory) -> Path:
    """A tiny run through every stage: nerf, extract, geometry, texture."""
    run = Path(shutil.copytree(tiny_nerf_run_template, tmp_path_factory.mktemp("full") / "run"))
    for stage in ("extract", "geometry", "texture"):
        ok(invoke(stage, run))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["nerf", "extract", "geometry", "texture"])
def test_render_writes_video_gif_and_sheet_for_every_artifact_kind(full_run, stage):
    import imageio_ffmpeg
    from PIL import Image

    summary = json.loads(ok(invoke("render", full_run, "--stage", stage, "--frames", "6", "--resolution", "24",
                                   "--save-frames", "--json")).stdout)
    out = Path(summary["out_dir"])
    assert out == full_run / "render" / stage and summary["stage"] == stage
    reader = imageio_ffmpeg.read_frames(str(out / "turntable.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (24, 24) and sum(1 for _ in reader) == 6
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 6
    sheet = Image.open(out / "sheet.png")
    assert sheet.size == (6 * 24, 4 * 24)  # 6 columns (all frames), rows rgb | normal | depth | opacity
    assert len(list((out / "frames").glob("*.png"))) == 6
    # the object is in view: the opacity row is not empty
    opacity_row = np.asarray(sheet)[3 * 24 :]
    assert (opacity_row > 128).mean() > 0.02


@pytest.mark.slow
def test_render_defaults_to_the_latest_stage_and_reports_bad_input_in_one_line(full_run, tmp_path):
    assert ok(invoke("render", full_run, "--frames", "2", "--resolution", "16")).stdout.strip().endswith("texture")
    bad = invoke("render", full_run, "--stage", "mesh")
    assert bad.exit_code == 2 and "--stage" in bad.stderr and "Traceback" not in bad.stderr
    missing = invoke("render", tmp_path)
    assert missing.exit_code == 2 and "run.json" in missing.stderr


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.models = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        if tag == "model-viewer":
            self.models.append(dict(attrs)["src"])


@pytest.mark.slow
def test_eval_writes_metrics_a_table_and_a_self_contained_report(full_run, tiny_clip_dir, tmp_path):
    from PIL import Image

    other = Path(shutil.copytree(full_run, tmp_path / "other"))
    info = json.loads((other / "run.json").read_text())
    info["prompt"] = "a different prompt"
    (other / "run.json").write_text(json.dumps(info))
    report = tmp_path / "report.html"
    result = ok(invoke("eval", full_run, other, "--stage", "nerf", "--clip", "--clip-model", tiny_clip_dir,
                       "--views", "4", "--resolution", "24", "--report", report, "--json"))
    rows = json.loads(result.stdout)
    assert [r["run"] for r in rows] == ["run", "other"]
    for row in rows:
        assert -1 <= row["clip"] <= 1 and 0 <= row["r_precision"] <= 1 and row["method"] == "vsd"
    metrics = json.loads((full_run / "eval" / "metrics.json").read_text())
    assert metrics["clip"] == pytest.approx(rows[0]["clip"]) and metrics["stage"] == "nerf"
    Image.open(report.with_suffix(".png")).verify()  # the same comparison as a picture
    parser = _Images()
    parser.feed(report.read_text())
    assert len(parser.sources) == 4  # per run: a turntable and a loss curve
    for source in parser.sources:
        head, data = source.split(",", 1)
        assert head in ("data:image/gif;base64", "data:image/png;base64")
        Image.open(BytesIO(base64.b64decode(data))).verify()
    # both runs have a textured GLB: each gets a 3D viewer of it, beside the NeRF's turntable
    glb = (full_run / "texture" / "model.glb").read_bytes()
    assert parser.models == [f"data:model/gltf-binary;base64,{base64.b64encode(glb).decode()}"] * 2


@pytest.mark.slow
def test_eval_report_opens_in_chromium_with_the_runs_model(full_run, tiny_clip_dir, tmp_path, report_in_chromium):
    report = tmp_path / "alone" / "report.html"
    ok(invoke("eval", full_run, "--stage", "texture", "--clip", "--clip-model", tiny_clip_dir, "--views", "2",
              "--resolution", "16", "--report", report))
    seen = report_in_chromium(report, tmp_path / "shot.png")
    assert seen["states"] == ["loaded"] and seen["requests"] == [] and seen["errors"] == [], seen


@pytest.mark.slow
def test_eval_needs_something_to_measure_and_a_loadable_clip(full_run):
    nothing = invoke("eval", full_run)
    assert nothing.exit_code == 2 and "--clip" in nothing.stderr
    # (a hub id would fail the same way offline, after the hub client's network timeouts)
    missing = invoke("eval", full_run, "--clip", "--clip-model", "/no/such/clip", "--views", "2", "--resolution", "16")
    assert missing.exit_code == 2 and "--clip-model" in missing.stderr and "Traceback" not in missing.stderr


def test_toy_geometry_metrics_of_the_true_surface_are_perfect():
    """The toy world's own extracted truth (a sharp density of the true SDF) scores ~0 Chamfer and ~1 IoU."""
    from prolificli.evaluation.geometry import volume_iou
    from prolificli.toyworld.measures import chamfer_distance, object_size
    from prolificli.toyworld.shapes import ground_truth_mesh, signed_distance

    truth = ground_truth_mesh("cube")
    inside = lambda p: (signed_distance("cube", torch.tensor(p, dtype=torch.float32)) < 0).numpy()  # noqa: E731
    lo, hi = truth.bounds[0] - 0.05, truth.bounds[1] + 0.05
    assert volume_iou(truth, inside, lo, hi) > 0.95
    # two independent samplings of one surface: the metric's floor, well under the 5% gate
    assert 100 * chamfer_distance(truth, truth) / object_size("cube") < 1.5


@pytest.mark.slow
def test_eval_fid_runs_offline_and_says_why_there_is_no_clip_distance(full_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PROLIFICLI_CACHE", str(tmp_path / "cache"))
    result = ok(invoke("eval", full_run, "--stage", "nerf", "--fid", "--clip-model", "/no/such/clip",
                       "--fid-views", "10", "--fid-samples", "10",
                       "--sample-steps", "2", "--views", "2", "--resolution", "16", "--report", tmp_path / "r.html",
                       "--json"))
    row = json.loads(result.stdout)[0]
    assert row["fid"] > 0 and row["fid_images"] == "10 vs 10" and "fd_clip" not in row
    assert "no fd_clip" in " ".join(result.stderr.split())
    assert len(list((tmp_path / "cache" / "prior-samples").glob("*.safetensors"))) == 1
