"""Catch "Expected all tensors to be on the same device" bugs on a CPU-only machine.

    with DeviceGuard() as guard:                     # guard.device is the stand-in accelerator, `cpu:0`
        model = Tokenizer(...).to(guard.device)
        run_loop(model, device=guard.device)         # raises where a CUDA run would raise

Every value is computed for real on the CPU, so loops that need numbers (`isfinite`, `unique`, `.item()`) run
unchanged. Only the *logical* device of each tensor is simulated: the accelerator ("device", D) or the host ("host",
H). The trick that makes this cheap: `torch.device("cpu", 0)` is a valid CPU device that compares unequal to
`torch.device("cpu")`. Code that is handed `guard.device` and passes it on (`.to(device)`, `device=x.device`) asks
for `cpu:0`; code that forgets the device gets plain `cpu`, exactly as it would get the host on a GPU machine.

Two modes cooperate:
- a `TorchFunctionMode` sees the Python-level calls: factories (`torch.zeros`, `torch.tensor`, ...) give D when
  their `device=` is `guard.device`, H without `device=` or with the string "cpu"; `.to(...)`/`.cpu()` move a
  tensor between D and H (copying, as a real move does); and `tensor.device` answers `cpu:0` for D tensors, so
  `device=images.device` propagates. A `torch.device("cpu")` object is ambiguous, because torch's own C++ helpers
  hand out real devices (`clip_grad_norm_` groups gradients by `cpu`): a factory given it makes an "unknown"
  tensor, and `.to()` to it keeps the tag.
- a `TorchDispatchMode` sees every aten op, forward and backward, checks its tensor arguments with CUDA's rules
  and tags its outputs: D if any input is D, else H.

The rules, as CUDA applies them (ATen's `TensorIteratorBase::compute_types` and `check_same_device`):
- A binary pointwise op (add, mul, div, comparisons, ...) on D tensors accepts one 0-dim H *input* (a "CPU
  scalar"); an H output, or an H input with any elements, is an error. So `d + torch.tensor(2.0)` passes.
- Every other op (`stack`, `cat`, `mm`, convolutions, foreach ops, unary/ternary pointwise ops, ...) needs all its
  tensors on one device: `torch.stack([d, torch.tensor(2.0)])` fails, as on CUDA (pytorch/pytorch#119609).
- `.numpy()` (and `np.asarray`) of a device tensor fails, as on CUDA.
- Copies (`copy_`, `_to_copy`, `.item()`, `set_`) cross devices by design; indexing accepts H index tensors and a
  0-dim H value (`index`, `index_put_`), `fill_`/`masked_fill_` a 0-dim H value.
Where the author was unsure what CUDA accepts (e.g. a 0-dim CPU weight in `lerp`), the guard is the stricter one: a
false alarm is silenced by passing `device=`, which is harmless on a GPU.

Tags live in a side table keyed by storage (so views, `.data` and `Module.to`'s `param.data = ...` keep them),
with a weak reference to each storage so that an entry dies with its storage. A
tensor the guard never saw created (built before the guard, `torch.from_numpy`, a DataLoader batch) is H, like a
tensor that was never moved to the GPU. Tensors that torch's own composite ops create internally (factories below
the Python level) are "unknown" and compatible with both. Not simulated: DDP/NCCL, CUDA streams, `torch.compile`.

Why not FakeTensorMode or the meta device: FakeTensor allows a 0-dim CPU tensor in *every* op, so the stack bug
passes silently, and meta tensors have no values for `isfinite`/`unique`/`.item()`.
"""
from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

DEVICE, HOST, UNKNOWN = "device", "host", "unknown"
GUARD_DEVICE = torch.device("cpu", 0)

_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor, torch.zeros, torch.ones,
              torch.empty, torch.full, torch.arange, torch.range, torch.linspace, torch.logspace, torch.eye,
              torch.rand, torch.randn, torch.randint, torch.randperm, torch.empty_strided, torch.tril_indices,
              torch.triu_indices}
# Factories that take a tensor: they follow it unless given `device=`.
_LIKE_FACTORIES = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
                   torch.randn_like, torch.randint_like, torch.Tensor.new_tensor, torch.Tensor.new_zeros,
                   torch.Tensor.new_ones, torch.Tensor.new_empty, torch.Tensor.new_full}

