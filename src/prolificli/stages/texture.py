"""`prolific texture`: VSD on a new hash-grid albedo field over a fixed mesh (paper, Sec. 4).

The mesh comes from the run's geometry stage, else its extract stage, or from any mesh file
(`--mesh`), which is centred and scaled into the object box the cameras look at and mapped back
to its own coordinates on export. theta = the texture field (and the background); the distiller
is VSD with CFG 7.5 and its own LoRA score model. At the end the texture is baked into a UV atlas
and written as OBJ + MTL + PNG and as one GLB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..config import Recipe
from ..distributed import World
from ..mesh.export import bake_texture, save_glb, save_obj, unwrap
from ..mesh.mesh import Mesh, fit_to_object_box, load_mesh
from ..methods import build_distiller
from ..optimize import Problem, Rendered, View
from ..render.background import Background
from ..render.mesh import render_mesh, surface_colors
from ..rundir.checkpoint import CheckpointKeys, prefixed
from ..rundir.directory import ArtifactError, RunDir
from ..rundir.outputs import open_latest_mesh
from ..scene.texture import TextureField
from .common import LoopSettings, Prompter, StageResult, open_stage, optimize_stage, start_session
from .mesh_preview import preview_grid

STAGE = "texture"


class TextureProblem(Problem):
    n_particles = 1
    particle_ids = [0]

    def __init__(self, recipe: Recipe, mesh: Mesh, prompter: Prompter, generator: torch.Generator):
        self.recipe, self.cfg = recipe, recipe.texture
        self.mesh, self.prompter, self.generator = mesh, prompter, generator
        device = mesh.vertices.device
        self.field = TextureField(self.cfg.grid, self.cfg.hidden_dim).to(device)
        self.background = Background(self.cfg.background).to(device)
        groups = self.field.param_groups(self.cfg.lr_grid, self.cfg.lr_heads)
        groups.append({"params": list(self.background.parameters()), "lr": self.cfg.lr_background})
        nerf = recipe.nerf  # the same Adam settings as the NeRF stage's hash grid
        self.optimizers = [torch.optim.AdamW(groups, betas=nerf.adam_betas, eps=nerf.adam_eps, weight_decay=0.0)]

    def sample_view(self, step: int) -> View:
        return self.prompter.sample_view(self.cfg.batch_size, self.cfg.resolution, self.generator)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        cameras, size = view.cameras, view.resolution
        out = render_mesh(self.mesh, cameras, size, self.cfg.render)
        color = surface_colors(out, self.field)
        _, directions = cameras.rays(size, size)
        background = self.background(directions)
        # random solid backgrounds stop the texture from relying on the background (as in the NeRF stage)
        if float(torch.rand((), generator=self.generator)) < self.cfg.background.random_color_prob:
            solid = torch.rand(len(cameras), 3, generator=self.generator).to(background.device)
            background = solid[:, None, None, :].expand_as(background)
        image = out.composite(color, background)
        return Rendered(image=image.permute(0, 3, 1, 2), extras={"opacity": out.opacity})

    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return rendered.image.new_zeros(()), {}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {CheckpointKeys.FIELD + k: v for k, v in self.field.state_dict().items()}
        out.update({CheckpointKeys.BACKGROUND + k: v for k, v in self.background.state_dict().items()})
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.field.load_state_dict(prefixed(tensors, CheckpointKeys.FIELD))
        self.background.load_state_dict(prefixed(tensors, CheckpointKeys.BACKGROUND))

    def preview(self, resolution: int) -> np.ndarray:
        return preview_grid(self.mesh, self.recipe, resolution=resolution, color_fn=self.field)


def source_mesh(run: RunDir, mesh_path: Path | None) -> tuple[Mesh, str, list[Path], torch.Tensor, float]:
    """The mesh to texture, where it came from, the input paths to hash, and the transform
    (centre, scale) from its own coordinates into the object box."""
    if mesh_path is not None:
        mesh, centre, scale = fit_to_object_box(load_mesh(mesh_path))
        return mesh, str(Path(mesh_path).resolve()), [Path(mesh_path)], centre, scale
    surface = open_latest_mesh(run)
    return surface.surface(), surface.stage, [run.stage(surface.stage).checkpoint_dir], torch.zeros(3), 1.0


def run(run_dir: Path, recipe: Recipe | None, *, prompt: str | None = None, resume: bool = False,
        force: bool = False, console: Console | None = None, prior=None, world: World = World(),
        mesh_path: Path | None = None) -> StageResult:
    """Paint the run's latest mesh, or `mesh_path` (a new run for `prompt` when run_dir holds none);
    the stage contract: see stages/__init__.py; one process."""
    console = console or Console(stderr=True)
    if world.active:
        raise ArtifactError("texture runs on one process; launch it without torchrun")
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists() and prompt is not None and recipe is not None and not resume:
        run = RunDir.create(run_dir, prompt, recipe.seed, recipe.name)  # texturing a mesh file from scratch
    else:
        run = RunDir.open(run_dir)
    opened = open_stage(run, STAGE, recipe, resume=resume, force=force, console=console)
    with opened:
        recipe, cfg = opened.recipe, opened.recipe.texture
        if opened.resumed is not None:
            # the mesh it started from: a mesh file is its first input (a stage's input is a checkpoint dir)
            inputs = opened.resumed.get("inputs") or []
            first_input = Path(inputs[0]["path"]) if inputs else None
            mesh_path = first_input if first_input is not None and first_input.is_file() else None
        mesh, source, inputs, centre, scale = source_mesh(run, mesh_path)

        console.print(f"[dim]texturing the {source} mesh ({len(mesh.faces)} faces)[/]")
        session = start_session(recipe, console, prior=prior, resumed=opened.resumed)
        prior = session.prior
        mesh = Mesh(mesh.vertices.to(prior.device), mesh.faces.to(prior.device))
        prompter = Prompter(prior, run.info["prompt"], recipe.camera, recipe.prior.negative_prompt)
        problem = TextureProblem(recipe, mesh, prompter, session.generator)
        distiller = build_distiller(cfg.guidance, recipe, prior)

        def finalize() -> list[str]:
            with console.status("baking the texture into a UV atlas"):
                uv_mesh = unwrap(Mesh(mesh.vertices.cpu(), mesh.faces.cpu()), size=cfg.texture_size)
                field = problem.field

                def color_fn(points):
                    return field(points.to(prior.device)).cpu()

                image = bake_texture(uv_mesh, color_fn, size=cfg.texture_size)
                uv_mesh.vertices = uv_mesh.vertices / scale + centre  # back to the source mesh's own coordinates
                written = save_obj(uv_mesh, image, opened.stage.path / "model.obj")
                written.append(save_glb(uv_mesh, image, opened.stage.path / "model.glb"))
            return [p.name for p in written]

        return optimize_stage(opened, session, problem, distiller, settings=LoopSettings.of(cfg), inputs=inputs,
                              title=f"texture {cfg.guidance.method}", console=console, finalize=finalize,
                              extra={"mesh": source})
