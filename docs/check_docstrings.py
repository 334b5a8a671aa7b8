"""Check that every public name of fastbfly has a numpydoc Examples section with doctests.

Public names: everything in ``fastbfly.__all__`` and in the ``__all__`` of every public
module (``fastbfly/<name>.py`` without a leading underscore), and the public methods and
properties of those classes.  The examples themselves are run by
``python -m pytest --doctest-modules fastbfly``; this script only makes sure none is
missing.  Exit status 1, with the list, when some are.

    python docs/check_docstrings.py
"""

import importlib
import inspect
import pkgutil
import sys

import fastbfly


def has_examples(obj) -> bool:
    doc = inspect.getdoc(obj) or ""
    head, found, examples = doc.partition("Examples\n--------")
    return bool(found) and ">>>" in examples


def public_objects() -> dict:
    found = {}

    def add_class(qualname, cls):
        found.setdefault(qualname, cls)
        for member, value in vars(cls).items():
            if member.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property) or inspect.isfunction(value):
                found.setdefault(f"{qualname}.{member}", value)

    modules = [fastbfly] + [
        importlib.import_module(f"fastbfly.{info.name}")
        for info in pkgutil.iter_modules(fastbfly.__path__)
        if not info.name.startswith("_")
    ]
    for module in modules:
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                add_class(f"{obj.__module__}.{obj.__qualname__}", obj)
            elif inspect.isfunction(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def main() -> int:
    objects = public_objects()
    missing = sorted(name for name, obj in objects.items() if not has_examples(obj))
    print(f"{len(objects)} public functions, classes, methods and properties; "
          f"{len(missing)} without a doctested Examples section")
    for name in missing:
        print(f"  missing: {name}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
