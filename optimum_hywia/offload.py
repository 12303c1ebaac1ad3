"""Models offloaded to CPU or disk by accelerate (a `device_map` with `"cpu"`/`"disk"` entries, `cpu_offload`, ...).

An offloaded module holds `meta` parameters; its `AlignDevicesHook(offload=True)` creates fresh parameters from the
hook's `weights_map` before each forward and puts `meta` ones back after it. HyWIA needs three things from them:

- reading a weight (`module_tensor`): from the module's `weights_map`;
- gradients (`post_accumulate_grad_hooks`): post-accumulate-grad hooks on offloaded weights, folded once per
  backward as for resident weights;
- surgery (`set_parameter`): a sliced weight of an offloaded module goes to a CPU copy of the hook's `weights_map`
  and the parameter stays on `meta` with the new shape, so the pruned model stays offloaded (in CPU RAM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from accelerate.hooks import AlignDevicesHook, SequentialHook
from accelerate.utils import named_module_tensors, set_module_tensor_to_device
from torch import nn


def offload_hook(module: nn.Module) -> AlignDevicesHook | None:
    """The offloading `AlignDevicesHook` attached to `module` itself (also inside a `SequentialHook`), else None."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in hook.hooks if isinstance(hook, SequentialHook) else [hook]:
        if isinstance(candidate, AlignDevicesHook) and candidate.offload:
            return candidate
    return None


def _covered(module: nn.Module, hook: AlignDevicesHook) -> list[str]:
    """Names (relative to `module`) of the parameters `hook` offloads."""
    return [name for name, _ in named_module_tensors(module, include_buffers=False, recurse=hook.place_submodules)]


def offloaded_parameter_names(model: nn.Module) -> set[str]:
    """Full names of the parameters of `model` that an accelerate offload hook restores around each forward."""
    names = set()
    for prefix, module in model.named_modules():
        hook = offload_hook(module)
        if hook is not None:
            names.update(f"{prefix}.{name}" if prefix else name for name in _covered(module, hook))
    return names


def has_meta_parameters(model: nn.Module) -> bool:
    """Whether some parameter is on `meta` (offloaded, or not materialised)."""
    return any(param.device.type == "meta" for param in model.parameters())


def execution_device(model: nn.Module) -> torch.device:
    """Where to send inputs: the device of the first resident parameter, else of the first offload hook, else CPU."""
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    for module in model.modules():
        hook = offload_hook(module)
        if hook is not None and hook.execution_device is not None:
            return torch.device(hook.execution_device)
    return torch.device("cpu")


def _offloaded_by_own_hook(module: nn.Module, name: str) -> bool:
    # not judged by the device: a checkpoint replay that stops early leaves a restored parameter in its module
    hook = offload_hook(module)
    return hook is not None and name in _covered(module, hook)


def module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """`module.<name>` (a direct parameter); for an offloaded module, read from its offload hook's `weights_map`."""
    tensor = getattr(module, name)
    if tensor is None or not _offloaded_by_own_hook(module, name):
        if tensor is not None and tensor.device.type == "meta":
            raise ValueError(f"{name} of a {type(module).__name__} is on the meta device and has no offload hook.")
        return tensor
    return offload_hook(module).weights_map[name].to(tensor.dtype)


def set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace `module.<name>` by `value`; for an offloaded module, in its (now in-memory) `weights_map`."""
    old = getattr(module, name)
    if not _offloaded_by_own_hook(module, name):
        setattr(module, name, nn.Parameter(value, old.requires_grad))
        return
    hook = offload_hook(module)
    _weights_in_memory(module, hook)
    hook.weights_map[name] = value.to("cpu")
    meta = torch.empty(value.shape, dtype=old.dtype, device="meta")
    setattr(module, name, nn.Parameter(meta, old.requires_grad))


def _weights_in_memory(module: nn.Module, hook: AlignDevicesHook) -> None:
    if not isinstance(hook.weights_map, dict):  # a lazy disk/prefixed map: copy this module's tensors to memory
        tensors = named_module_tensors(
            module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules, remove_non_persistent=True
        )
        hook.weights_map = {key: hook.weights_map[key].to("cpu", copy=True) for key, _ in tensors}  # not memmaps


def add_parameter(module: nn.Module, name: str, value: torch.Tensor, requires_grad: bool = True) -> None:
    """Give `module` a new parameter (a bias that a config switch adds); an offloaded module keeps it in its
    hook's `weights_map`, like its other weights."""
    hook = offload_hook(module)
    if hook is None:
        module.register_parameter(name, nn.Parameter(value, requires_grad))
        return
    _weights_in_memory(module, hook)
    hook.weights_map[name] = value.to("cpu")
    module.register_parameter(
        name, nn.Parameter(torch.empty(value.shape, dtype=value.dtype, device="meta"), requires_grad)
    )


def _release(param: torch.Tensor) -> None:
    # one element, same shape: a checkpoint replay that stops early leaves this parameter in its module, and the
    # offload hook's next restore checks the shape
    param.data = torch.zeros((), dtype=param.dtype, device=param.device).expand(param.shape)


