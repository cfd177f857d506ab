"""One-line errors for failures deep inside tfds, TensorFlow, PIL or a user's code (theirs span many lines)."""

from __future__ import annotations

import os
import re


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _chain(error: BaseException):
    """``error`` and the errors it was raised from, innermost last."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


# Import names whose PyPI distribution is named otherwise.
_DISTRIBUTIONS = {"importlib_resources": "importlib-resources", "PIL": "pillow", "google.protobuf": "protobuf"}


def _missing_module(error: BaseException) -> str | None:
    """The name of the module whose import failed anywhere in ``error``'s chain, else None."""
    return next((e.name for e in _chain(error) if isinstance(e, ImportError) and getattr(e, "name", None)), None)


# Errors of a download that cannot reach its server (requests', urllib3's, urllib's, the builtin one).
_NETWORK_ERRORS = ("ConnectionError", "MaxRetryError", "NameResolutionError", "URLError", "ConnectTimeout")


def _no_network(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain that says a server could not be reached, else None."""
    return next((e for e in _chain(error) if type(e).__name__ in _NETWORK_ERRORS), None)


def unusable_data(name: str, data_dir: str, error: BaseException) -> Exception:
    """One line for any failure to prepare or read a dataset (tfds/TF errors span many lines).

    A module that cannot be imported is a broken install, and a server that cannot be reached is a
    missing network, not a damaged data folder: the message says which package to install or where the
    data must come from instead of which folder to delete.
    """
    module = _missing_module(error)
    if module is not None:
        top = module.split(".")[0]
        package = _DISTRIBUTIONS.get(module, _DISTRIBUTIONS.get(top, top.replace("_", "-")))
        return ModuleNotFoundError(
            f"preparing {name} needs the Python module {module!r}, which is not installed "
            f"(a dependency of tensorflow-datasets; pip install {package}, or install the locked "
            f"environment: pip install -r requirements/demo.txt)"
        )
    unreachable = _no_network(error)
    if unreachable is not None:  # deleting the folder would not help: say what would
        return ValueError(
            f"{name} cannot be downloaded into data_dir={data_dir!r} ({type(unreachable).__name__}: "
            f"{first_line(unreachable)[:120]}): expected network access to its source, or {name} prepared in "
            "that data_dir (prepare it where there is a network and copy the folder)"
        )
    first = re.sub(r"\{\{.*?\}\}\s*", "", (str(error).splitlines() or [""])[0])[:200]  # drop TF's op context
    return ValueError(
        f"{name} in data_dir={data_dir!r} cannot be prepared or read ({type(error).__name__}: "
        f"{first}); expected a writable directory with a complete tfds {name} (delete "
        f"{os.path.join(data_dir, name)} to prepare it again)"
    )
