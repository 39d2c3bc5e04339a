"""The PyTorch bridge: a downloaded Cohort model as a ``torch.nn.Module``.

    net = cohort.torch.load(model_dir)       # weights from model.safetensors
    p = net(torch.tensor(cohort.predict(model_dir, csv)["features"]))

The module takes *preprocessed* features (``net.feature_names`` order; the
card's preprocessing, which :func:`cohort.predict` applies) and returns the
probability of the positive class, shape ``[batch]``. ``net.logits(x)``
returns the pre-sigmoid scores. Float32 throughout, like Cohort.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from torch import nn

__all__ = ["CohortNet", "load", "read_safetensors"]


def read_safetensors(path: Union[str, "os.PathLike[str]"]) -> Dict[str, torch.Tensor]:
    """The float32 tensors of a safetensors file (8-byte little-endian
    header length, JSON header, raw data), without the safetensors package."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(data[8 : 8 + header_len])
    body = memoryview(data)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {info['dtype']}, Cohort models are F32")
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=torch.float32)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


class CohortNet(nn.Module):
    """Cohort's feed-forward classifier: ``Linear`` layers with ReLU between
    them (none for logistic regression) and a sigmoid at the end."""

    def __init__(self, n_features: int, hidden: List[int], feature_names: List[str], card: Dict[str, Any]) -> None:
        super().__init__()
        widths = [n_features, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.feature_names = feature_names
        self.card = card

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x.squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def load(model_dir: Union[str, "os.PathLike[str]"]) -> CohortNet:
    """The model in ``model_dir`` (``model.json`` + ``model.safetensors``, as
    ``Coordinator.model()`` downloads it) as a :class:`CohortNet` in eval mode."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    spec = card["model"]
    kind = spec.get("kind")
    if kind == "logistic":
        hidden: List[int] = []
    elif kind == "mlp":
        hidden = list(spec["hidden"])
    else:
        raise ValueError(f"{model_dir}: model kind {kind!r} has no PyTorch equivalent here")
    net = CohortNet(card["n_features"], hidden, card["feature_names"], card)
    tensors = read_safetensors(model_dir / "model.safetensors")
    state = {}
    for i, layer in enumerate(net.layers):
        # Cohort stores weights [fan_in, fan_out]; nn.Linear wants [out, in].
        weight = tensors[f"layers.{i}.weight"]
        bias = tensors[f"layers.{i}.bias"]
        if tuple(weight.shape) != (layer.in_features, layer.out_features):
            raise ValueError(f"{model_dir}: layers.{i}.weight is {tuple(weight.shape)}, expected {(layer.in_features, layer.out_features)}")
        state[f"layers.{i}.weight"] = weight.t().contiguous()
        state[f"layers.{i}.bias"] = bias
    net.load_state_dict(state)
    return net.eval()
