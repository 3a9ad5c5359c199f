"""``nezha recipes``: list the shipped recipes, show one, copy one for editing (like torchtune's ls/cp)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click


@click.group(context_settings={"show_default": True})
def recipes() -> None:
    """List, show and copy training recipes (YAML files of model, data and training settings)."""


@recipes.command("list")
def list_() -> None:
    """List the shipped recipes with their descriptions."""
    from nezha_cli.pretraining.recipes import list_recipes, load_recipe

    for name in list_recipes():
        click.echo(f"{name:<18} {load_recipe(name).description}")


@recipes.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print RECIPE (a name or a .yaml file) with overrides applied, and the keys it accepts."""
    from nezha_cli.pretraining.recipes import SECTIONS, load_recipe, recipe_keys

    loaded = load_recipe(recipe, overrides)
    click.echo(loaded.to_yaml(), nl=False)
    click.echo("\n# Keys accepted as KEY=VALUE overrides:")
    for section in SECTIONS:
        click.echo(f"#   {section}: {', '.join(recipe_keys(section))}")


@recipes.command()
@click.argument("recipe")
@click.argument("destination", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def copy(recipe: str, destination: Path, overwrite: bool) -> None:
    """Copy RECIPE to DESTINATION (a file or directory) for editing; use it with --recipe FILE."""
    from nezha_cli.io import check_output_path
    from nezha_cli.pretraining.recipes import load_recipe, resolve_recipe

    source = resolve_recipe(recipe)
    load_recipe(source)  # a file that is not a valid recipe is refused here, not at its first use
    target = destination / source.name if destination.is_dir() else destination
    check_output_path(target, overwrite, create_parent=True)
    shutil.copyfile(source, target)
    click.echo(str(target))
