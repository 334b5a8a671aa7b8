#!/usr/bin/env python
"""Write the small intersphinx inventories shipped in ``docs/_intersphinx/``.

Sphinx's intersphinx fetches ``objects.inv`` from each project's site at build time.
The machines that build these docs (developers' and CI's) reach package registries
only, so the build would warn (an error under ``-W``) or wait on time-outs.  Instead,
``docs/conf.py`` points intersphinx at these local files, which hold only the numpy,
scipy and PyLops names the documentation refers to, with their real addresses on the
projects' sites (same URL scheme as the full inventories).  Links therefore work in the
built pages; add a name here when a page or docstring starts referring to it::

    python scripts/make_intersphinx_inventories.py

With network access, the full inventories can be used instead: download
``https://numpy.org/doc/stable/objects.inv`` (and scipy's, PyLops') over these files.
"""

from __future__ import annotations

import importlib
import inspect
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "_intersphinx"

# project -> (version label, URL path template for one object page, names)
PROJECTS = {
    "numpy": ("stable", "reference/generated/{name}.html", [
        "numpy.ndarray", "numpy.dtype", "numpy.eye", "numpy.load", "numpy.savez",
        "numpy.linalg.svd", "numpy.linalg.norm", "numpy.linalg.qr", "numpy.fft.fft",
        "numpy.random.default_rng", "numpy.random.Generator",
    ]),
    "scipy": ("stable", "reference/generated/{name}.html", [
        "scipy.sparse.linalg.LinearOperator", "scipy.sparse.linalg.aslinearoperator",
        "scipy.sparse.linalg.lsqr", "scipy.sparse.linalg.lsmr", "scipy.sparse.linalg.cg",
        "scipy.sparse.linalg.gmres", "scipy.sparse.linalg.svds",
        "scipy.sparse.csr_array", "scipy.fft.fft", "scipy.optimize.minimize",
        "scipy.linalg.svd",
    ]),
    "pylops": ("stable", "api/generated/{name}.html", [
        "pylops.LinearOperator", "pylops.MatrixMult", "pylops.Kronecker",
        "pylops.optimization.basic.cgls", "pylops.optimization.basic.lsqr",
        "pylops.utils.dottest",
    ]),
}


# Objects documented on a shared page rather than one page each.
PAGES = {
    "numpy.random.default_rng": "reference/random/generator.html#$",
    "numpy.random.Generator": "reference/random/generator.html#$",
}


def role_of(name: str) -> str:
    """``py:class``, ``py:function`` or ``py:method`` from the installed object (a class
    when it cannot be imported and starts with a capital letter)."""
    module_name, _, attribute = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError):
        return "py:class" if attribute[:1].isupper() else "py:function"
    if inspect.isclass(obj):
        return "py:class"
    return "py:function"


def write_inventory(project: str, version: str, template: str, names) -> Path:
    lines = []
    for name in names:
        # "$" at the end of a URI stands for the object's name (intersphinx convention)
        uri = PAGES.get(name, template.format(name="$"))
        lines.append(f"{name} {role_of(name)} 1 {uri} -")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{project}-objects.inv"
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode()))
    return path


def main() -> int:
    for project, (version, template, names) in PROJECTS.items():
        path = write_inventory(project, version, template, names)
        print(f"wrote {path} ({len(names)} names)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
