"""Name -> class registries for methods and datasets, fed by decorators.

    @register_method("seq-lora")
    class SeqLoRA(Method): ...

Names are unique (a duplicate raises); aliases resolve to their canonical name. Looking up an
unknown name raises ``ConfigError`` listing the valid names and the closest match. Method and
dataset modules are imported lazily on first look-up; a module that fails to import is reported
when one of its names is asked for, not when another method is used.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, TypeVar

from benchmark.errors import ConfigError

T = TypeVar("T")

# Modules that register methods / datasets when imported, in table order.
METHOD_MODULES = ("methods.frozen", "methods.seq_lora", "methods.inflora", "methods.l2p", "methods.dualprompt",
                  "methods.coda_prompt", "methods.simplecil", "methods.ranpac", "methods.sd_lora",
                  "methods.joint")
DATASET_MODULES = ("datasets.synthetic", "datasets.cifar100", "datasets.imagenet_r", "datasets.imagenet_a",
                   "datasets.domainnet")


class Registry:
    """A named collection of classes with aliases and helpful look-up errors."""

    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind = kind
        self._modules = modules
        self._entries: dict[str, object] = {}  # canonical name -> class, in registration order
        self._aliases: dict[str, str] = {}
        self._import_errors: dict[str, Exception] = {}
        self._loaded = False

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Class decorator registering ``cls`` under ``name`` (and ``aliases``); sets ``cls.name``."""

        def decorator(cls: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} name {key!r} is already registered")
            self._entries[name] = cls
            self._aliases.update({alias: name for alias in aliases})
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._modules:
            try:
                importlib.import_module(module)
            except ImportError as err:  # reported only when one of its names is requested
                self._import_errors[module] = err

    def names(self) -> list[str]:
        """Canonical names in registration order."""
        self._load()
        return list(self._entries)

    def default_names(self) -> list[str]:
        """Canonical names of the entries a run without a selection uses: all but variants."""
        self._load()
        return [name for name, cls in self._entries.items() if getattr(cls, "variant_of", None) is None]

    def aliases(self) -> dict[str, str]:
        self._load()
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        """The canonical name for ``name`` or an alias of it; ``ConfigError`` if unknown."""
        self._load()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        broken = "".join(f"; note: module {m} failed to import: {e}" for m, e in self._import_errors.items())
        raise ConfigError(f"unknown {self.kind} {name!r}{hint}; valid {self.kind}s: "
                          f"{', '.join(self._entries)}{broken}")

    def get(self, name: str):
        """The registered class for ``name`` (canonical or alias)."""
        return self._entries[self.canonical(name)]


METHODS = Registry("method", METHOD_MODULES)
DATASETS = Registry("dataset", DATASET_MODULES)
register_method = METHODS.register
register_dataset = DATASETS.register
