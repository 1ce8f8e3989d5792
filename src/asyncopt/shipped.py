"""The ready experiment files that ship with asyncopt, by name: ``asyncopt run quickstart``.

They are the repository's ``configs/`` (the README and the docs use them there); the wheel
carries that directory as the package data ``asyncopt/configs/`` (``setup.py`` maps it, so there
is one copy). A name is a file's path under it without ``.toml``: ``quickstart``,
``paper-scale/apam_cifar10``. ``asyncopt configs`` lists them and copies one out for editing.
"""

from __future__ import annotations

import itertools
import re
import shutil
from importlib import resources
from pathlib import Path

from asyncopt.errors import ConfigError, nearest

SUFFIX = ".toml"


def directory() -> Path:
    """Where the ready configs are: the installed package data, else the source checkout's."""
    installed = Path(str(resources.files("asyncopt"))) / "configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def names() -> list[str]:
    """Every ready config's name, sorted (the top level first, then subdirectories)."""
    root = directory()
    found = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*" + SUFFIX)]
    return sorted(found, key=lambda name: (name.count("/"), name))


def find(name: str) -> Path | None:
    """The file of the ready config ``name`` (``.toml`` optional), or None."""
    stem = name.removesuffix(SUFFIX)
    return directory() / (stem + SUFFIX) if stem in names() else None


def summary(name: str, width: int = 76) -> str:
    """The first sentence of the file's leading comment (what it reproduces), at most ``width``
    characters."""
    path = find(name)
    lines = path.read_text().splitlines() if path else []
    comment = " ".join(line.lstrip("#").strip() for line in
                       itertools.takewhile(lambda line: line.startswith("#"), lines))
    clause = re.split(r"\. ", comment + " ", maxsplit=1)[0].strip()
    return clause if len(clause) <= width else clause[:width - 1].rsplit(" ", 1)[0] + " …"


def copy_out(name: str, destination: Path) -> Path:
    """Copy the ready config ``name`` to ``destination`` (a file, or a directory to put
    ``NAME.toml`` in); never overwrites a file."""
    source = find(name)
    if source is None:
        raise ConfigError("config name", name, unknown(name))
    target = destination / source.name if destination.is_dir() else destination
    if target.exists():
        raise ConfigError("--out", str(target), "a path where no file is yet (a copy never "
                          "overwrites)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def unknown(name: str) -> str:
    """What is allowed instead of ``name``: the ready configs, and the nearest one to it."""
    return (f"the name of a ready config: {', '.join(names())} (asyncopt configs)"
            + nearest(name.removesuffix(SUFFIX), names()))