_DEVICE_GETTER = torch.Tensor.device.__get__  # a new method-wrapper on each access: compare with ==

aten = torch.ops.aten
_CROSS_DEVICE_OPS = {aten._to_copy.default, aten.copy_.default, aten.copy.default, aten._copy_from.default,
                     aten._copy_from_and_resize.default, aten.lift_fresh.default, aten.lift_fresh_copy.default,
                     aten._local_scalar_dense.default, aten.set_.source_Storage,
                     aten.set_.source_Storage_storage_offset, aten.set_.source_Tensor, aten.set_.default, aten._has_compatible_shallow_copy_type.default,
                     aten.is_same_size.default, aten.detach.default, aten.alias.default}
_INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_SCALAR_VALUE_OPS = {aten.fill_.Tensor, aten.fill.Tensor, aten.masked_fill_.Tensor, aten.masked_fill.Tensor}


class DeviceMismatchError(RuntimeError):
    """An op mixed tensors of the simulated accelerator and the host in a way CUDA refuses."""


class _TagTable:
    """storage -> logical device (see the module docstring).

    torch keeps one Python object per live storage, so a weak reference to it tells whether an entry is still the
    storage it was made for (an id can be reused once the storage is freed).
    """

    def __init__(self) -> None:
        self._tags: dict[int, tuple[str, weakref.ref]] = {}

    @staticmethod
    def _storage(tensor: torch.Tensor):
        try:
            return tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested or wrapper tensors: not tracked
            return None

    def get(self, tensor: torch.Tensor) -> str:
        storage = self._storage(tensor)
        entry = self._tags.get(id(storage)) if storage is not None else None
        if entry is not None and entry[1]() is storage:
            return entry[0]
        return HOST

    def set(self, tensor: torch.Tensor, tag: str) -> None:
        storage = self._storage(tensor)
        if storage is not None:
            key = id(storage)
            self._tags[key] = (tag, weakref.ref(storage, lambda _, key=key: self._tags.pop(key, None)))


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(tree)[0] if isinstance(leaf, torch.Tensor)]


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, guard: DeviceGuard) -> None:
        super().__init__()
        self.guard = guard

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tags = self.guard.tags
        if func == _DEVICE_GETTER:
            return self.guard.device if tags.get(args[0]) == DEVICE else func(*args)
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and tags.get(args[0]) == DEVICE:
            raise TypeError(f"can't convert {self.guard.name} device type tensor to numpy. Use Tensor.cpu() to copy "
                            "the tensor to host memory first. (device guard)")
        result = func(*args, **kwargs)
        if func in _FACTORIES or (func in _LIKE_FACTORIES and kwargs.get("device") is not None):
            tag = self.guard.classify(kwargs.get("device"), default=HOST)
            # `torch.as_tensor(t)` without a device returns `t` itself, wherever it lives: keep its tag.
            given = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
            for tensor in _tensors(result):
                if id(tensor.untyped_storage()) not in given:
                    tags.set(tensor, tag)
        return result

    def _move(self, func, args, kwargs):
        tensor, tags = args[0], self.guard.tags
        if func is torch.Tensor.cpu:
            target = HOST
        elif len(args) > 1 and isinstance(args[1], torch.Tensor):
            target = tags.get(args[1])
        else:
            positional = args[1] if len(args) > 1 and not isinstance(args[1], torch.dtype) else None
            device = kwargs.get("device", positional)
            target = self.guard.classify(device, default=None)
        # Run the real conversion on the CPU (dtype, memory format), then copy if the logical device changes.
        real_args = tree_map_only(torch.device, lambda d: torch.device("cpu") if self.guard.is_device(d) else d,
                                  (args, kwargs))
        result = func(*real_args[0], **real_args[1])
        if target in (None, UNKNOWN) or target == tags.get(tensor) and result is tensor:
            return result
        if result.untyped_storage() is tensor.untyped_storage():
            result = result.clone()
        tags.set(result, target)
        return result


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, guard: DeviceGuard) -> None:
        super().__init__()
        self.guard = guard

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunction():  # the bookkeeping below is not user code: skip the function mode
            return self._run(func, args, kwargs or {})

    def _run(self, func, args, kwargs):
        guard, tags = self.guard, self.guard.tags
        inputs = _tensors((args, kwargs))
        input_tags = [tags.get(t) for t in inputs]
        if func not in _CROSS_DEVICE_OPS:
            self._check(func, args, kwargs, inputs, input_tags)
        pre_self_tag = input_tags[0] if inputs else None
        result = func(*args, **kwargs)
        if guard.is_device(kwargs.get("device")):
            out_tag = DEVICE
        elif func in (aten.copy_.default, aten.set_.source_Storage, aten.set_.source_Storage_storage_offset,
                      aten.set_.default):
            out_tag = pre_self_tag
        elif func is aten.set_.source_Tensor:
            out_tag = input_tags[1]
        elif DEVICE in input_tags:
            out_tag = DEVICE
        elif HOST in input_tags:
            out_tag = HOST
        else:
            out_tag = UNKNOWN  # a factory below the Python level (inside a composite op); the function mode
            # re-tags the results of Python-level factory calls
        for tensor in _tensors(result):
            tags.set(tensor, out_tag)
        return result

    def _check(self, func, args, kwargs, inputs, input_tags) -> None:
        if DEVICE not in input_tags or HOST not in input_tags:
            return
        allowed: set[int] = set()  # ids of host tensors this op accepts next to device tensors
        if func in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            allowed |= {id(t) for t in indices if isinstance(t, torch.Tensor)}
            values = args[2] if len(args) > 2 else kwargs.get("values")
            if isinstance(values, torch.Tensor) and values.dim() == 0:
                allowed.add(id(values))
        elif func in _SCALAR_VALUE_OPS:
            value = args[-1]
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                allowed.add(id(value))
        elif torch.Tag.pointwise in getattr(func, "tags", ()) and len(inputs) == 2:
            written = self._written(func, args, kwargs)
            allowed |= {id(t) for t in inputs if t.dim() == 0 and id(t) not in written}
        for tensor, tag in zip(inputs, input_tags):
            if tag == HOST and id(tensor) not in allowed:
                raise DeviceMismatchError(
                    f"Expected all tensors to be on the same device, but found at least two devices, "
                    f"{self.guard.name} and cpu! (device guard: {func} got a host tensor of shape "
                    f"{tuple(tensor.shape)} and dtype {tensor.dtype} next to tensors on the device; on a GPU this "
                    f"raises: create it with device=<the data's device> or move it with .to(device))")

    @staticmethod
    def _written(func, args, kwargs) -> set[int]:
        written = set()
        for index, argument in enumerate(func._schema.arguments):
            if argument.alias_info is not None and argument.alias_info.is_write:
                value = kwargs.get(argument.name) if argument.kwarg_only or index >= len(args) else args[index]
                written |= {id(t) for t in _tensors(value)}
        return written


