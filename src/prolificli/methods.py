"""The method table: every distillation method, what it needs and what it defaults to.

One entry per method, as nerfstudio's method_configs: the distiller's factory, the default CFG
scale, whether it trains a score model, what else the recipe must allow, and the line `--help`
shows. Recipe resolution (`build_recipe`), the CLI's help, the stages' `build_distiller`, the
Gaussian example and the evaluation table all read it: a new method is its file in distill/
and one entry here.

`build_recipe` lives here rather than in config.py because resolving a recipe needs the table
(a CFG scale left unset is the method's own), and config.py sits below the distillers. The
factories import distill/ when they are called, so `prolific --help` does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ConfigError, GuidanceConfig, Recipe
from .recipe_files import merge_recipe

if TYPE_CHECKING:
    from .distill.score_model import ScoreModel
    from .distributed import World


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help
    default_cfg_scale: float
    needs_score_model: bool  # VSD's LoRA score model eps_phi, trained alongside theta
    # (prior, guidance, score model or None, recipe) -> the distiller
    factory: Callable[..., object]
    # what the recipe must allow for this method: None when it does, else why not
    requires: Callable[[Recipe], str | None] = lambda recipe: None


def _sds(prior, guidance: GuidanceConfig, score_model, recipe: Recipe):
    from .distill.sds import SDS

    return SDS(prior, guidance)


def _vsd(prior, guidance: GuidanceConfig, score_model, recipe: Recipe):
    from .distill.vsd import VSD

    return VSD(prior, score_model, guidance, recipe.score_model)


def _lvsd(prior, guidance: GuidanceConfig, score_model, recipe: Recipe):
    from .distill.lookahead import LVSD

    return LVSD(prior, score_model, guidance, recipe.score_model)


def _l2vsd(prior, guidance: GuidanceConfig, score_model, recipe: Recipe):
    from .distill.lookahead import L2VSD

    return L2VSD(prior, score_model, guidance, recipe.score_model, recipe.lookahead)


def _esd(prior, guidance: GuidanceConfig, score_model, recipe: Recipe):
    from .distill.esd import ESD

    return ESD(prior, score_model, guidance, recipe.score_model, recipe.esd)


def _camera_free_score(recipe: Recipe) -> str | None:
    score_model = recipe.score_model
    if score_model.camera_embedding and score_model.camera_dropout > 0:
        return None
    return ("ESD mixes in the score model's camera-free prediction, which it learns only with "
            "score_model.camera_embedding: true and score_model.camera_dropout > 0")


# CFG scales: ProlificDreamer Sec. 5 (VSD at 7.5) and DreamFusion (SDS at 100); the VSD variants
# keep VSD's scale. The first entry is the default method.
METHODS: dict[str, Method] = {method.name: method for method in (
    Method("vsd", "ProlificDreamer's Variational Score Distillation", 7.5, True, _vsd),
    Method("l2vsd", "VSD plus L2-VSD's linearised lookahead of the score model", 7.5, True, _l2vsd),
    Method("l-vsd", "VSD scored with the score model after its update (the lookahead L2-VSD linearises)",
           7.5, True, _lvsd),
    Method("esd", "Entropic Score Distillation: VSD mixed with the camera-free score", 7.5, True, _esd,
           requires=_camera_free_score),
    Method("sds", "DreamFusion's Score Distillation Sampling (no score model)", 100.0, False, _sds),
)}


def method(name: str, key: str = "guidance.method") -> Method:
    """The table's entry for `name`, or a ConfigError that lists the choices."""
    if name not in METHODS:
        choices = ", ".join(repr(n) for n in METHODS)
        raise ConfigError(f"{key}: {name!r} is not one of {choices}")
    return METHODS[name]


def methods_help() -> str:
    """`--method`'s help: every method and its default CFG scale."""
    return "; ".join(f"{m.name}: {m.summary} (CFG {m.default_cfg_scale:g})" for m in METHODS.values())


def build_distiller(guidance: GuidanceConfig, recipe: Recipe, prior, score_model: ScoreModel | None = None,
                    world: World | None = None):
    """The distiller of one stage's guidance. A method with a score model gets a new LoRA score
    model of the recipe's settings unless one is given (the Gaussian example brings its own).
    Spread over several processes, each holds a replica of the score model, and its gradient is
    averaged over them before every optimiser step, so the replicas stay identical."""
    entry = method(guidance.method)
    if entry.needs_score_model and score_model is None:
        from .distill.score_model import ScoreModel

        score_model = ScoreModel(prior, recipe.score_model)
    distiller = entry.factory(prior, guidance, score_model, recipe)
    if entry.needs_score_model and world is not None and world.active:
        parameters = score_model.trainable_parameters()
        distiller.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: world.average_gradients(parameters))
    return distiller


def resolve_methods(recipe: Recipe) -> Recipe:
    """Fill in and check what depends on each stage's method, in place: a CFG scale left unset
    becomes the method's own, and a method the recipe cannot run is a ConfigError."""
    for key, guidance in (("guidance", recipe.guidance), ("geometry.guidance", recipe.geometry.guidance),
                          ("texture.guidance", recipe.texture.guidance)):
        entry = method(guidance.method, f"{key}.method")
        if guidance.cfg_scale is None:
            guidance.cfg_scale = entry.default_cfg_scale
        reason = entry.requires(recipe)
        if reason is not None:
            raise ConfigError(reason)
    return recipe


def build_recipe(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                 base: dict | None = None) -> Recipe:
    """Defaults <- `base` (a previous stage's resolved config) <- recipe file <- each `--set` in
    order, validated at every layer (recipe_files.merge_recipe), then resolved against the method
    table, so that the recipe a manifest stores holds plain numbers."""
    return resolve_methods(merge_recipe(recipe, overrides, base=base))
