"""Recipes: YAML files of ``model``, ``data`` and ``training`` settings that a user can read, copy and override.

The shipped recipes live in ``recipes/`` at the top of the repository and inside the installed package as
``nezha_cli.recipes``. A recipe is named (``tiny``) or given as a path (``my-recipe.yaml``). Overrides are
``section.key=value`` (``training.learning_rate=1e-4``) or, when the key exists in one section only, ``key=value``;
values are parsed as YAML (``1e-4``, ``true``, ``null``). Unknown keys and wrong types are one-line ConfigErrors.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nezha_cli.engine.args import TrainingArguments
from nezha_cli.errors import ConfigError
from nezha_cli.modeling import NezhaConfig
from nezha_cli.modeling.configuration import MODEL_FIELDS

SECTIONS = ("model", "data", "training")
# Fields a recipe may not set: the output directory and run mode come from the command line; labels and
# architecture names are not pretraining settings.
_NOT_IN_RECIPES = {
    "model": {"use_cache"},
    "training": {"output_dir", "resume", "overwrite", "progress"},
    "data": set(),
}


@dataclass
class DataOptions:
    """How pretraining instances are built from a raw corpus (`nezha tokenize` and `nezha mask` options of the same
    names), and how many are held out for evaluation."""

    # The vocab to tokenize a raw corpus with: a vocab.txt, or null for the 21128-token BERT-Chinese vocab. With
    # --init-from, the model's vocab.txt is used instead.
    vocab: str | None = None
    # Learn a WordPiece vocab of about this many tokens from the corpus instead (`nezha tokenize --build-vocab`).
    build_vocab: int | None = None
    whole_word_mask: bool = True
    # Use only the first N documents of a raw corpus (quick trials).
    max_documents: int | None = None
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    # One masked copy of the corpus by default, as `nezha mask` (InstanceConfig); the shipped base/large recipes set
    # BERT's 10 for static masks (tests/test_recipes.py checks the defaults agree).
    dupe_factor: int = 1
    # Mask at train time, a new mask every epoch (raw corpora and `nezha tokenize` outputs; a `nezha mask` output
    # says itself).
    dynamic: bool = False
    # Instances held out from the training data for the periodic evaluation (MLM accuracy, perplexity).
    eval_examples: int = 0
    eval_batch_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_seq_length", "max_predictions_per_seq", "dupe_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)}: must be >= 1")
        if self.max_seq_length < 5:
            raise ConfigError(f"data.max_seq_length={self.max_seq_length}: needs room for [CLS] A [SEP] B [SEP], "
                              "at least 5")
        if self.vocab is not None and self.build_vocab is not None:
            raise ConfigError("data.vocab and data.build_vocab are both set; give one of them (or neither, for "
                              "the BERT-Chinese vocab)")
        if self.build_vocab is not None and self.build_vocab < 6:
            raise ConfigError(f"data.build_vocab={self.build_vocab}: a vocab needs more than the 5 special tokens")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError(f"data.max_documents={self.max_documents}: must be >= 1 (or null for all)")
        if not 0 < self.masked_lm_prob < 1:
            raise ConfigError(f"data.masked_lm_prob={self.masked_lm_prob}: must be in (0, 1)")
        if not 0 <= self.short_seq_prob <= 1:
            raise ConfigError(f"data.short_seq_prob={self.short_seq_prob}: must be in [0, 1]")
        if self.eval_examples < 0:
            raise ConfigError(f"data.eval_examples={self.eval_examples}: must be >= 0")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size={self.eval_batch_size}: must be >= 1")


_SCHEMAS: dict[str, type] = {"data": DataOptions, "training": TrainingArguments}


def _field_types(section: str) -> dict[str, Any]:
    """Each recipe key of ``section`` with its type annotation (the model's from NezhaConfig's MODEL_FIELDS)."""
    if section == "model":
        return {name: kind for name, (kind, _) in MODEL_FIELDS.items()}
    return typing.get_type_hints(_SCHEMAS[section])


@dataclass
class Recipe:
    name: str
    source: Path | None
    description: str = ""
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def model_config(self, **fixed: Any) -> NezhaConfig:
        try:
            config = NezhaConfig(**{**self.model, **fixed})
            config.validate()
            return config
        except ConfigError as exc:
            raise ConfigError(f"recipe {self.name}: model.{exc}") from None

    def data_options(self) -> DataOptions:
        try:
            return DataOptions(**self.data)
        except ConfigError as exc:
            raise ConfigError(f"recipe {self.name}: {exc}") from None

    def training_arguments(self, output_dir: Path, **fixed: Any) -> TrainingArguments:
        try:
            return TrainingArguments(output_dir=output_dir, **{**self.training, **fixed})
        except ConfigError as exc:
            raise ConfigError(f"recipe {self.name}: training.{exc}") from None

    def validate(self) -> None:
        self.model_config()
        self.data_options()
        self.training_arguments(Path("."))

    def to_yaml(self) -> str:
        body = {s: getattr(self, s) for s in SECTIONS if getattr(self, s)}
        head = f"# {self.description}\n" if self.description else ""
        return head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------------ finding


def recipes_dir() -> Path:
    """The shipped recipes: ``nezha_cli/recipes/`` when installed, else ``recipes/`` of the source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "recipes"
    if installed.is_dir() and any(installed.glob("*.yaml")):
        return installed
    return package.parent / "recipes"


