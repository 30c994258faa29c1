"""Opening what the stages wrote: one function per kind of artifact, each returning a typed one.

Every reader of a run goes through here (as nerfstudio's `eval_setup`): the mesh stages, `render`
and `eval` alike. A stage must be complete to be opened; the checkpoint keys are `CheckpointKeys`.

    open_nerf(run)            NerfArtifact      the NeRF particles (field, background) and the recipe
    open_gaussians(run)       GaussiansArtifact the Gaussian-splat particles (cloud, background)
    open_first_stage(run)     either of these   by the run's scene.representation
    open_images(run)          ImageArtifact     a 2D run's particles, in the prior's space
    open_mesh(run, stage)     MeshArtifact      extract or geometry: the DMTet and the exported mesh
    open_latest_mesh(run)     MeshArtifact      geometry if it is complete, else extract
    open_textured(run)        TexturedArtifact  the texture stage's GLB, where its cameras saw it
    open_artifact(run, stage) any of these        by stage name (OPENERS), for what renders any stage
    run_recipe(run)           dict | None       the resolved recipe a run's later stages start from
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import Recipe, stored_recipe
from ..mesh.dmtet import DMTet
from ..mesh.export import load_glb, load_ply
from ..mesh.mesh import Mesh, fit_to_object_box
from ..render.background import Background
from ..scene.gaussians import GaussianCloud
from ..scene.nerf import NeRFField
from .checkpoint import CheckpointKeys, load_checkpoint, prefixed
from .directory import ArtifactError, RunDir

MESH_STAGES = ("extract", "geometry")


@dataclass
class NerfArtifact:
    path: Path  # the stage directory
    recipe: Recipe  # the recipe the stage ran
    particles: list[tuple[NeRFField, Background]]  # in eval mode

    def particle(self, k: int) -> tuple[NeRFField, Background]:
        if not 0 <= k < len(self.particles):
            raise ArtifactError(f"--particle {k}: the NeRF stage has {len(self.particles)} particle(s), "
                                f"0..{len(self.particles) - 1}")
        return self.particles[k]


@dataclass
class GaussiansArtifact:
    path: Path
    recipe: Recipe
    particles: list[tuple[GaussianCloud, Background]]  # in eval mode

    def particle(self, k: int) -> tuple[GaussianCloud, Background]:
        if not 0 <= k < len(self.particles):
            raise ArtifactError(f"--particle {k}: the stage has {len(self.particles)} Gaussian-splat particle(s), "
                                f"0..{len(self.particles) - 1}")
        return self.particles[k]


@dataclass
class ImageArtifact:
    path: Path
    recipe: Recipe
    x0: Tensor  # [n,C,h,w] the particles in the prior's space (latents for a latent model)

    def decode(self) -> Tensor:
        """The particles [n,3,H,W] in [0,1], decoded by the run's prior."""
        from ..prior import load_prior

        with torch.no_grad():
            return load_prior(self.recipe.prior).decode(self.x0).cpu()


@dataclass
class MeshArtifact:
    stage: str  # extract or geometry
    path: Path
    recipe: Recipe
    dmtet: DMTet  # the surface as the stage left it (what geometry refines and texture paints)
    mesh_file: Path  # mesh.ply: that surface with the NeRF's colours as vertex colours

    def surface(self) -> Mesh:
        """The DMTet's surface, detached, without colours."""
        with torch.no_grad():
            return self.dmtet.mesh().detach()

    def exported(self) -> Mesh:
        """mesh.ply as written, with its vertex colours."""
        return load_ply(self.mesh_file)


@dataclass
class TexturedArtifact:
    path: Path
    recipe: Recipe
    glb: Path
    source: str  # "geometry", "extract", or the path of the mesh file it painted
    mesh: Mesh  # in the object box, where the stage's cameras saw it
    uvs: Tensor  # [N,2]
    texture: Tensor  # [T,T,3] in [0,1]


def _complete(run: RunDir | Path, name: str) -> tuple[RunDir, Recipe, Path]:
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    stage = run.stage(name)
    return run, stored_recipe(stage.require_complete(name)["config"]), stage.path


def _nerf_stage(run: RunDir | Path, representation: str) -> tuple[Recipe, dict[str, Tensor], Path]:
    run, recipe, path = _complete(run, "nerf")
    actual = recipe.scene.representation
    if actual != representation:
        kinds = {"nerf": "a NeRF run", "gaussians": "a Gaussian-splat run",
                 "image": f"a 2D run, whose particles are images (in {path / 'images'})"}
        raise ArtifactError(f"{path} is {kinds[actual]}; this needs {kinds[representation].split(',')[0]}")
    return recipe, load_checkpoint(run.stage("nerf").checkpoint_dir).tensors, path


