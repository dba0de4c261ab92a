"""The restricted unpickler behind `read_checkpoint`: it rebuilds tensors and plain containers and nothing else.

Globals are resolved from torch's weights-only allowlist (minus exotic tensor types); every other global becomes an
inert `ForeignGlobal`, and "calling" one gives a `ForeignObject` that records what the file asked for. Nothing a file
names is imported, and no placeholder is ever called. Anything that would need more raises `Refusal`.
"""
from __future__ import annotations

import _compat_pickle
import pickle
from collections import Counter, OrderedDict
from typing import Any

import torch


class Refusal(Exception):
    """Raised inside the unpickler; `read_checkpoint` turns it into an `UnsafeCheckpointError` naming the file."""


class ForeignGlobal:
    """Stand-in for a class or function named by a file that we do not import. Not callable."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"ForeignGlobal({self.qualified_name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ForeignGlobal) and other.qualified_name == self.qualified_name

    def __hash__(self) -> int:
        return hash(self.qualified_name)


class ForeignObject:
    """Inert record of an object the file built from a `ForeignGlobal`: its name, arguments, state and items.

    For example Lightning's `hyper_parameters` (an `AttributeDict`) arrives as a ForeignObject whose `items` hold the
    values; an `argparse.Namespace` as one whose `state` is its `__dict__`.
    """

    def __init__(self, cls: ForeignGlobal, args: tuple = (), kwargs: dict | None = None) -> None:
        self.cls, self.args, self.kwargs = cls, args, dict(kwargs or {})
        self.state: Any = None
        self.items: dict = {}
        self.elements: list = []

    @property
    def qualified_name(self) -> str:
        return self.cls.qualified_name

    def __repr__(self) -> str:
        return f"ForeignObject({self.qualified_name})"


# Globals whose presence marks a file as hostile: a checkpoint has no reason to name them. They would be as inert as
# any other ForeignGlobal (nothing is ever called); refusing them tells the user the file is not what it claims.
_HOSTILE_MODULES = {"os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "pty", "runpy", "importlib",
                    "ctypes", "code", "codeop", "marshal", "pickle", "_pickle", "dill", "webbrowser", "signal",
                    "multiprocessing"}
_HOSTILE_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "getattr", "setattr",
                     "delattr", "globals", "locals", "vars", "exit", "quit", "help", "memoryview"}


def _hostile(module: str, name: str) -> bool:
    root = module.split(".")[0]
    return root in _HOSTILE_MODULES or (module in ("builtins", "__builtin__") and name in _HOSTILE_BUILTINS)


def _contains_foreign(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (ForeignGlobal, ForeignObject)):
        return True
    if depth > 4:
        return False
    if isinstance(value, (tuple, list)):
        return any(_contains_foreign(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return any(_contains_foreign(k, depth + 1) or _contains_foreign(v, depth + 1) for k, v in value.items())
    return False


def _without_hooks(rebuild: Any, hooks_index: int, refuse_state: bool = False) -> Any:
    """A tensor rebuild function that refuses backward hooks (callables) and Python attributes set on a tensor."""

    def checked(*args: Any) -> Any:
        if len(args) > hooks_index and args[hooks_index]:
            raise Refusal(f"a tensor with backward hooks ({rebuild.__name__})")
        if refuse_state and len(args) > hooks_index + 1 and args[hooks_index + 1]:
            raise Refusal(f"a parameter with Python attributes ({rebuild.__name__})")
        return rebuild(*args)

    checked.__name__, checked.__qualname__ = rebuild.__name__, rebuild.__qualname__
    checked.__module__ = rebuild.__module__
    return checked


# Quantized, sparse, nested, wrapper-subclass and typed-subclass tensors are not in tokenizer checkpoints; each calls
# back into classes or functions named by the file, so they are refused rather than reasoned about.
_UNSUPPORTED_TENSOR_REBUILDS = {f"torch._utils.{name}" for name in (
    "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy")} | {"torch._tensor._rebuild_from_type_v2"}


def _allowed_globals() -> dict[str, Any]:
    """Names the reader resolves: torch's weights-only allowlist minus exotic tensor types, plus plain builtins."""
    from torch import _utils
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = dict(_get_allowed_globals())
    for name in _UNSUPPORTED_TENSOR_REBUILDS:
        allowed.pop(name, None)
    allowed["torch._utils._rebuild_tensor_v2"] = _without_hooks(_utils._rebuild_tensor_v2, 5)
    allowed["torch._utils._rebuild_tensor_v3"] = _without_hooks(_utils._rebuild_tensor_v3, 5)
    allowed["torch._utils._rebuild_parameter"] = _without_hooks(_utils._rebuild_parameter, 2)
    allowed["torch._utils._rebuild_parameter_with_state"] = _without_hooks(_utils._rebuild_parameter_with_state, 2,
                                                                           refuse_state=True)
    allowed.update({"builtins.frozenset": frozenset, "builtins.slice": slice, "builtins.range": range})
    return allowed


