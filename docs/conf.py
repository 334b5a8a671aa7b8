"""Sphinx configuration of the fastbfly documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    python -m sphinx -W -b html docs docs/_build/html

``-W`` turns every warning into an error, as CI does.  The gallery (``docs/examples``)
is executed at every build; examples comparing with pyfaust and lazylinop read cached
results from ``docs/data`` (``scripts/regenerate_docs_data.py`` regenerates them).
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import fastbfly

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The gallery and the plot directive run without a display.
os.environ.setdefault("MPLBACKEND", "Agg")

# -- project ---------------------------------------------------------------------------
project = "fastbfly"
author = "the fastbfly developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = fastbfly.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "matplotlib.sphinxext.plot_directive",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    # Result pages written by the benchmark scripts.  performance.md is not a page of
    # its own: performance.rst includes it (one document name, two sources otherwise).
    "performance.md",
    # Cached results and inventories: data, not pages (data/compare.md is included).
    "data",
    "_intersphinx",
]
templates_path = []
default_role = "py:obj"  # `Name` in docstrings links to the object when it exists
pygments_style = "sphinx"

# -- autodoc / numpydoc ------------------------------------------------------------------
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
autosummary_generate = False  # the API page documents every object itself
numpydoc_show_class_members = False  # members are listed by autodoc's :members:
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- intersphinx -----------------------------------------------------------------------
# The build machines reach package registries only, not numpy.org & co.  Each project's
# inventory is therefore read from a small local file first (docs/_intersphinx/, written
# by scripts/make_intersphinx_inventories.py with the names these pages use and their
# real addresses).  The first location that loads wins, so no network access is tried;
# where the local file is missing the remote one is fetched as usual.
intersphinx_mapping = {
    "numpy": ("https://numpy.org/doc/stable/", ("_intersphinx/numpy-objects.inv", None)),
    "scipy": ("https://docs.scipy.org/doc/scipy/", ("_intersphinx/scipy-objects.inv", None)),
    "pylops": ("https://pylops.readthedocs.io/en/stable/", ("_intersphinx/pylops-objects.inv", None)),
}
intersphinx_timeout = 5

# -- myst (markdown result pages) ------------------------------------------------------
myst_heading_anchors = 3

# -- sphinx-gallery --------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py|_common\.py",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "reference_url": {"fastbfly": None},
    "doc_module": ("fastbfly",),
    "backreferences_dir": None,
    "min_reported_time": 1,
    "matplotlib_animations": False,
    "show_memory": False,
    "download_all_examples": False,
}

# -- plot directive (performance and limitations pages) --------------------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.figsize": (7.5, 4.2)}
plot_working_directory = str(HERE)

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"fastbfly {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": True,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path = []
html_show_sourcelink = False


# -- generated fragments -----------------------------------------------------------------
# Some content depends on what exists at build time: public names added to the package
# after the API page was written, and result pages written by benchmark scripts.  They
# are injected into the documents' source text when Sphinx reads them (no generated
# files in the source tree).

API_PLACEHOLDER = ".. fastbfly-api-extra::"
PERFORMANCE_PLACEHOLDER = ".. fastbfly-performance-report::"
RESULTS_PLACEHOLDER = ".. fastbfly-result-pages::"
# Result pages first in this order, then any other markdown page, alphabetically.
RESULT_ORDER = ["noise_robustness", "gradient_baseline", "certificate", "minilm"]


def _result_pages() -> str:
    """A toctree of the markdown result pages (docs/*.md) that exist now."""
    found = sorted(p.stem for p in HERE.glob("*.md") if p.name not in exclude_patterns)
    ordered = [name for name in RESULT_ORDER if name in found]
    ordered += [name for name in found if name not in ordered]
    if not ordered:
        return ""
    entries = "\n".join(f"   {name}" for name in ordered)
    return f".. toctree::\n   :maxdepth: 1\n   :caption: Measured results\n\n{entries}\n"


def _documented_names(api_text: str) -> set:
    names = set()
    for line in api_text.splitlines():
        stripped = line.strip()
        for directive in (".. autofunction::", ".. autoclass::", ".. autodata::"):
            if stripped.startswith(directive):
                names.add(stripped[len(directive):].strip().rpartition(".")[2])
    return names


def _api_extra(api_text: str) -> str:
    """autodoc entries for every name of ``fastbfly.__all__`` the page does not cover."""
    missing = sorted(set(fastbfly.__all__) - _documented_names(api_text))
    if not missing:
        return ""
    lines = ["Other public names", "------------------", "", ".. currentmodule:: fastbfly", ""]
    for name in missing:
        kind = "autoclass" if isinstance(getattr(fastbfly, name), type) else "autofunction"
        lines += [f".. {kind}:: {name}", "   :members:" if kind == "autoclass" else "", ""]
    return "\n".join(lines)


def _performance_report() -> str:
    """The side-by-side report of benchmarks/compare.py: docs/performance.md when it has
    been written there, else the copy cached in docs/data/compare.md."""
    for relative in ("performance.md", "data/compare.md"):
        if (HERE / relative).exists():
            return f".. include:: {relative}\n   :parser: myst_parser.sphinx_\n"
    return (
        ".. note::\n\n   The side-by-side report of ``benchmarks/compare.py`` "
        "(``docs/performance.md``) was not present when these pages were built.\n"
    )


LATENCY_PLACEHOLDER = ".. fastbfly-latency-table::"
LATENCY_STEPS = [
    ("import", "``import fastbfly``"),
    ("first_factorize", "first ``factorize`` (256 × 256)"),
    ("first_matvec", "first ``B @ x``"),
    ("second_factorize", "second ``factorize``"),
    ("second_matvec", "second ``B @ x``"),
]


def _latency_table() -> str:
    """docs/data/compile_latency.json as a list-table (medians over the trials)."""
    import json
    import statistics

    data = json.loads((HERE / "data" / "compile_latency.json").read_text())
    runs = data["runs"]

    def cell(label, step):
        values = [run[step] for run in runs[label]]
        if isinstance(values[0], dict):  # wall and CPU time
            wall = statistics.median(v["wall"] for v in values)
            cpu = statistics.median(v["cpu"] for v in values)
            return f"{wall:.3g} s ({cpu:.3g} s CPU)"
        return f"{statistics.median(values):.3g} s"

    meta = data["meta"]
    trials = len(runs["empty cache"])
    lines = [
        ".. list-table:: First-call latency, median of "
        f"{trials} fresh process{'es' if trials > 1 else ''} each "
        f"(measured {meta['date'][:10]}, load average {meta['load_average_at_end']})",
        "   :header-rows: 1",
        "",
        "   * - step",
        "     - empty ``NUMBA_CACHE_DIR``",
        "     - warm cache",
    ]
    for step, label in LATENCY_STEPS:
        lines += [f"   * - {label}", f"     - {cell('empty cache', step)}",
                  f"     - {cell('warm cache', step)}"]
    return "\n".join(lines) + "\n"


def _inject(app, docname, source):
    text = source[0]
    if docname == "api" and API_PLACEHOLDER in text:
        source[0] = text.replace(API_PLACEHOLDER, _api_extra(text))
    elif docname == "index" and RESULTS_PLACEHOLDER in text:
        source[0] = text.replace(RESULTS_PLACEHOLDER, _result_pages())
    elif docname == "limitations" and LATENCY_PLACEHOLDER in text:
        source[0] = text.replace(LATENCY_PLACEHOLDER, _latency_table())
    elif docname == "performance" and PERFORMANCE_PLACEHOLDER in text:
        source[0] = text.replace(PERFORMANCE_PLACEHOLDER, _performance_report())


GENERATED = ["performance", "index", "api", "limitations"]


def setup(app):
    app.connect("source-read", _inject)
    # The included markdown report changes outside Sphinx's view: re-read the page.
    app.connect("env-get-outdated", lambda app, env, added, changed, removed: GENERATED)
