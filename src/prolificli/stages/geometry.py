"""`prolific geometry`: refine the extracted surface by SDS on rendered normal maps (paper, Sec. 4).

theta = the DMTet SDF and vertex offsets. Every step re-extracts the mesh by marching
tetrahedra, renders it from a sampled camera, and backpropagates SDS (CFG 100) plus two
smoothness terms: normal consistency (neighbouring faces agree) and the uniform Laplacian
(each vertex near the centroid of its neighbours), both weighted 10^4 by default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from ..config import Recipe
from ..distributed import World
from ..mesh.dmtet import DMTet
from ..mesh.export import save_ply
from ..mesh.mesh import Mesh, laplacian_smoothness, normal_consistency
from ..methods import build_distiller
from ..optimize import OptimizationFailed, Problem, Rendered, View
from ..render.mesh import normal_image, render_mesh
from ..rundir.checkpoint import CheckpointKeys, prefixed
from ..rundir.directory import ArtifactError, RunDir
from ..scene.nerf import albedo_across_surface
from ..surface import first_stage_field
from .common import LoopSettings, Prompter, StageResult, open_stage, optimize_stage, start_session
from .mesh_preview import preview_grid

STAGE = "geometry"


class GeometryProblem(Problem):
    """One DMTet surface; the prior sees its normal map, or it lit by a fixed light (`shading`)."""

    n_particles = 1
    particle_ids = [0]

    def __init__(self, recipe: Recipe, dmtet: DMTet, albedo_field, prompter: Prompter, generator: torch.Generator):
        self.recipe, self.cfg = recipe, recipe.geometry
        self.dmtet, self.albedo_field = dmtet, albedo_field
        self.prompter, self.generator = prompter, generator
        self.optimizers = [torch.optim.Adam(self.dmtet.parameters(), lr=self.cfg.lr)]
        self.mesh: Mesh | None = None
        self.half_width = 4 * dmtet.grid.cell  # how deep the NeRF's colour is read across the surface
        light = torch.tensor(self.cfg.light_direction, dtype=torch.float32, device=dmtet.sdf.device)
        self.light = light / light.norm()
        if self.cfg.shading == "lambert":
            self.base_points, self.base_colors = self._unshaded_colors()

    def shade(self, normals: torch.Tensor) -> torch.Tensor:
        """Lambert's law plus ambient: [N,3] unit normals -> [N,1] brightness."""
        return self.cfg.ambient + (1 - self.cfg.ambient) * (normals @ self.light).clamp(min=0)[:, None]

    @torch.no_grad()
    def _unshaded_colors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The NeRF bakes its lighting into its colour. Divide it out once, on the starting surface,
        so that while the surface moves only its normals change the shading the prior sees (reading
        it again at every step would hand the prior the old lighting whatever the normals do)."""
        start = self.dmtet.mesh().detach()
        normals = start.vertex_normals()
        seen = albedo_across_surface(self.albedo_field, start.vertices, normals, self.half_width)
        return start.vertices, (seen / self.shade(normals)).clamp(0, 1)

    def _base_color(self, points: torch.Tensor) -> torch.Tensor:
        """The unshaded colour of the nearest starting-surface vertex (refinement moves the surface
        little). Chunked: 1024 pixels x 10^5 vertices of distances is 400 MB."""
        nearest = torch.cat([torch.cdist(chunk, self.base_points).argmin(1) for chunk in points.detach().split(1024)])
        return self.base_colors[nearest]

    def surface_color(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """What the prior sees at visible surface points [N,3] (shading lambert or albedo)."""
        if self.cfg.shading == "lambert":
            return self._base_color(points) * self.shade(normals)
        return albedo_across_surface(self.albedo_field, points, normals, self.half_width)

    def sample_view(self, step: int) -> View:
        return self.prompter.sample_view(self.cfg.batch_size, self.cfg.resolution, self.generator)

    def render(self, particle: int, view: View, step: int) -> Rendered:
        self.mesh = self.dmtet.mesh()
        if len(self.mesh.faces) == 0:
            raise OptimizationFailed(f"the surface vanished at step {step} (every SDF value is positive); "
                                     "lower geometry.lr or raise the regulariser weights")
        out = render_mesh(self.mesh, view.cameras, view.resolution, self.cfg.render)
        if self.cfg.shading == "normal":
            color = normal_image(out, view.cameras)
        else:
            color = out.position.new_zeros(out.position.shape)
            hit = out.mask
            if hit.any():
                color = color.index_put((hit,), self.surface_color(out.position[hit], out.normal[hit]))
        white = torch.ones_like(color)
        image = out.composite(color, white)
        return Rendered(image=image.permute(0, 3, 1, 2), extras={"opacity": out.opacity})

    def regularization(self, rendered: Rendered, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        consistency = normal_consistency(self.mesh)
        laplacian = laplacian_smoothness(self.mesh)
        loss = self.cfg.lambda_normal_consistency * consistency + self.cfg.lambda_laplacian * laplacian
        return loss, {"normal_consistency": float(consistency.detach()), "laplacian": float(laplacian.detach()),
                      "faces": len(self.mesh.faces)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {CheckpointKeys.DMTET + k: v for k, v in self.dmtet.tensors().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        state = prefixed(tensors, CheckpointKeys.DMTET)
        with torch.no_grad():
            self.dmtet.sdf.copy_(state["sdf"])
            self.dmtet.deformation.copy_(state["deformation"])

    def colored_mesh(self) -> Mesh:
        with torch.no_grad():
            mesh = self.dmtet.mesh().detach()
            colors = albedo_across_surface(self.albedo_field, mesh.vertices, mesh.vertex_normals(), self.half_width)
            return Mesh(mesh.vertices, mesh.faces, colors)

    def preview(self, resolution: int) -> np.ndarray:
        return preview_grid(self.colored_mesh(), self.recipe, resolution=resolution)


def run(run_dir: Path, recipe: Recipe | None, *, prompt: str | None = None, resume: bool = False,
        force: bool = False, console: Console | None = None, prior=None, world: World = World()) -> StageResult:
    """Refine the run's extracted mesh (the stage contract: see stages/__init__.py; one process)."""
    from ..rundir.outputs import open_first_stage, open_mesh

    console = console or Console(stderr=True)
    if world.active:
        raise ArtifactError("geometry runs on one process; launch it without torchrun")
    run = RunDir.open(run_dir)
    opened = open_stage(run, STAGE, recipe, resume=resume, force=force, console=console)
    with opened:
        recipe = opened.recipe
        dmtet = open_mesh(run, "extract").dmtet
        albedo_field = first_stage_field(open_first_stage(run), recipe.extract.particle)  # NeRF or splats

        session = start_session(recipe, console, prior=prior, resumed=opened.resumed)
        prior = session.prior
        prompter = Prompter(prior, run.info["prompt"], recipe.camera, recipe.prior.negative_prompt)
        problem = GeometryProblem(recipe, dmtet.to(prior.device), albedo_field.to(prior.device), prompter,
                                  session.generator)
        distiller = build_distiller(recipe.geometry.guidance, recipe, prior)

        def finalize() -> list[str]:
            save_ply(problem.colored_mesh(), opened.stage.path / "mesh.ply")
            return ["mesh.ply"]

        return optimize_stage(opened, session, problem, distiller, settings=LoopSettings.of(recipe.geometry),
                              inputs=[run.stage("extract").checkpoint_dir], console=console, finalize=finalize,
                              title=f"geometry {recipe.geometry.guidance.method}")
