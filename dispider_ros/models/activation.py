"""StreamBridge-style activation model: should the assistant respond at this frame?

StreamBridge decouples "when to answer" from the video-LLM into a compact activation
model with a binary score head, trained with the rule that only the last P% of frames
of each answer segment are positive. Here the head is a small MLP over features the
perception and decision parts already have:

    input  x = [q, f, q * f]   q: (D,) query text embedding, f: (D,) frame embedding,
                               both L2-normalised outputs of the same SigLIP/CLIP model
    hidden h = GELU(LayerNorm(W1 x + b1))      (hidden,)
    output logit = w2 . h + b2                 score = sigmoid(logit)

Checkpoints are a folder: `config.json` (model_type, dim, hidden) and `model.safetensors`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

LOG = logging.getLogger(__name__)
MODEL_TYPE = "dispider_activation_head"
WEIGHTS = "model.safetensors"


@dataclass
class ActivationConfig:
    """Args:
        dim: embedding size D of the text and frame features, >= 1.
        hidden: hidden units of the MLP, >= 1.
    """

    dim: int = 64
    hidden: int = 128

    def __post_init__(self):
        for name in ("dim", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {value!r} must be an int >= 1")


class ActivationHead(nn.Module):
    """Binary score head over (query text embedding, frame embedding).

    Args:
        config: sizes.
    """

    def __init__(self, config: ActivationConfig):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(3 * config.dim, config.hidden),
            nn.LayerNorm(config.hidden),
            nn.GELU(),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, text: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """Logits (B,) for text (B, D) and frame (B, D) embeddings."""
        x = torch.cat([text, frame, text * frame], dim=-1)  # (B, 3D)
        return self.net(x).squeeze(-1)  # (B,)

    def score(self, text: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Probabilities (N,) for numpy text (N, D) and frame (N, D) embeddings."""
        param = next(self.parameters())
        with torch.inference_mode():
            t = torch.as_tensor(np.asarray(text), dtype=param.dtype, device=param.device)
            f = torch.as_tensor(np.asarray(frame), dtype=param.dtype, device=param.device)
            if t.shape[-1] != self.config.dim or f.shape[-1] != self.config.dim:
                raise ValueError(f"embedding dims {t.shape[-1]}/{f.shape[-1]} differ from the "
                                 f"head's dim {self.config.dim}")
            return torch.sigmoid(self.forward(t, f)).float().cpu().numpy()

    def save_pretrained(self, folder: Union[str, Path]) -> None:
        """Write config.json and model.safetensors into folder (created if needed)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(
            {"model_type": MODEL_TYPE, **asdict(self.config)}, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], device: str = "cpu") -> "ActivationHead":
        """Load a head saved by save_pretrained (FileNotFoundError/ValueError if unusable)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"activation head folder {str(folder)!r} needs config.json "
                                    f"and {WEIGHTS}")
        data = json.loads((folder / "config.json").read_text())
        if data.pop("model_type", None) != MODEL_TYPE:
            raise ValueError(f"{folder}/config.json is not a {MODEL_TYPE} config")
        head = cls(ActivationConfig(**data))
        head.load_state_dict(load_file(str(folder / WEIGHTS)))
        LOG.info("activation head loaded from %s (dim %d)", folder, head.config.dim)
        return head.to(device).eval()


def label_frames(stamps: Sequence[float], answer_windows: Sequence[Tuple[float, float]],
                 positive_fraction: float) -> np.ndarray:
    """StreamBridge labels: the last P% of the frames of each answer segment are positive.

    A segment holds the frames with start <= stamp <= end; its last ceil(P * n) frames
    (by stamp) are positive, so a non-empty segment always has at least one. Every other
    frame is negative.

    Args:
        stamps: frame times, seconds (any order).
        answer_windows: (start, end) per answer segment, start <= end.
        positive_fraction: P in (0, 1].
    Returns:
        (N,) float32 labels in {0, 1}, aligned with stamps.
    """
    if not (0.0 < positive_fraction <= 1.0):
        raise ValueError(f"positive_fraction {positive_fraction!r} must be in (0, 1]")
    times = np.asarray(stamps, dtype=np.float64)
    labels = np.zeros(times.shape[0], dtype=np.float32)
    order = np.argsort(times, kind="stable")
    for start, end in answer_windows:
        if not (start <= end):
            raise ValueError(f"answer window ({start}, {end}) has start > end")
        inside = order[(times[order] >= start) & (times[order] <= end)]  # in time order
        if inside.size:
            count = int(np.ceil(positive_fraction * inside.size - 1e-9))
            labels[inside[-count:]] = 1.0
    return labels


def fit(head: ActivationHead, text: np.ndarray, frame: np.ndarray, labels: np.ndarray,
        epochs: int = 100, lr: float = 1e-3, weight_decay: float = 0.01,
        batch_size: int = 256, seed: int = 0) -> list:
    """Train head with AdamW on (text (N, D), frame (N, D), labels (N,)); returns epoch losses.

    Positives are re-weighted by negatives/positives (BCE pos_weight): with P% labelling
    they are rare, and an unweighted head learns to never fire.
    """
    generator = torch.Generator().manual_seed(seed)
    t = torch.as_tensor(text, dtype=torch.float32)
    f = torch.as_tensor(frame, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    positives = float(y.sum())
    pos_weight = torch.tensor((len(y) - positives) / max(positives, 1.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(head(t[idx], f[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
    head.eval()
    return losses
