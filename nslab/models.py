"""Models of the study and their initialisation.

Every scaled weight is viewed as a matrix ``(d_out, d_in)``; a conv weight
``(out, in, kh, kw)`` is flattened to ``(out, in*kh*kw)`` (the "channel-wise"
reshape the blog uses; it is not the conv's operator norm, see Sedghi et al.
2019). Initialisation is orthogonal times ``sqrt(d_out/d_in)``, so at init
``sigma_max = sqrt(d_out/d_in)`` and ``||W||_F = sqrt(min(d_out, d_in) * d_out/d_in)``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .linalg import matrix_shape

SCALE_RULES = ("all", "seed", "layers")

# The seed code skips every parameter whose name contains one of these.
_SEED_SKIP = ("bn", "bias", "downsample")


def mlp(depth: int, width: int, in_features: int = 3 * 32 * 32, num_classes: int = 100) -> nn.Sequential:
    """Flatten, then ``depth`` bias-free Linear layers with ReLU between them.

    depth 5, width 2000 on CIFAR: 3072 -> 2000 -> 2000 -> 2000 -> 2000 -> 100.
    """
    if depth < 1 or width < 1:
        raise ValueError(f"mlp needs depth >= 1 and width >= 1, got depth={depth!r}, width={width!r}")
    sizes = [in_features] + [width] * (depth - 1) + [num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cifar_resnet(name: str, num_classes: int = 100) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem: 3x3 stride-1 conv, 64 channels, no max-pool.

    Built with ``weights=None``: nothing is ever downloaded.
    """
    import torchvision

    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


# The models a run can name: model -> builder(depth, width, in_features, num_classes). Adding a model is
# one entry here (RunConfig's choices, run names and the views follow); nslab.config.arch_name names it.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda depth, width, in_features, num_classes: mlp(depth, width, in_features, num_classes),
    **{name: (lambda depth, width, in_features, num_classes, name=name: cifar_resnet(name, num_classes))
       for name in ("resnet18", "resnet34", "resnet50")},
}


def build_model(model: str, depth: int = 5, width: int = 2000, in_features: int = 3072,
                num_classes: int = 100) -> nn.Module:
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not allowed: choose one of {list(MODELS)}")
    return MODELS[model](depth, width, in_features, num_classes)


def scaled_parameters(model: nn.Module, rule: str = "all") -> list[tuple[str, nn.Parameter]]:
    """The (name, weight) pairs that get the orthogonal init and the norm scaling.

    ``rule="all"``: every parameter with 2 or more dimensions (the study's models: every Linear and
    conv weight). In a model of your own this also takes embeddings, class tokens and position
    embeddings (a ViT's (1, 1, d) class token, its (1, n, d) position embedding): use ``"layers"``.
    ``rule="layers"``: the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` module, nothing
    else (no embeddings, tokens, norms; MultiheadAttention's packed ``in_proj_weight`` is not a Linear
    and is skipped, its ``out_proj`` is taken).
    ``rule="seed"``: as the seed code, every parameter of 2 or more dimensions except names containing
    ``bn``, ``bias`` or ``downsample`` (so ResNet downsample convs are never scaled).
    """
    if rule not in SCALE_RULES:
        raise ValueError(f"scale_rule={rule!r} is not allowed: choose one of {list(SCALE_RULES)}")
    if rule == "layers":
        layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        return [(f"{name}.weight" if name else "weight", m.weight) for name, m in model.named_modules()
                if isinstance(m, layer_types) and isinstance(m.weight, nn.Parameter)]
    chosen = []
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        if rule == "seed" and any(s in name for s in _SEED_SKIP):
            continue
        chosen.append((name, p))
    return chosen


@torch.no_grad()
def init_orthogonal_(params: list[tuple[str, nn.Parameter]], generator: torch.Generator | None = None) -> None:
    """Orthogonal init times sqrt(d_out/d_in), in place, for each given weight."""
    for _, p in params:
        d_out, d_in = matrix_shape(p)
        nn.init.orthogonal_(p, generator=generator)
        p.mul_(math.sqrt(d_out / d_in))
