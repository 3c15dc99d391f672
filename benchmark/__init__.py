"""The harness: everything that is not a method or a dataset (see the README)."""

import importlib.util
from pathlib import Path

# This project's top-level ``datasets`` package would be shadowed by (or shadow) Hugging Face's
# ``datasets``; fail loudly instead of importing the wrong one.
_spec = importlib.util.find_spec("datasets")
_expected = Path(__file__).resolve().parents[1] / "datasets"
_found = Path(_spec.origin).resolve().parent if _spec and _spec.origin else None
if _found != _expected:
    raise ImportError(f"`import datasets` resolves to {_found}, not this project's {_expected}; another "
                      "package named `datasets` (e.g. Hugging Face's) shadows it: uninstall it from this "
                      "environment or run from the repository root")
