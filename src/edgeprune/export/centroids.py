"""Deep Compression's weight sharing: k-means centroids fine-tuned by training (a loop, so apart from the pure quantize module)."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .quantize import QuantConfig, _nearest, kmeans_quantize

__all__ = ["finetune_centroids", "share_weights"]

def finetune_centroids(
    model: nn.Module,
    codebooks: Mapping[str, torch.Tensor],
    train_loader: Iterable,
    epochs: int = 1,
    lr: float = 1e-4,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Deep Compression's weight-sharing fine-tuning of k-means centroids; returns the new codebooks.

    For each parameter named in ``codebooks``, every non-zero weight is tied to its nearest
    centroid (zeros stay zero). Each step runs the model with the shared weights, sums the
    gradients of the weights tied to each centroid, and updates the centroids with Adam.
    Nothing else in the model is updated except BatchNorm running statistics (train mode).
    Afterwards the model's weights are the final codebook values.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"finetune_centroids: epochs must be a non-negative int, got {epochs!r}")
    params = dict(model.named_parameters())
    missing = sorted(set(codebooks) - set(params))
    if missing:
        raise ValueError(
            f"finetune_centroids: no parameter named {missing} in the model; "
            "use names from model.named_parameters()"
        )
    device = next(iter(params.values())).device
    centroids, ties = {}, {}
    for name, codebook in codebooks.items():
        weight = params[name]
        codebook = codebook.detach().to(device, torch.float32).sort().values
        mask = weight.detach() != 0
        ties[name] = (mask, _nearest(weight.detach()[mask].float(), codebook))
        centroids[name] = nn.Parameter(codebook)
    optimizer = torch.optim.Adam(centroids.values(), lr=lr)

    def tie_weights() -> None:
        with torch.no_grad():
            for name, (mask, codes) in ties.items():
                weight = params[name]
                weight.zero_()
                weight[mask] = centroids[name][codes].to(weight.dtype)

    tie_weights()
    was_training = model.training
    model.train()
    for epoch in range(epochs):
        desc = f"centroids {epoch + 1}/{epochs}"
        for images, labels in tqdm(train_loader, desc=desc, leave=False, disable=not progress):
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
            for name, (mask, codes) in ties.items():
                grads = params[name].grad[mask].float()
                centroids[name].grad = torch.zeros_like(centroids[name]).index_add_(0, codes, grads)
            optimizer.step()
            tie_weights()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: c.detach().cpu().clone() for name, c in centroids.items()}


def share_weights(
    model: nn.Module,
    bits: int | Mapping[str, int],
    train_loader: Iterable | None = None,
    epochs: int = 0,
    lr: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """Replace each weight tensor's non-zeros by its k-means codebook (in place); optionally fine-tune the centroids.

    ``bits`` is one width or per layer (exact name, ``re:``, ``_default``). With ``epochs > 0``
    the centroids are trained on ``train_loader`` as in :func:`finetune_centroids`. Exporting
    the model afterwards with ``values="kmeans"`` and the same ``bits`` stores these exact values.
    Returns the codebooks by parameter name.
    """
    config = QuantConfig("kmeans", bits)
    config.check_names(name for name, _ in model.named_parameters())
    codebooks = {}
    for name, param in model.named_parameters():
        setting = config.mode_for(name, param)
        if setting is not None:
            codebooks[name] = kmeans_quantize(param.detach(), setting[1])[0]
    return finetune_centroids(model, codebooks, train_loader or [], epochs=epochs, lr=lr, progress=epochs > 0)
