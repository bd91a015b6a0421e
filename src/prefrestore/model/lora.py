"""LoRA wiring of stage 2 (paper Table I, SPEC §3): peft adapters on SANA's attention projections.

Three policies live in ONE transformer, switched without copying the frozen weights:

- ``current`` (peft adapter ``"default"``): v_theta, the only trainable tensors of stage 2;
- ``old`` (adapter ``"old"``): v_old of Eqs. 13-14, the sampling policy; it never receives
  gradients and moves only by :func:`update_old_` (``theta_old <- d theta_old + (1 - d) theta``);
- ``reference`` (adapters disabled): the stage-1 model, v_ref of the KL term and the "before"
  model of the Fig. 8 determinism analysis.

Targets are module-name suffixes (``attn1.to_q`` ... ``attn2.to_out.0``); every target must match
at least one module, so a typo cannot silently train nothing. :func:`merge_into_base` folds the
current adapter into the base weights (``W <- W + alpha / r * B A``) for the output model directory.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from prefrestore.core.config import check_range

CURRENT = "default"  # peft's name for the trained adapter (v_theta)
OLD = "old"  # the old / sampling policy (v_old)



@torch.no_grad()
def ema_update_(old_params: Iterable[torch.Tensor], new_params: Iterable[torch.Tensor], d: float) -> None:
    """In place: ``theta_old <- d theta_old + (1 - d) theta`` (``d = 0`` copies theta)."""
    check_range("ema decay", d, 0.0, 1.0)
    old_list, new_list = list(old_params), list(new_params)
    if len(old_list) != len(new_list):
        raise ValueError(f"{len(old_list)} old vs {len(new_list)} new parameters")
    for old, new in zip(old_list, new_list, strict=True):
        if old is new:
            raise ValueError("old and new policy share a parameter tensor")
        if old.shape != new.shape:
            raise ValueError(f"shape mismatch {tuple(old.shape)} vs {tuple(new.shape)}")
        old.mul_(d).add_(new.detach().to(old.dtype), alpha=1.0 - d)


def target_module_names(transformer: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules whose name ends with one of ``targets`` (``.``-separated suffix match).

    Raises ``ValueError`` naming each target that matches nothing.
    """
    names = [n for n, _ in transformer.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ValueError(f"LoRA target(s) {unmatched} match no module of {type(transformer).__name__}")
    return sorted(n for n in names if any(n == t or n.endswith("." + t) for t in targets))


def add_lora(transformer: nn.Module, rank: int, alpha: int, targets: Sequence[str], seed: int = 0) -> list[str]:
    """Inject the ``current`` and ``old`` adapters (same shapes, ``old`` = a copy of ``current``).

    ``current`` starts as peft's default init (Kaiming ``A`` drawn from ``seed``, ``B = 0``: the model
    is unchanged); the global RNG is left as it was. Afterwards only the ``current`` adapter's tensors
    require grad; everything else in ``transformer`` is frozen. Returns the wrapped module names.
    """
    if any(isinstance(m, BaseTunerLayer) for m in transformer.modules()):
        raise ValueError("transformer already has LoRA adapters")
    wrapped = target_module_names(transformer, targets)
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _inject(transformer, rank, alpha, targets)
    update_old_(transformer, 0.0)  # old <- current
    activate(transformer, CURRENT)
    return wrapped


def _inject(transformer: nn.Module, rank: int, alpha: int, targets: Sequence[str]) -> None:
    for name in (CURRENT, OLD):
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                            init_lora_weights=True, bias="none")
        with warnings.catch_warnings():  # peft warns that a second adapter makes several: intended
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            transformer.add_adapter(config, adapter_name=name)


def adapter_parameters(transformer: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of one adapter's LoRA tensors, in a fixed (sorted) order."""
    mark = f".{adapter}."
    params = {n: p for n, p in transformer.named_parameters() if "lora_" in n and mark in n}
    if not params:
        raise ValueError(f"no LoRA adapter '{adapter}' in the transformer")
    return dict(sorted(params.items()))


def _pairs(transformer: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(old, current) parameter pairs matched by name."""
    cur = adapter_parameters(transformer, CURRENT)
    old = adapter_parameters(transformer, OLD)
    pairs = []
    for name, p in cur.items():
        old_name = name.replace(f".{CURRENT}.", f".{OLD}.")
        if old_name not in old:
            raise ValueError(f"old adapter lacks {old_name}")
        pairs.append((old[old_name], p))
    if len(pairs) != len(old):
        raise ValueError("current and old adapters differ in their tensors")
    return pairs


def update_old_(transformer: nn.Module, decay: float) -> None:
    """``theta_old <- decay * theta_old + (1 - decay) * theta`` (DiffusionNFT old policy; SPEC §3)."""
    pairs = _pairs(transformer)
    ema_update_([o for o, _ in pairs], [c for _, c in pairs], decay)


def activate(transformer: nn.Module, adapter: str) -> None:
    """Make ``adapter`` the active one and leave ONLY the current adapter trainable."""
    transformer.enable_adapters()
    transformer.set_adapter(adapter)
    for p in transformer.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(transformer, CURRENT).values():
        p.requires_grad_(True)


@contextlib.contextmanager
def use_policy(transformer: nn.Module, adapter: str | None) -> Iterator[None]:
    """Run the block with ``adapter`` active (``None``: adapters disabled = the stage-1 reference).

    On exit the current adapter is active again and the only trainable tensors are its own.
    """
    try:
        if adapter is None:
            transformer.disable_adapters()
        else:
            transformer.enable_adapters()
            transformer.set_adapter(adapter)
        yield
    finally:
        activate(transformer, CURRENT)


def adapter_state(transformer: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors (detached CPU copies) keyed without the adapter name (portable)."""
    mark = f".{adapter}."
    return {n.replace(mark, "."): p.detach().to("cpu").clone()
            for n, p in adapter_parameters(transformer, adapter).items()}


@torch.no_grad()
def load_adapter_state(transformer: nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`adapter_state`) into ``adapter``; every tensor must match exactly."""
    mark = f".{adapter}."
    params = {n.replace(mark, "."): p for n, p in adapter_parameters(transformer, adapter).items()}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise ValueError(f"adapter '{adapter}' state mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, p in params.items():
        if p.shape != state[name].shape:
            raise ValueError(f"{name}: shape {tuple(state[name].shape)} != {tuple(p.shape)}")
        p.copy_(state[name].to(p.device, p.dtype))


@torch.no_grad()
def merge_into_base(transformer: nn.Module) -> nn.Module:
    """Fold the current adapter into the base weights and remove every adapter (in place).

    The result is a plain diffusers model whose ``save_pretrained`` writes the ordinary weight names,
    so a stage-2 model directory loads like any other. The old adapter is dropped.
    """
    for module in transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[CURRENT], safe_merge=True)
    transformer.unload_lora()
    if any(isinstance(m, BaseTunerLayer) for m in transformer.modules()):
        raise RuntimeError("LoRA layers remain after unloading")
    return transformer
