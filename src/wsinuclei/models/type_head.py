"""A nucleus type head on a frozen star network: a linear classifier (softmax regression) over each nucleus'
embedding (``star_decode.pool_embeddings``: the head's features averaged over the nucleus' polygon), carried in
a model file beside the network it reads, with its own class names.

The network is not touched: a model file with a type head holds its parent's tensors and metadata as they were
(the INT8 network included) plus ``type_head.weight`` (K, C) and ``type_head.bias`` (K,) and, in the preset,
``[type_head] names``. Its nuclei are therefore the parent's, bit for bit; only ``type`` and ``p_NAME`` are new.

Training (:func:`fit`) is multinomial logistic regression with an L2 penalty on standardised embeddings, solved
by L-BFGS (scipy): convex, so the same points always give the same head. The standardisation is folded into the
weights, so applying the head is one matrix product and a softmax. Written here rather than taken from
scikit-learn, which is not a dependency of the package and would be for this alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: tensor names of a type head in a model file
WEIGHT_KEY, BIAS_KEY = "type_head.weight", "type_head.bias"
KEYS = (WEIGHT_KEY, BIAS_KEY)


@dataclass(frozen=True)
class TypeHead:
    """Class logits = ``weight`` @ embedding + ``bias``; ``names`` in the order of the rows."""

    weight: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    names: tuple[str, ...]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) float32 class probabilities of (N, C) embeddings."""
        z = np.asarray(embeddings, np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)
        z -= z.max(1, keepdims=True) if len(z) else 0.0
        p = np.exp(z)
        return (p / p.sum(1, keepdims=True)).astype(np.float32) if len(z) else np.zeros((0, len(self.names)),
                                                                                           np.float32)

    @classmethod
    def from_tensors(cls, tensors: dict, config_raw: dict) -> "TypeHead | None":
        """The head a model file carries (its tensors and preset), or None."""
        if WEIGHT_KEY not in tensors:
            return None
        names = tuple(str(n) for n in (config_raw.get("type_head") or {}).get("names", ()))
        w = np.asarray(tensors[WEIGHT_KEY], np.float32)
        b = np.asarray(tensors[BIAS_KEY], np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],) or len(names) != w.shape[0]:
            raise ValueError(f"type head of {w.shape} weights, {b.shape} bias and {len(names)} names")
        return cls(w, b, names)


def _loss_and_grad(params, x, y_onehot, sample_w, lam, k, c):
    w = params[: k * c].reshape(k, c)
    b = params[k * c:]
    z = x @ w.T + b
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    p = np.exp(logp)
    n = sample_w.sum()
    loss = -(sample_w[:, None] * y_onehot * logp).sum() / n + 0.5 * lam * (w * w).sum()
    d = (p - y_onehot) * sample_w[:, None] / n
    gw = d.T @ x + lam * w
    gb = d.sum(0)
    return loss, np.concatenate([gw.ravel(), gb])


def fit(embeddings: np.ndarray, labels: np.ndarray, names: tuple[str, ...], lam: float = 1e-3,
        balanced: bool = True) -> TypeHead:
    """Softmax regression of ``labels`` (N,) indices into ``names`` on (N, C) embeddings: inputs standardised,
    an L2 penalty ``lam`` on the standardised weights, each class weighted by the inverse of its count when
    ``balanced`` (a class with few clicks counts as much as a common one)."""
    from scipy.optimize import minimize

    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, int)
    k, c = len(names), x.shape[1]
    mu = x.mean(0)
    sd = x.std(0)
    sd[sd < 1e-6] = 1.0  # a feature that never varies here: left as it is, its weight decays to 0
    xs = (x - mu) / sd
    onehot = np.eye(k)[y]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    sample_w = (1.0 / np.maximum(counts, 1.0))[y] if balanced else np.ones(len(y))
    res = minimize(_loss_and_grad, np.zeros(k * c + k), args=(xs, onehot, sample_w, float(lam), k, c), jac=True,
                   method="L-BFGS-B", options={"maxiter": 2000})
    w = res.x[: k * c].reshape(k, c)
    b = res.x[k * c:]
    # fold the standardisation in: w ((e - mu) / sd) + b = (w / sd) e + (b - w mu / sd)
    return TypeHead((w / sd).astype(np.float32), (b - (w / sd) @ mu).astype(np.float32), tuple(names))


def choose_penalty(embeddings: np.ndarray, labels: np.ndarray, names, groups: np.ndarray,
                   penalties=(1e-4, 1e-3, 1e-2, 1e-1), folds: int = 3) -> float:
    """The L2 penalty with the best mean balanced accuracy over ``folds`` folds of the training points (by
    ``groups``: images where there are enough, else points)."""
    y = np.asarray(labels, int)
    uniq = np.unique(groups)
    if len(uniq) < folds:
        groups = np.arange(len(y)) % folds
        uniq = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    best = (-1.0, penalties[0])
    for lam in penalties:
        accs = []
        for i in range(folds):
            tr, te = f != i, f == i
            if not te.any() or len(np.unique(y[tr])) < 2:
                continue
            head = fit(embeddings[tr], y[tr], names, lam)
            pred = head.probabilities(embeddings[te]).argmax(1)
            per = [(pred[y[te] == k] == k).mean() for k in range(len(names)) if (y[te] == k).any()]
            accs.append(float(np.mean(per)))
        score = float(np.mean(accs)) if accs else -1.0
        if score > best[0]:
            best = (score, lam)
    return best[1]
