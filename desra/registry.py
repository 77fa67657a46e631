"""Name -> class registries, filled by decorators (BasicSR vocabulary).

Example::

    from desra.registry import ARCH_REGISTRY

    @ARCH_REGISTRY.register()
    class MyNet(nn.Module): ...

    net = ARCH_REGISTRY.build({'type': 'MyNet', 'num_feat': 32}, key_path='network_g')

Built-in components register themselves when their package (``desra.archs``, ``desra.losses``, ...)
is imported; importing does nothing else (no downloads, no device work, no file writes). User modules
are added with ``import_modules: [my_pkg.my_arch]`` in the YAML (see :func:`import_user_modules`).
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterable

from desra.errors import ConfigError


class Registry:
    """A mapping from a ``type`` name to a class or function."""

    def __init__(self, name: str):
        self.name = name
        self._obj_map: dict[str, Any] = {}

    def register(self, obj: Any = None, *, name: str | None = None) -> Callable:
        """Register ``obj`` under ``name`` (default: ``obj.__name__``).

        Works as ``@REG.register()``, ``@REG.register`` and ``REG.register(obj)``. Registering the same
        object twice is a no-op; registering a different object under a taken name is an error.
        """

        def deco(o):
            key = name or o.__name__
            old = self._obj_map.get(key)
            if old is not None and old is not o and _qualname(old) != _qualname(o):
                raise KeyError(f"{self.name} registry: '{key}' is already registered by {_qualname(old)}")
            self._obj_map[key] = o
            return o

        if obj is None:
            return deco
        return deco(obj)

    def get(self, name: str, key_path: str = 'type') -> Any:
        """Return the object registered as ``name``; a :class:`ConfigError` names ``key_path`` otherwise."""
        if not isinstance(name, str):
            raise ConfigError(f"{key_path}: expected a {self.name} type name (string), got {name!r}")
        if name in self._obj_map:
            return self._obj_map[name]
        known = sorted(self._obj_map)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        if not close:  # case-insensitive fallback, e.g. 'rrdbnet' -> 'RRDBNet'
            lower = {k.lower(): k for k in known}
            close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
            close = [lower[c] for c in close]
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ConfigError(f"{key_path}: unknown {self.name} type '{name}'.{hint} "
                          f"Registered: {', '.join(known) if known else '(none)'}")

    def build(self, opt: dict, key_path: str, *args, **extra) -> Any:
        """Instantiate ``opt['type']`` with the remaining keys of ``opt`` as keyword arguments.

        ``key_path`` is the YAML path of ``opt`` (e.g. ``network_g``) and is used in error messages.
        Keyword arguments the constructor does not accept are reported with their full key path.
        """
        if not isinstance(opt, dict):
            raise ConfigError(f"{key_path}: expected a mapping with a 'type' key, got {type(opt).__name__}")
        if 'type' not in opt:
            raise ConfigError(f"{key_path}.type: missing required key (a registered {self.name} name)")
        cls = self.get(opt['type'], f'{key_path}.type')
        kwargs = {k: v for k, v in opt.items() if k != 'type'}
        kwargs.update(extra)
        try:
            import inspect
            sig = inspect.signature(cls)
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
            if not has_var_kw:
                unknown = [k for k in kwargs if k not in sig.parameters]
                if unknown:
                    accepted = [p for p in sig.parameters if p not in ('self', 'args', 'kwargs')]
                    close = difflib.get_close_matches(str(unknown[0]), accepted, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]}? " if close else ''
                    raise ConfigError(f"{key_path}.{unknown[0]}: unknown option for {opt['type']}; {hint}"
                                      f"accepted: {', '.join(accepted)}")
        except (TypeError, ValueError):  # signature not introspectable: let the call decide
            pass
        try:
            return cls(*args, **kwargs)
        except ValueError as e:
            # constructor arguments come from the YAML: report a rejected value with its key path
            raise ConfigError(f"{key_path}: {e}") from None

    def keys(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __iter__(self):
        return iter(self._obj_map.items())

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={self.keys()})"


def _qualname(o: Any) -> str:
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', repr(o))}"


def import_user_modules(modules: Iterable[str], key_path: str = 'import_modules') -> None:
    """Import user modules named in the YAML so that their decorators register new types."""
    for i, mod in enumerate(modules or []):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"{key_path}[{i}]: cannot import module '{mod}': {e}") from None


ARCH_REGISTRY = Registry('arch')
MODEL_REGISTRY = Registry('model')
LOSS_REGISTRY = Registry('loss')
DATASET_REGISTRY = Registry('dataset')
METRIC_REGISTRY = Registry('metric')
DETECTOR_REGISTRY = Registry('detector')
SEGMENTER_REGISTRY = Registry('segmenter')