@contextmanager
def post_accumulate_grad_hooks(
    model: nn.Module, hooks: list[tuple[nn.Parameter, Callable[[torch.Tensor], None]]]
) -> Iterator[None]:
    """Within the block, `hook(param)` runs each time a gradient is accumulated into `param`, also if it is offloaded.

    An offloaded module gets fresh parameters from its offload hook at every forward. Within the block, its first
    forward in grad mode keeps the fresh parameter of each hooked `param`, and later forwards (micro-batches,
    checkpoint replays) reuse that object with the newly restored data: as for a resident weight, the gradients of
    every forward in one backward go to one `.grad`, and `hook` runs once per backward. Once `hook` has run, the
    restored data is dropped. On exit, every offloaded module gets its original `meta` parameters back.
    """
    offloaded = {}  # id(original) -> (owner module, path of the parameter in it, original)
    for module in model.modules():
        offloader = offload_hook(module)
        if offloader is not None and "_old_forward" in vars(module):
            for name in _covered(module, offloader):
                offloaded[id(module.get_parameter(name))] = (module, name, module.get_parameter(name))
    handles = []
    wrapped = {}  # owner module -> (its original _old_forward, {path: [original, hook, kept parameter]})
    try:
        for param, hook in hooks:
            if id(param) not in offloaded:
                handles.append(param.register_post_accumulate_grad_hook(hook))
                continue
            module, name, _ = offloaded[id(param)]
            wrapped.setdefault(module, (module._old_forward, {}))[1][name] = [param, hook, None]
        for module, (original, slots) in wrapped.items():

            def forward(*args, _original=original, _module=module, _slots=slots, **kwargs):
                if torch.is_grad_enabled():
                    for name, slot in _slots.items():
                        owner, _, leaf = name.rpartition(".")
                        owner = _module.get_submodule(owner)
                        fresh = owner._parameters[leaf]  # what the offload hook just restored
                        if slot[2] is None:
                            slot[2] = fresh
                            handles.append(fresh.register_post_accumulate_grad_hook(slot[1]))
                            handles.append(fresh.register_post_accumulate_grad_hook(_release))
                        elif fresh is not slot[2]:
                            slot[2].data = fresh.data
                            owner._parameters[leaf] = slot[2]
                return _original(*args, **kwargs)

            module._old_forward = forward
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, (original, slots) in wrapped.items():
            module._old_forward = original
            for _, _, kept in slots.values():
                if kept is not None:
                    _release(kept)
        for module, name, param in offloaded.values():  # also unhooked ones: they carry the requires_grad to restore
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._parameters[leaf] = param


def check_offloaded_projections(modules: list[nn.Module]) -> None:
    """Refuse, before any work, prunable modules with `meta` weights that their own offload hook does not restore."""
    for module in modules:
        hook = offload_hook(module)
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if (
                tensor is not None
                and tensor.device.type == "meta"
                and (hook is None or name not in _covered(module, hook))
            ):
                raise ValueError(
                    f"The {name} of a prunable {type(module).__name__} is on the meta device and no accelerate offload "
                    "hook of its own restores it (offloaded by a parent module's hook, e.g. preload_module_classes): "
                    "HyWIA needs each prunable linear layer to carry its own hook, as a device_map and accelerate's "
                    "cpu_offload/disk_offload give it."
                )


def needs_materialised_state_dict(model: nn.Module) -> bool:
    """Whether `save_pretrained` needs an explicit state dict: offloaded weights that transformers does not detect.

    transformers reads offloaded weights back itself (shard by shard) when `hf_device_map` has `"cpu"` or `"disk"`
    entries; a model offloaded with accelerate's own helpers (`cpu_offload`, `disk_offload`) has no such map.
    """
    device_map = getattr(model, "hf_device_map", None) or {}
    return has_meta_parameters(model) and not {"cpu", "disk"} & set(device_map.values())


def materialised_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every offloaded tensor read from its offload hook (all of them in CPU RAM at once)."""
    state_dict = model.state_dict()
    for name, tensor in state_dict.items():
        if tensor.device.type != "meta":
            continue
        path = name.split(".")
        for depth in range(len(path) - 1, -1, -1):  # the innermost module whose offload hook covers the tensor
            module, local = model.get_submodule(".".join(path[:depth])), ".".join(path[depth:])
            hook = offload_hook(module)
            if hook is not None and local in hook.weights_map:
                state_dict[name] = hook.weights_map[local].to("cpu", tensor.dtype)
                break
        else:
            raise ValueError(f"{name} is on the meta device and no accelerate offload hook holds its value.")
    return state_dict


def drop_restored_weights(model: nn.Module) -> None:
    """Put back on `meta` the offloaded weights a forward left restored (a checkpoint replay stopped early in it)."""
    for module in model.modules():
        hook = offload_hook(module)
        for name in _covered(module, hook) if hook is not None else []:
            if module.get_parameter(name).device.type != "meta":
                set_module_tensor_to_device(module, name, "meta")
