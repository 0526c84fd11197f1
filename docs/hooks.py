"""MkDocs hooks: where the API reference finds the package, and the benchmark charts.

- The package installs under one import namespace from several top-level folders (pyproject's
  `[tool.setuptools.package-dir]`: `trainers/` is `neat_hf.trainers`, and so on), which griffe, mkdocstrings'
  source reader, cannot follow. `build/docs-package/neat_hf` is rebuilt at each build as a tree of symlinks laid out as
  the package installs, and mkdocs.yml points the Python handler's `paths` at it; the docstrings are read from the
  sources, nothing is imported.
- `benchmarks/results/*.png` is the one copy of each chart (the benchmark scripts write them there); every PNG is
  added to the site as `results/charts/<name>.png`, so the results pages show them without a second copy in `docs/`.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
CHARTS = ROOT / "benchmarks" / "results"
PACKAGE_VIEW = ROOT / "build" / "docs-package"


def _build_package_view() -> None:
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(PACKAGE_VIEW, ignore_errors=True)
    for package, folder in sorted(package_dirs.items()):  # parents before their subpackages
        target = PACKAGE_VIEW.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).rglob("*.py"):  # subpackages (neat_hf/cards/, neat_hf/cli/train/) too
            link = target / source.relative_to(ROOT / folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)


def on_startup(command: str, dirty: bool) -> None:
    _build_package_view()


def on_files(files: Files, config) -> Files:  # noqa: ANN001 (MkDocs' config object)
    for chart in sorted(CHARTS.glob("*.png")):
        files.append(File.generated(config, f"results/charts/{chart.name}", abs_src_path=str(chart)))
    return files
