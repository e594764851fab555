"""Import a source checkout as the package ``dpcompat`` (for ``python cli.py`` and the tests).

The repository's root folder *is* the package; an installed dpcompat exposes only that name. Running
from a checkout uses the checkout's code even when another dpcompat is installed, and takes the
checkout folder off ``sys.path`` so its ``evaluate/`` cannot shadow Hugging Face's ``evaluate``.
"""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def import_checkout(name: str = "dpcompat"):
    """Register this checkout as the package ``name`` (once) and return it."""
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != ROOT]
    module = sys.modules.get(name)
    if module is not None and Path(module.__file__).resolve().parent == ROOT:
        return module
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__dpcompat_worker__":
    # Run by runpy as the initializer of a spawn/forkserver worker of dpcompat.infer.data.workers, with
    # ``then`` = (module, function, args) given as a global: register the package, then hand over.
    import importlib

    import_checkout()
    _module, _function, _args = then  # noqa: F821 (a global runpy passes in)
    getattr(importlib.import_module(_module), _function)(*_args)
