"""Example data and configs shipped inside the package (so an installed mlip has them too).

    configs/   the YAML training configs: example.yaml (Si, minutes on a CPU), mace_example.yaml,
               finetune_example.yaml and the benchmark set-ups (3bpa, rmd17_*, mlearn_si, mace_3bpa*)
    data/      si_train.extxyz (71 structures) and si_test.extxyz (12): mlearn Si subsets,
               BSD-3-Clause, licence in data/LICENSE-mlearn-si; molecules/: water and CHFClBr
               labelled with PySCF (energy, forces, dipole, polarizability; molecules/README.md)

This folder is the one canonical copy. In a source checkout the top-level ``configs`` and
``data`` are symlinks to it, so the commands in the README (``mlip train configs/example.yaml``,
run from the repository root) keep working; the wheel holds the real files under
``mlip/examples``. The configs name their data relative to the directory mlip is started from
(``data/si_train.extxyz``), so after ``pip install`` a user gets a working copy with
``mlip demo --copy-examples DIR`` (:func:`mlip.demo.copy_examples`) and runs ``mlip train
configs/example.yaml`` inside ``DIR``.

Only the standard library is imported here (this folder is the lowest layer of the package,
tests/test_package_layers.py). A missing file is reported by whoever opens it (the structure
reader, the config loader, MD), as an :class:`~mlip.errors.InputError` naming the path.
"""
from __future__ import annotations

import os
from importlib import resources
from typing import List

#: the folders of examples, relative to this package
FOLDERS = ("configs", "data")


def example_path(*parts: str) -> str:
    """File-system path of a shipped example file, e.g. ``example_path("data", "si_test.extxyz")``;
    no parts: this folder. The path is not checked here (see the module docstring)."""
    # installed from a wheel or used from a checkout, the package is a folder on disk, and
    # importlib.resources gives its real path (a zipped package would give a path that does not
    # exist, which the reader then names)
    return str(resources.files(__name__).joinpath(*parts))


def example_files() -> List[str]:
    """Every shipped example file, relative to this package (``configs/example.yaml``, ...); none
    when the package data is missing (an installation without it)."""
    root = example_path()
    out = []
    for folder in FOLDERS:
        for here, dirs, files in os.walk(os.path.join(root, folder)):
            dirs.sort()
            relative = os.path.relpath(here, root).replace(os.sep, "/")
            out += [f"{relative}/{name}" for name in sorted(files) if not name.startswith(".")]
    return out
