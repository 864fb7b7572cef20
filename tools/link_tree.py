"""Lay out the ``raylane`` package as it is imported, as a tree of symbolic links.

pyproject maps ``raylane`` to runtime/ and ``raylane.actors`` to actors/ (and so on); an
editable install resolves that with an import hook that type checkers cannot follow. This
builds ``<out>/raylane/...`` from the same mapping, for mypy: ``python tools/link_tree.py build/typecheck``.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path) -> Path:
    """Make ``out/raylane`` afresh; returns it."""
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = out / "raylane"
    if top.exists():
        shutil.rmtree(top)
    for package, folder in sorted(mapping.items()):
        dest = out.joinpath(*package.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for source in sorted((ROOT / folder).glob("*.py")) + sorted((ROOT / folder).glob("py.typed")):
            (dest / source.name).symlink_to(source)
    return top


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build" / "typecheck")))
