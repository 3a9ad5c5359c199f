"""Only what pyproject.toml cannot say: recipes/ (YAML at the top of the repository, for users to read and copy)
is installed inside the package as ``nezha_cli.recipes``, so that a non-editable install finds them."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["nezha_cli*"]) + ["nezha_cli.recipes"],
    package_dir={"nezha_cli.recipes": "recipes"},
)