_ALLOWED: dict[str, Any] = {}
_ALLOWED_IDS: set[int] = set()
# Classes NEWOBJ may instantiate with `cls.__new__(cls, *args)` (what pickle does for protocol-2 objects).
_NEWOBJ_CLASSES = (OrderedDict, Counter, set, frozenset, torch.Size)


def _allowed() -> dict[str, Any]:
    if not _ALLOWED:
        _ALLOWED.update(_allowed_globals())
        _ALLOWED_IDS.update(id(value) for value in _ALLOWED.values())
    return _ALLOWED


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden one by one
    """An unpickler that never imports or calls what a file names, outside `_allowed_globals()`.

    Overridden opcodes: globals (find_class), REDUCE, NEWOBJ(_EX), INST/OBJ, BUILD, APPEND(S), SETITEM(S), ADDITEMS
    and persistent ids (storages only). Everything else is plain data and is handled by `pickle`.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle's own find_class maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full_name = f"{module}.{name}"
        if full_name in _allowed():
            return _ALLOWED[full_name]
        if full_name in _UNSUPPORTED_TENSOR_REBUILDS:
            raise Refusal(f"it holds a tensor type this reader does not rebuild ({full_name})")
        if _hostile(module, name):
            raise Refusal(f"its pickle calls {full_name}, which no checkpoint needs (the file may be malicious)")
        return ForeignGlobal(module, name)

    # torch sets `unpickler.persistent_load = ...` (its storage loader); accept only storage ids, as torch's own
    # weights-only unpickler does.
    @property
    def persistent_load(self) -> Any:
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, loader: Any) -> None:
        self._storage_loader = loader

    def _checked_persistent_load(self, pid: Any) -> Any:
        loader = getattr(self, "_storage_loader", None)
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        kind = kind.decode("ascii", "replace") if isinstance(kind, bytes) else kind
        if loader is None or kind != "storage" or _contains_foreign(pid[2:]):
            raise Refusal(f"a persistent id of kind {kind!r} (only tensor storages are read)")
        return loader(pid)

    def _call(self, func: Any, args: Any, kwargs: dict) -> Any:
        if isinstance(func, ForeignGlobal):
            return ForeignObject(func, tuple(args) if isinstance(args, (tuple, list)) else (args,), kwargs)
        if id(func) not in _ALLOWED_IDS or not callable(func):
            raise Refusal(f"a call of {_describe(func)}")
        if _contains_foreign(args) or _contains_foreign(kwargs):
            raise Refusal(f"{_describe(func)} would be called with a foreign object")
        return func(*args, **kwargs)

    def _new(self, cls: Any, args: Any, kwargs: dict) -> Any:
        if isinstance(cls, ForeignGlobal):
            return ForeignObject(cls, tuple(args), kwargs)
        if cls is torch.nn.Parameter and not _contains_foreign(args) and not kwargs:
            return torch.nn.Parameter(*args)
        if any(cls is allowed for allowed in _NEWOBJ_CLASSES) and not _contains_foreign(args):
            return cls.__new__(cls, *args, **kwargs)
        raise Refusal(f"an instance of {_describe(cls)}")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {})

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args), {}))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, ForeignObject):
            inst.state = state
        elif (type(inst) in (torch.Tensor, torch.nn.Parameter) and type(state) is tuple and len(state) == 4
              and not _contains_foreign(state)):
            inst.set_(*state)  # (storage, offset, size, stride) in files from torch < 0.4; other forms carry hooks
        elif type(inst) is OrderedDict and isinstance(state, dict) and not _contains_foreign(state):
            inst.__dict__.update(state)
        else:
            raise Refusal(f"setting the state of {_describe(inst)}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target: Any, items: list) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, ForeignObject):
            target.elements.extend(items)
        else:
            raise Refusal(f"appending to {_describe(target)}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list) -> None:
        mapping = target.items if isinstance(target, ForeignObject) else target
        if type(mapping) not in (dict, OrderedDict, Counter):
            raise Refusal(f"setting items of {_describe(target)}")
        for index in range(0, len(items), 2):
            mapping[items[index]] = items[index + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, ForeignObject):
            target.elements.extend(items)
        else:
            raise Refusal(f"adding items to {_describe(target)}")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _describe(value: Any) -> str:
    if isinstance(value, (ForeignGlobal, ForeignObject)):
        return value.qualified_name
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', '') or type(value).__module__}.{name}"


class RestrictedPickleModule:
    """What `torch.load(pickle_module=...)` needs: an `Unpickler` class and a `load` function (legacy files)."""

    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()