class DeviceGuard:
    """Run code as if `guard.device` were an accelerator and fail on every op that mixes it with the host the way
    CUDA refuses. `name` is how the device is called in the error message."""

    def __init__(self, name: str = "cuda:0") -> None:
        self.name = name
        self.device = GUARD_DEVICE
        self.tags = _TagTable()
        self._modes = (_FunctionLevel(self), _DispatchLevel(self))

    def classify(self, device, default: str | None) -> str | None:
        """The logical device a `device=` argument asks for: `guard.device` (`cpu:0`) is the device; the string
        "cpu" the host; `torch.device("cpu")` is unknown, since torch's own helpers return it for tensors on the
        device too (`_group_tensors_by_device_and_dtype` works on real devices); None gives `default`."""
        if device is None:
            return default
        if self.is_device(device):
            return DEVICE
        if isinstance(device, str) and torch.device(device).type == "cpu":
            return HOST
        return UNKNOWN

    def is_device(self, device) -> bool:
        if device is None:
            return False
        if not isinstance(device, (str, torch.device)):
            return False
        device = torch.device(device)
        return device.type == "cpu" and device.index == 0

    def logical_device(self, tensor: torch.Tensor) -> str:
        """"device", "host" or "unknown" (a tensor that torch created inside a composite op)."""
        return self.tags.get(tensor)

    def __enter__(self) -> DeviceGuard:
        self._modes[1].__enter__()
        self._modes[0].__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._modes[0].__exit__(*exc)
        self._modes[1].__exit__(*exc)
