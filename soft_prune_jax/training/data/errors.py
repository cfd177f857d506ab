"""One-line errors for failures deep inside tfds, TensorFlow, PIL or a user's code (theirs span many lines)."""

from __future__ import annotations

import os
import re


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


# Import names whose PyPI distribution is named otherwise.
_DISTRIBUTIONS = {"importlib_resources": "importlib-resources", "PIL": "pillow", "google.protobuf": "protobuf"}


def _missing_module(error: BaseException) -> str | None:
    """The name of the module whose import failed anywhere in ``error``'s chain, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ImportError) and getattr(error, "name", None):
            return error.name
        error = error.__cause__ or error.__context__
    return None


def unusable_data(name: str, data_dir: str, error: BaseException) -> Exception:
    """One line for any failure to prepare or read a dataset (tfds/TF errors span many lines).

    A module that cannot be imported is a broken install, not a damaged data folder: the message says
    which package to install instead of which folder to delete.
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
    first = re.sub(r"\{\{.*?\}\}\s*", "", (str(error).splitlines() or [""])[0])[:200]  # drop TF's op context
    return ValueError(
        f"{name} in data_dir={data_dir!r} cannot be prepared or read ({type(error).__name__}: "
        f"{first}); expected a writable directory with a complete tfds {name} (delete "
        f"{os.path.join(data_dir, name)} to prepare it again)"
    )
