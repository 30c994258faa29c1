"""Recipe files: finding them (./recipes first, then the package's), listing them, and merging
defaults <- a stored config <- a recipe file <- `--set a.b=c` overrides into a checked Recipe.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import ConfigError, Recipe, from_dict, upgrade_stored


def merge(base: dict, update: dict) -> dict:
    """Recursive dict update; the update's leaves win."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """`a.b.c=value` -> {'a': {'b': {'c': value}}}; the value is read as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value with a dotted key, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


PACKAGE_RECIPES = Path(__file__).resolve().parent / "recipes"  # shipped inside the package (and the wheel)


def _first_sentence(path: Path) -> str:
    """The first sentence of a recipe's opening comment (its description)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words += line.lstrip("#").split()
    text = " ".join(words)
    for i, c in enumerate(text):
        after = text[i + 1:i + 3]
        if c in ":;" and after[:1] == " ":
            return text[:i]
        if c == "." and (after == "" or (after[:1] == " " and after[1:].isupper())) and \
                not text[:i].endswith(("Sec", "App", "Eq", "Fig", "al", "e.g", "i.e")):
            return text[:i]
    return text


def recipe_search_dirs() -> list[Path]:
    """Where a bare recipe name is looked up: ./recipes (your own), then the package's."""
    return [Path.cwd() / "recipes", PACKAGE_RECIPES]


def shipped_recipes() -> dict[str, str]:
    """Every recipe a bare name finds, by name, with its first comment line (./recipes first)."""
    found: dict[str, str] = {}
    for folder in recipe_search_dirs():
        for path in sorted(folder.glob("*.yaml"), key=lambda p: p.stem):
            if path.stem not in found:
                found[path.stem] = _first_sentence(path)
    return found


def resolve_recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    stem = name_or_path if name_or_path.endswith((".yaml", ".yml")) else f"{name_or_path}.yaml"
    if "/" not in name_or_path:
        for folder in recipe_search_dirs():
            if (folder / stem).is_file():
                return (folder / stem).resolve()
    raise ConfigError(f"recipe '{name_or_path}' not found (give a YAML path, or a name that "
                      f"`prolific recipes` lists: {', '.join(shipped_recipes())})")


def load_recipe_dict(name_or_path: str) -> dict:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections")
    data.setdefault("name", path.stem)
    return data


def merge_recipe(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                 base: dict | None = None) -> Recipe:
    """Defaults <- `base` (a previous stage's stored config) <- recipe file <- each `--set` in
    order; validated at every layer. Settings that depend on the method are left as given:
    `methods.build_recipe` resolves them."""
    data: dict = upgrade_stored(base) if base else {}
    if recipe:
        recipe_data = load_recipe_dict(recipe)
        from_dict(recipe_data)  # report a bad recipe key against the recipe, before any override
        data = merge(data, recipe_data)
    for text in overrides:
        override = parse_override(text)
        from_dict(override)  # report a bad override on its own
        data = merge(data, override)
    return from_dict(data)
