"""Package attributes imported on first use (PEP 562), so that importing one part of the package
does not import everything its ``__init__`` re-exports (JAX among it)."""

from __future__ import annotations

import importlib

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, namespace: dict, public: dict[str, tuple[str, str]]):
    """A module ``__getattr__`` for ``package``: a name in ``public`` (``name -> (module relative
    to the package, name there)``) is imported from its module, any other name as a submodule;
    each is stored in ``namespace`` (the package's globals) once found."""

    def __getattr__(name: str):
        if name in public:
            module, attribute = public[name]
            value = getattr(importlib.import_module(module, package), attribute)
        else:
            try:
                value = importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    return __getattr__
