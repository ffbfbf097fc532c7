"""The torch model definitions and their batch scoring and explanations, shared by training and the UDFs.

Two kinds:
- `mlp`: a supervised classifier producing one logit; score = sigmoid(logit), a probability.
  Explanation: gradient x input of the logit, per feature (in the preprocessed space).
- `autoencoder`: trained on rows not labelled anomalous; score = mean squared reconstruction
  error over the preprocessed features. Explanation: each feature's share of that error.

`score_batch` and `explain_batch` are plain functions on numpy arrays, unit-tested without
Spark or Ray; the Spark UDFs and training's evaluation both call them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lakescore.schemas import AUTOENCODER, MLP
from lakescore.schemas import MODEL_KINDS as KINDS


class MLPClassifier(nn.Module):
    """Features -> hidden layers (ReLU, dropout) -> one logit. Use BCEWithLogitsLoss on the logit."""

    def __init__(self, n_features: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def logit_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """d logit / d x per row, in eval mode (dropout off), without autograd: the ReLU masks of
        one forward pass, then the weights back down. The same operations autograd would run
        (bit for bit the same gradient), at a fraction of its bookkeeping for a few rows."""
        if self.training:
            raise RuntimeError("logit_gradient leaves dropout out: call model.eval() first")
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        masks = []
        h = x
        for linear in linears[:-1]:
            h = torch.relu(linear(h))
            masks.append(h > 0)
        gradient = linears[-1].weight.expand(len(x), -1)
        for linear, mask in zip(reversed(linears[:-1]), reversed(masks)):
            gradient = (gradient * mask) @ linear.weight
        return gradient


class Autoencoder(nn.Module):
    """Features -> hidden... -> bottleneck -> ...hidden -> features (the last `hidden` is the bottleneck)."""

    def __init__(self, n_features: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        widths = [n_features, *hidden]
        encoder: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            encoder += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        decoder: list[nn.Module] = []
        back = widths[::-1]
        for i, (a, b) in enumerate(zip(back, back[1:])):
            decoder.append(nn.Linear(a, b))
            if i < len(back) - 2:
                decoder.append(nn.ReLU(inplace=True))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def build_model(architecture: Mapping[str, Any]) -> nn.Module:
    """Build an untrained model from a manifest's `architecture` entry."""
    kind = architecture["kind"]
    args = (int(architecture["n_features"]), [int(h) for h in architecture["hidden"]], float(architecture.get("dropout", 0.0)))
    if kind == MLP:
        return MLPClassifier(*args)
    if kind == AUTOENCODER:
        return Autoencoder(*args)
    raise ValueError(f"unknown model kind {kind!r}; this lakescore builds: {', '.join(KINDS)}")


def model_from_bundle(bundle) -> nn.Module:
    """Build the bundle's model on CPU, load its weights strictly, switch to eval mode."""
    model = build_model(bundle.manifest.architecture.to_json())
    model.load_state_dict(bundle.state_dict(), strict=True)
    return model.eval()


def _forward_scores(model: nn.Module, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if kind == MLP:
        return torch.sigmoid(model(x)), None
    errors = (model(x) - x) ** 2
    return errors.mean(dim=1), errors


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """`x` as a float32 tensor, without a copy when it is row- or column-major: the features come
    column-major (lakescore.features), and the first layer's matrix product reads them in place
    (copying them into rows first costs time; see docs/measurements.md, "Scoring worker and UDF")."""
    x = np.asarray(x, dtype=np.float32)
    if not (x.flags.c_contiguous or x.flags.f_contiguous):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x)


# Rows per forward pass on the CPU. A 10,000-row batch's hidden activations (10,000 x 64 floats,
# 2.5 MB) overflow a core's L2 cache, so each layer streams them through memory; in slices of
# 2,048 rows they stay in cache, with identical scores (see docs/measurements.md, "Scoring
# worker and UDF").
_CPU_FORWARD_ROWS = 2048


def score_batch(model: nn.Module, kind: str, x: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Scores (float64) for preprocessed features `x` (rows x features); higher = more anomalous.

    On the CPU the rows go through the model in slices of `_CPU_FORWARD_ROWS` (a row's score
    depends on its own features only); on a GPU in one pass. Deterministic on CPU: the same rows
    give bit-identical scores, so a retried task does too.
    """
    n = len(x)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    xt = _as_tensor(x)
    step = _CPU_FORWARD_ROWS if torch.device(device).type == "cpu" else n
    scores = np.empty(n, dtype=np.float64)
    with torch.inference_mode():
        xt = xt.to(device)
        for start in range(0, n, step):
            part, _ = _forward_scores(model, kind, xt[start : start + step])
            scores[start : start + step] = part.double().cpu().numpy()
    return scores


def explain_batch(
    model: nn.Module, kind: str, x: np.ndarray, top_k: int, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k feature contributions per row for preprocessed `x`.

    Returns:
        (indices, contributions), each rows x k, sorted by contribution, largest first.
        mlp: gradient x input of the logit (signed; ranked by size, positive = towards anomaly).
        autoencoder: the feature's squared reconstruction error / number of features.
    """
    n, f = x.shape
    k = min(top_k, f)
    if n == 0:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float64)
    xt = _as_tensor(x).to(device)
    with torch.inference_mode():
        if kind == MLP:
            contributions = model.logit_gradient(xt) * xt
        else:
            contributions = (model(xt) - xt) ** 2 / f
        # Stable: equal contributions (a row whose ReLUs are all off has only zeros) keep the
        # features' order, so the reasons are the same on every device and torch build.
        order = torch.argsort(contributions, dim=1, descending=True, stable=True)[:, :k]
        top = torch.gather(contributions, 1, order)
    return order.cpu().numpy(), top.double().cpu().numpy()
