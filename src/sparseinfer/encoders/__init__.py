"""Encoders: every module in this package registers one encoder with `@register`; importing it loads them all."""

import importlib
import pkgutil

from sparseinfer.encoders.base import Diagnostics, Encoder, IterativeEncoder, available, create, get, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Diagnostics", "Encoder", "IterativeEncoder", "available", "create", "get", "register"]
