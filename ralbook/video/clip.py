"""One image-text model for both sides: CLIP frame features and per-token caption features.

The relabelled PRVR benchmarks publish CLIP ViT-B/32 features (512-d frames, 512-d text tokens);
using one open model for videos and captions means a free-text query needs no other text
pipeline. The model is loaded with Hugging Face ``transformers`` (weights from the model-hub
cache, downloaded once when there is a network): it runs on any torch build, CPU-only ones
included, and needs no torchvision.

Token features are the text transformer's last hidden states (after its final layer norm) passed
through the text projection, one row per token from the start token to the end token. The row
of the end token is exactly CLIP's pooled sentence feature (``get_text_features``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ralbook.errors import RalbookError
from ralbook.runtime.progress import quiet_hub_bars
from ralbook.video.decode import VIDEO_EXTRA


DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_REVISION = "main"
# Per-channel RGB mean and standard deviation of CLIP's training images (the published constants).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelUnavailableError(RalbookError):
    """The weights are neither in the local cache nor downloadable."""


def require_transformers() -> Any:
    """The transformers module, or a RalbookError naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise RalbookError(f"CLIP features need the optional 'video' extra (transformers, PyAV): "
                           f"{VIDEO_EXTRA}") from None
    return transformers


def hub_cache_dir(cache_dir: Optional[str] = None) -> str:
    """The folder the model hub caches weights in (HF_HUB_CACHE / HF_HOME, else ~/.cache/huggingface/hub)."""
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@dataclass
class TokenFeatures:
    """One caption: (L, d) float32 token rows and the L token strings, start and end tokens included."""

    features: np.ndarray
    tokens: list[str]


class ClipEncoder:
    """A CLIP model (``transformers.CLIPModel``) and its tokenizer, on one device, in eval mode."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device = "cpu", name: str = "",
                 revision: str = ""):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.name, self.revision = name, revision
        self.image_size = int(model.config.vision_config.image_size)
        self.dim = int(model.config.projection_dim)
        self.max_tokens = int(model.config.text_config.max_position_embeddings)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> dict[str, Any]:
        """What produced the features (stored beside the collection)."""
        return {"model": self.name, "revision": self.revision, "image_size": self.image_size, "dim": self.dim}

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 RGB frames (S = image_size) -> (n, dim) float32 image features."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = (x - self._mean) / self._std
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return self.model.visual_projection(pooled).float().cpu().numpy()

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> list[TokenFeatures]:
        """Per-token features of each text (padding removed)."""
        enc = self._tokenize(texts)
        hidden = self.model.text_model(**enc).last_hidden_state
        feats = self.model.text_projection(hidden).float().cpu().numpy()
        mask = enc["attention_mask"].cpu().numpy().astype(bool)
        ids = enc["input_ids"].cpu().numpy()
        return [TokenFeatures(feats[i][mask[i]], self.tokenizer.convert_ids_to_tokens(ids[i][mask[i]].tolist()))
                for i in range(len(texts))]


def load_clip(name: str = DEFAULT_MODEL, revision: str = DEFAULT_REVISION, device: str | torch.device = "cpu",
              cache_dir: Optional[str] = None, offline: bool = False) -> ClipEncoder:
    """The CLIP model ``name`` at ``revision`` from the hub cache (downloaded when missing, unless ``offline``).

    Any failure to find or fetch the files becomes one :class:`ModelUnavailableError` naming the
    model, the revision and the cache folder, since that is what the user can act on.
    """
    transformers = require_transformers()
    quiet_hub_bars()  # no carriage-return bars in a log file
    cache = hub_cache_dir(cache_dir)
    try:
        model = transformers.CLIPModel.from_pretrained(name, revision=revision, cache_dir=cache_dir,
                                                       local_files_only=offline)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, revision=revision, cache_dir=cache_dir,
                                                               local_files_only=offline)
    except Exception as err:  # the hub raises OSError, HTTP and connection errors of several libraries
        how = "offline" if offline else "no network or no such model"
        raise ModelUnavailableError(
            f"model {name!r} (revision {revision!r}) is not in the cache folder {cache} and could not be "
            f"downloaded ({how}; {type(err).__name__}: {' '.join(str(err).split())[:80]})") from None
    return ClipEncoder(model, tokenizer, device, name, revision)


def words_of(tokens: Sequence[str]) -> list[str]:
    """Readable token strings for notebooks: CLIP's end-of-word marker dropped, empty ones shown as '_'."""
    return [t.replace("</w>", "") or "_" for t in tokens]
