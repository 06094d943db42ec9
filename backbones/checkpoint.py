"""Loading official InternImage weights unchanged, with a strict key-and-shape check.

Accepted inputs (a path or an already loaded mapping):

- classification checkpoints of OpenGVLab/InternImage: ``{"model": state_dict, ...}``;
- detection / segmentation checkpoints (mmdet/mmseg): ``{"state_dict": ...}`` whose backbone
  keys carry a ``backbone.`` prefix (neck and head keys are ignored);
- Hugging Face ``OpenGVLab/internimage_*`` weights: keys prefixed ``model.`` and the layer
  scales named ``layer_scale1/2`` instead of ``gamma1/2`` (``.bin``/``.pth``, or
  ``.safetensors`` when the ``safetensors`` package is installed);
- this project's detector checkpoints (``img_backbone.`` prefix) and plain state dicts.

A ``module.`` prefix (DDP) is stripped. Classifier-head keys are dropped when the model has no
such head. What remains must match the model exactly (names and shapes); anything else is a
``ValueError`` that lists missing keys, unexpected keys and every shape mismatch.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_internimage_checkpoint", "extract_backbone_state_dict"]

# Prefixes, in the order tried, under which a larger model stores the backbone.
_BACKBONE_PREFIXES = ("img_backbone.", "backbone.", "model.")
# Top-level modules that only the classification models have.
_HEAD_PREFIXES = (
    "conv_head.",
    "head.",
    "clip_projector.",
    "dcnv3_head_x4.",
    "dcnv3_head_x3.",
    "fc_norm.",
)
_HF_LAYER_SCALE = re.compile(r"^(levels\.\d+\.blocks\.\d+\.)layer_scale([12])$")


def _read(path: str | os.PathLike) -> Mapping[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(
                f"{path} is a safetensors file but the 'safetensors' package is not installed; "
                "install it (pip install safetensors) or pass a .bin/.pth file."
            ) from e
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # e.g. raw training checkpoints that pickle a yacs config object next to the weights.
        raise ValueError(
            f"{path} holds Python objects besides tensors, which are not loaded (a pickle can "
            "run code). If you trust the file, extract the weights once with "
            "torch.save(torch.load(path, weights_only=False)['model'], new_path) and load "
            f"new_path. Details: {str(e).splitlines()[0]}"
        ) from e


def extract_backbone_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Backbone weights under the official InternImage key names (heads not yet dropped)."""
    sd: Mapping[str, Any] = checkpoint
    for container in ("state_dict", "model"):
        if isinstance(sd.get(container), Mapping):
            sd = sd[container]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            "The checkpoint holds no tensors at the top level or under 'state_dict'/'model'; "
            f"top-level keys: {list(checkpoint)[:10]}. Pass an InternImage state dict."
        )
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    # Hugging Face names the layer scales layer_scale1/2; the official code gamma1/2.
    return {_HF_LAYER_SCALE.sub(r"\1gamma\2", k): v for k, v in tensors.items()}


def _format_report(
    missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]]
) -> str:
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}), model vs checkpoint:")
        lines += [f"  {k}: model {list(a)} vs checkpoint {list(b)}" for k, a, b in mismatched]
    return "\n".join(lines)


def _variant_hint(model_sd: Mapping[str, Tensor], ckpt_sd: Mapping[str, Tensor]) -> str:
    key = "patch_embed.conv2.weight"
    if key in model_sd and key in ckpt_sd:
        m, c = model_sd[key].shape[0], ckpt_sd[key].shape[0]
        if m != c:
            return (
                f"\nThe checkpoint is an InternImage with channels={c}, the model has "
                f"channels={m}: build the matching variant (backbones.INTERNIMAGE_CONFIGS)."
            )
    return ""


def load_internimage_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load official InternImage weights into ``model`` (formats in the module docstring).

    With ``strict=True`` (default) any missing key, unexpected key or shape mismatch raises a
    ``ValueError`` listing all of them, and nothing is loaded. With ``strict=False`` the
    matching tensors are loaded and the problems are returned. Returns
    ``{"missing": [...], "unexpected": [...], "mismatched": [...], "dropped": [...]}`` where
    ``dropped`` are the classifier-head keys left out because the model has no head.
    """
    raw = (
        path_or_state_dict if isinstance(path_or_state_dict, Mapping) else _read(path_or_state_dict)
    )
    ckpt_sd = extract_backbone_state_dict(raw)
    model_sd = model.state_dict()

    dropped = []
    for prefix in _HEAD_PREFIXES:
        if not any(k.startswith(prefix) for k in model_sd):
            dropped += [k for k in ckpt_sd if k.startswith(prefix)]
    for k in dropped:
        del ckpt_sd[k]

    missing = [k for k in model_sd if k not in ckpt_sd]
    unexpected = [k for k in ckpt_sd if k not in model_sd]
    mismatched = [
        (k, tuple(model_sd[k].shape), tuple(v.shape))
        for k, v in ckpt_sd.items()
        if k in model_sd and model_sd[k].shape != v.shape
    ]
    if strict and (missing or unexpected or mismatched):
        raise ValueError(
            f"Checkpoint does not match {type(model).__name__} "
            f"({len(model_sd)} model keys, {len(ckpt_sd)} checkpoint keys):\n"
            + _format_report(missing, unexpected, mismatched)
            + _variant_hint(model_sd, ckpt_sd)
        )
    if missing or unexpected or mismatched:
        warnings.warn(
            "Partial InternImage checkpoint load (strict=False):\n"
            + _format_report(missing, unexpected, mismatched),
            stacklevel=2,
        )
    bad = {k for k, _, _ in mismatched}
    loadable = {k: v for k, v in ckpt_sd.items() if k in model_sd and k not in bad}
    model.load_state_dict(loadable, strict=strict)
    return {
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": [k for k, _, _ in mismatched],
        "dropped": dropped,
    }
