"""The one thing pyproject.toml cannot say: the repository's ``configs/`` is the package data
``asyncopt/configs/`` (one copy; ``asyncopt.shipped`` reads it). Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "asyncopt.configs"],
      package_dir={"": "src", "asyncopt.configs": "configs"})