def open_nerf(run: RunDir | Path, device: str | torch.device = "cpu") -> NerfArtifact:
    recipe, tensors, path = _nerf_stage(run, "nerf")
    particles = []
    for i in range(recipe.nerf.particles):
        field, background = NeRFField(recipe.nerf.field), Background(recipe.nerf.background)
        field.load_state_dict(prefixed(tensors, CheckpointKeys.particle(i) + "field."))
        background.load_state_dict(prefixed(tensors, CheckpointKeys.particle(i) + "background."))
        particles.append((field.to(device).eval(), background.to(device).eval()))
    return NerfArtifact(path, recipe, particles)


def open_gaussians(run: RunDir | Path, device: str | torch.device = "cpu") -> GaussiansArtifact:
    recipe, tensors, path = _nerf_stage(run, "gaussians")
    particles = []
    for i in range(recipe.nerf.particles):
        part = CheckpointKeys.particle(i)
        cloud = GaussianCloud.from_tensors(prefixed(tensors, part + "gaussians."))
        background = Background(recipe.nerf.background)
        background.load_state_dict(prefixed(tensors, part + "background."))
        particles.append((cloud.to(device).eval(), background.to(device).eval()))
    return GaussiansArtifact(path, recipe, particles)


def open_first_stage(run: RunDir | Path) -> NerfArtifact | GaussiansArtifact:
    """The particles of the run's first (`nerf`) stage, NeRFs or Gaussian splats."""
    run, recipe, _ = _complete(run, "nerf")
    return open_gaussians(run) if recipe.scene.representation == "gaussians" else open_nerf(run)


def open_images(run: RunDir | Path) -> ImageArtifact:
    recipe, tensors, path = _nerf_stage(run, "image")
    x0 = torch.stack([tensors[CheckpointKeys.particle(i) + "image"] for i in range(recipe.nerf.particles)])
    return ImageArtifact(path, recipe, x0)


def dmtet_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A mesh stage's DMTet tensors. Extract checkpoints written by 0.1.0 before issue 13 keep
    them without the "dmtet." prefix; they read the same."""
    state = prefixed(tensors, CheckpointKeys.DMTET)
    return state if state or "sdf" not in tensors else tensors


def open_mesh(run: RunDir | Path, stage: str) -> MeshArtifact:
    if stage not in MESH_STAGES:
        raise ValueError(f"{stage} is not a mesh stage ({', '.join(MESH_STAGES)})")
    run, recipe, path = _complete(run, stage)
    tensors = load_checkpoint(run.stage(stage).checkpoint_dir).tensors
    return MeshArtifact(stage, path, recipe, DMTet.from_tensors(dmtet_tensors(tensors)), path / "mesh.ply")


def open_latest_mesh(run: RunDir | Path) -> MeshArtifact:
    """The refined mesh when geometry is complete, else the extracted one."""
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    for stage in reversed(MESH_STAGES):
        if (run.stage(stage).manifest or {}).get("status") == "complete":
            return open_mesh(run, stage)
    raise ArtifactError(f"{run.path} has no complete geometry or extract stage; run `prolific extract` first")


def open_textured(run: RunDir | Path) -> TexturedArtifact:
    """The GLB a user takes away. A texture stage that painted an external mesh exported it in
    that mesh's own coordinates; the stage saw it centred and scaled into the object box, and so
    does this artifact."""
    run, recipe, path = _complete(run, "texture")
    mesh, uvs, texture = load_glb(path / "model.glb")
    source = load_checkpoint(run.stage("texture").checkpoint_dir).extra.get("mesh")
    if source not in MESH_STAGES:
        mesh, _, _ = fit_to_object_box(mesh)
    return TexturedArtifact(path, recipe, path / "model.glb", str(source), mesh, uvs, texture)


# what renders or measures any stage opens it through this table (a new stage adds its opener)
OPENERS = {
    "nerf": open_first_stage,
    "extract": lambda run: open_mesh(run, "extract"),
    "geometry": lambda run: open_mesh(run, "geometry"),
    "texture": open_textured,
}


def open_artifact(run: RunDir | Path, stage: str) -> NerfArtifact | GaussiansArtifact | MeshArtifact | TexturedArtifact:
    if stage not in OPENERS:
        raise ArtifactError(f"unknown stage '{stage}' (one of {', '.join(OPENERS)})")
    return OPENERS[stage](run)


def run_recipe(run: RunDir | Path) -> dict | None:
    """The resolved recipe a run's later stages start from: the one its NeRF stage stored (which
    must be complete), or, for a run begun by texturing a mesh file (no NeRF stage), its texture
    stage's; None for such a run whose texture stage never started."""
    run = run if isinstance(run, RunDir) else RunDir.open(run)
    if run.stage("nerf").manifest is None:
        texture = run.stage("texture").manifest
        return texture["config"] if texture else None
    return run.stage("nerf").require_complete("nerf")["config"]