def list_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def resolve_recipe(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        return path
    known = list_recipes()
    if str(name_or_path) not in known:
        close = difflib.get_close_matches(str(name_or_path), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; {hint}known recipes: {', '.join(known)} "
                          "(or give a .yaml file)")
    return known[str(name_or_path)]


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe, apply ``key=value`` overrides and validate every section."""
    path = resolve_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: recipe is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with sections {', '.join(SECTIONS)}")
    unknown = set(data) - set(SECTIONS) - {"description"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    recipe = Recipe(name=path.stem, source=path, description=str(data.get("description") or _first_comment(text)))
    for section in SECTIONS:
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section} must be a mapping of key: value")
        for key, value in values.items():
            _check_key(section, key, source=str(path))
            getattr(recipe, section)[key] = _coerce(section, key, value, source=str(path))
    for item in overrides:
        apply_override(recipe, item)
    recipe.validate()
    return recipe


def _first_comment(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


# ------------------------------------------------------------------------------------------------ overrides


def recipe_keys(section: str) -> list[str]:
    names = list(MODEL_FIELDS) if section == "model" else [f.name for f in dataclasses.fields(_SCHEMAS[section])]
    return [name for name in names if name not in _NOT_IN_RECIPES[section]]


def _check_key(section: str, key: str, source: str) -> None:
    known = recipe_keys(section)
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {section}.{close[0]}?" if close else f"; known {section} keys: {', '.join(known)}"
        raise ConfigError(f"{source}: unknown recipe key {section}.{key}{hint}")


def apply_override(recipe: Recipe, item: str) -> None:
    """Apply one ``section.key=value`` or ``key=value`` override to ``recipe``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. training.learning_rate=1e-4")
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; use {', '.join(SECTIONS)}")
    else:
        owners = [s for s in SECTIONS if key in recipe_keys(s)]
        if not owners:
            every = [f"{s}.{k}" for s in SECTIONS for k in recipe_keys(s)]
            close = difflib.get_close_matches(key, [k.split(".", 1)[1] for k in every], n=1)
            hint = f"; did you mean {close[0]}?" if close else "; `nezha recipes show NAME` lists the keys"
            raise ConfigError(f"override {item!r}: unknown recipe key {key!r}{hint}")
        if len(owners) > 1:
            raise ConfigError(f"override {item!r}: {key} is in sections {' and '.join(owners)}; write "
                              f"{owners[0]}.{key}=...")
        section, name = owners[0], key
    _check_key(section, name, source=f"override {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    getattr(recipe, section)[name] = _coerce(section, name, value, source=f"override {item!r}")


def _coerce(section: str, key: str, value: Any, source: str) -> Any:
    """Check ``value`` against the field's annotation (int, float, bool, str, optional); ints pass as floats."""
    hints = _field_types(section)
    annotation = hints.get(key)
    allowed = _allowed_types(annotation)
    if value is None:
        if type(None) in allowed or not allowed:
            return None
        raise ConfigError(f"{source}: {section}.{key} may not be null")
    if not allowed or any(t not in (int, float, bool, str, type(None)) for t in allowed):
        return value
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, str) and float in allowed:
        # YAML 1.1 reads "1e-4" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigError(f"{source}: {section}.{key}={value!r} must be {names}")


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    if annotation is None:
        return ()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(annotation) for t in _allowed_types(arg))
    if origin is not None:
        return (origin,)
    if isinstance(annotation, type):
        return (annotation,)
    return ()
