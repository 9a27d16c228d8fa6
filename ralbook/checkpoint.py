"""Reading and writing checkpoints safely, and loading the authors' released weights.

* ``ralbook.files.save_atomic`` writes to a temporary file and renames it, so an interrupted run never leaves a
  half-written checkpoint behind (docs/method.md#deliberate-differences-from-the-public-code).
* ``load_file`` never executes pickled code: it unpickles plain containers, numbers, strings and
  tensors; any other class (the authors' optimizer schedule, an EasyDict config, ...) becomes an
  inert ``Replaced`` stand-in that records what it was.
* ``load_reference`` maps the authors' module names (docs/method.md#loading-the-authors-checkpoints) onto ralbook's, strictly.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ralbook.config import Config, preset
from ralbook.errors import CheckpointError, ConfigError, NonFiniteError, RalbookError, shorten
from ralbook.model import build_model


PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------- content checks


def check_finite_state(state: Mapping[str, Any], source: Any, what: str = "weight") -> None:
    """NonFiniteError naming ``source`` and the tensors when any floating tensor holds NaN or inf.

    Why: one NaN weight makes every score NaN, and a NaN score would otherwise rank first.
    """
    bad: dict[str, int] = {}
    total = 0
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point():
            total += 1
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad[name] = count
    if bad:
        shown = ", ".join(f"{name} ({count})" for name, count in list(bad.items())[:4])
        raise NonFiniteError(f"{source}: {len(bad)} of {total} {what} tensors hold non-finite values (NaN or "
                             f"inf): {shown}{', ...' if len(bad) > 4 else ''}; the checkpoint is damaged or its "
                             "training diverged, so no metric can be computed from it")


# --------------------------------------------------------------------------- ralbook's own checkpoints

MODEL_FORMAT, STATE_FORMAT = "ralbook-model", "ralbook-train-state"
FORMAT_VERSION = 2  # 2: a content hash (HASH_KEY); files of version 1 have none
HASH_KEY = "content_sha256"
# what each format must hold besides format, version and the hash: key -> type
REQUIRED: dict[str, dict[str, Any]] = {
    MODEL_FORMAT: {"config": dict, "model": dict, "epoch": int, "val_metrics": dict},
    STATE_FORMAT: {"config": dict, "model": dict, "optimizer": dict, "state": dict, "rng": dict,
                   "train_videos": int, "part_names": list},
}


def _leaves(obj: Any) -> Iterator[bytes]:
    """A canonical byte stream of nested dicts, lists, tensors and scalars (dict keys sorted)."""
    if torch.is_tensor(obj):
        flat = obj.detach().cpu().reshape(-1).contiguous()
        yield f"T{flat.dtype}{tuple(obj.shape)}".encode()
        yield flat.view(torch.uint8).numpy().tobytes()
    elif isinstance(obj, Mapping):
        yield f"D{len(obj)}".encode()
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            yield f"K{type(key).__name__}:{key!r}".encode()
            yield from _leaves(obj[key])
    elif isinstance(obj, (list, tuple)):
        yield f"L{len(obj)}".encode()
        for item in obj:
            yield from _leaves(item)
    else:
        yield f"S{type(obj).__name__}:{obj!r}".encode()


def content_hash(obj: Mapping[str, Any]) -> str:
    """sha256 over every tensor's bytes and every other value of a checkpoint dict (but the hash itself).

    Why: torch does not verify its stored checksums, so flipped bytes in tensor data would load
    without complaint and change the metrics slightly.
    """
    digest = hashlib.sha256()
    for chunk in _leaves({k: v for k, v in obj.items() if k != HASH_KEY}):
        digest.update(chunk)
    return digest.hexdigest()


def with_content_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` plus its content hash, ready for ``save_atomic``."""
    return {**obj, HASH_KEY: content_hash(obj)}


def validate_ralbook(obj: Any, path: PathLike, formats: tuple[str, ...] = (MODEL_FORMAT, STATE_FORMAT)) -> dict:
    """Check a loaded ralbook checkpoint: format, version, content hash, required keys and their types.

    CheckpointError naming the file and the first problem. Returns ``obj``.
    """
    kinds = " or ".join({MODEL_FORMAT: "model checkpoint (best.pt)", STATE_FORMAT: "training state (last.pt)"}[f]
                        for f in formats)
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise CheckpointError(f"{path} is not a ralbook {kinds}")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {shorten(version)} (this ralbook reads "
                              f"1 to {FORMAT_VERSION})")
    if version >= 2 and HASH_KEY not in obj:
        raise CheckpointError(f"{path} has no content hash ({HASH_KEY}): it is damaged")
    if HASH_KEY in obj and obj[HASH_KEY] != content_hash(obj):
        raise CheckpointError(f"{path} fails its content check (sha256 of its tensors and settings differs from "
                              "the one stored when it was written): the file was damaged; use another copy or "
                              "train again")
    for key, kind in REQUIRED[obj["format"]].items():
        if key not in obj:
            raise CheckpointError(f"{path} lacks {key!r}: it is incomplete")
        value = obj[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{path}: {key!r} is a {type(value).__name__}, expected {kind.__name__}")
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj["model"].items()):
        raise CheckpointError(f"{path}: 'model' must map parameter names to tensors")
    return obj


def config_of(obj: Mapping[str, Any], path: PathLike) -> Any:
    """The Config stored in a validated ralbook checkpoint; CheckpointError naming the file when invalid."""

    try:
        return Config.from_dict(obj["config"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: its configuration is invalid: {err}") from err


def read_ralbook(path: PathLike, formats: tuple[str, ...] = (MODEL_FORMAT, STATE_FORMAT)) -> tuple[dict, Any]:
    """(checkpoint dict, Config) of a ralbook checkpoint file, fully checked (see ``validate_ralbook``)."""
    obj = validate_ralbook(load_file(path), path, formats)
    return obj, config_of(obj, path)


# --------------------------------------------------------------------------- restricted unpickling


class Replaced(dict):
    """Inert stand-in for a pickled object of a class that is not allowed (e.g. from the authors' code).

    It is a dict so that dict subclasses (EasyDict configs) keep their items; ``source`` names
    the original class, ``args`` and ``state`` hold what the pickle gave it.
    """

    source = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state
        if isinstance(state, dict):
            self.update(state)

    def __repr__(self) -> str:
        return f"<replaced {self.source}>"


_SAFE_BUILTINS = {"set", "frozenset", "complex", "slice", "range", "bytearray", "list", "dict", "tuple"}
_SAFE_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch", "device"), ("torch", "dtype"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
}


def _reconstruct(cls: type, base: type, state: Any) -> Any:
    """Safe replacement of ``copyreg._reconstructor``: only ever builds a Replaced stand-in."""
    if isinstance(cls, type) and issubclass(cls, Replaced):
        return cls()
    raise CheckpointError(f"checkpoint pickle reconstructs {cls!r}, which is not allowed")


class _RestrictedUnpickler(pickle.Unpickler):
    replaced: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _SAFE_TORCH:
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return _reconstruct
        type(self).replaced.append(f"{module}.{name}")
        return type(name, (Replaced,), {"source": f"{module}.{name}"})


class _RestrictedPickleModule:
    """What torch.load expects of a ``pickle_module``: Unpickler, load and the usual names."""

    Unpickler = _RestrictedUnpickler
    __name__ = "ralbook_restricted_pickle"

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(f, **kwargs).load()


def load_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a torch checkpoint without executing pickled code; clear errors for broken files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was probably cut off while being written")
    _RestrictedUnpickler.replaced = []
    try:
        return torch.load(path, map_location=map_location, pickle_module=_RestrictedPickleModule,
                          weights_only=False)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err


def replaced_classes() -> list[str]:
    """Classes that the last ``load_file`` call replaced by inert stand-ins."""
    return list(_RestrictedUnpickler.replaced)


# --------------------------------------------------------------------------- the authors' key names

# Names all three public codes share: positional tables, input projections, the query pooling vector,
# and the query / key / value projections of attention ("BertSelfAttention").
_SHARED_RULES: list[tuple[str, str]] = [
    (r"^(query|clip|frame)_pos_embed\.position_embeddings\.", r"\1_pos.table."),
    (r"^(query|clip|frame)_pos_embed\.LayerNorm\.", r"\1_pos.norm."),
    (r"^(query|clip|frame)_input_proj\.", r"\1_proj."),
    (r"^modular_vector_mapping\.", "query_pool."),
    (r"\.self\.query\.", ".attn.q."),
    (r"\.self\.key\.", ".attn.k."),
    (r"\.self\.value\.", ".attn.v."),
    (r"\.net\.1\.", ".linear."),
]

# (pattern, replacement) applied in order to each key of the authors' state dict (docs/method.md#loading-the-authors-checkpoints).
REFERENCE_KEY_RULES: list[tuple[str, str]] = [
    (r"^frame_branch_query_encoder\.", "word_encoder."),
    (r"^frame_branch_query_proj\.", "word_proj."),
    (r"^frame_encoder_1\.", "frame_encoder."),
    (r"^text_weight_fc\.", "word_confidence_mlp."),
    (r"^pie_net_(video|text)\.attention\.w_(\d)\.", r"\1_mean.pool.w\2."),
    (r"^pie_net_(video|text)\.layer_norm\.", r"\1_mean.norm."),
    (r"^pie_net_(video|text)\.fc\.", r"\1_mean.fc."),
    (r"^uncertain_net_(video|text)\.attention\.w_(\d)\.", r"\1_sigma.pool.w\2."),
    (r"^uncertain_net_(video|text)\.fc2\.", r"\1_sigma.fc_pooled."),
    (r"^uncertain_net_(video|text)\.fc\.", r"\1_sigma.fc_tokens."),
    (r"^(clip|frame)_encoder\.attn(\d)\.", r"\1_encoder.branches.\2."),
    (r"^(clip|frame)_encoder\.ca\.", r"\1_encoder.summary."),
    (r"^(clip|frame)_encoder\.layer1\.", r"\1_encoder.gate.0."),
    (r"^(clip|frame)_encoder\.layer2\.", r"\1_encoder.gate.3."),
    *_SHARED_RULES,
    (r"\.LayerNorm\.", ".norm."),
    (r"\.output\.layer1\.", ".ffn.up."),
    (r"\.output\.layer2\.", ".ffn.down."),
]

# MS-SL and GMMFormer: their attention blocks ("BertAttention") have an output projection and no FFN.
_SINGLE_LAYER_RULES: list[tuple[str, str]] = [
    *_SHARED_RULES,
    (r"\.output\.dense\.", ".out."),
    (r"\.output\.LayerNorm\.", ".norm."),
    (r"\.LayerNorm\.", ".norm."),
]

# Rules per backbone (``model.backbone``): the public code's names -> ralbook's.
KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "gmmformer_v2": REFERENCE_KEY_RULES,
    "ms_sl": [(r"^mapping_linear\.0\.", "key_proj."), (r"^mapping_linear\.1\.", "value_proj."),
              *_SINGLE_LAYER_RULES],
    "gmmformer": [(r"^frame_encoder_1\.", "frame_encoder."),
                  (r"^(clip_encoder|clip_encoder_2|frame_encoder|frame_encoder_2)\.attn(\d)\.", r"\1.branches.\2."),
                  (r"^modular_vector_mapping_2\.", "frame_pool."), *_SINGLE_LAYER_RULES],
}


# A parameter name only one backbone's public code has (after ralbook's renaming or before it).
_SIGNATURES = {"gmmformer_v2": ("weight_token", "frame_branch_query_encoder"), "ms_sl": ("mapping_linear", "key_proj"),
               "gmmformer": ("clip_encoder_2", "modular_vector_mapping_2")}


def guess_backbone(keys: Iterable[str]) -> Optional[str]:
    """The backbone whose public code writes keys like these, or None."""
    keys = list(keys)
    for backbone, markers in _SIGNATURES.items():
        if any(marker in key for key in keys for marker in markers):
            return backbone
    return None


def reference_to_ralbook_key(key: str, backbone: str = "gmmformer_v2") -> str:
    """Name of the ralbook parameter that holds the public code's tensor ``key``."""
    for pattern, replacement in KEY_RULES[backbone]:
        key = re.sub(pattern, replacement, key)
    return key


def _state_dict_of(source: Union[PathLike, Mapping[str, Any]]) -> Mapping[str, Any]:
    obj = load_file(source) if isinstance(source, (str, os.PathLike)) else source
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError("no state dict found: expected a dict of tensors, or a checkpoint dict "
                              "holding one under 'state_dict'")
    return obj


def convert_reference_state_dict(state: Mapping[str, torch.Tensor],
                                 backbone: str = "gmmformer_v2") -> dict[str, torch.Tensor]:
    """Strip DataParallel ``module.`` prefixes and rename the public code's keys to ralbook's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[reference_to_ralbook_key(key, backbone)] = value
    return out


def load_reference(model: nn.Module, source: Union[PathLike, Mapping[str, Any]]) -> nn.Module:
    """Load the public code's weights (a state dict, a checkpoint dict, or a file of either) into ``model``.

    The key names are those of the public code of the model's backbone (GMMFormer v2 + RAL,
    GMMFormer, MS-SL). Strict: every tensor must find a parameter of the same shape and every
    parameter must be filled; otherwise CheckpointError lists the problems with both shapes.
    """
    state = convert_reference_state_dict(_state_dict_of(source), getattr(model, "name", "gmmformer_v2"))
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(state) & set(own)) if state[k].shape != own[k].shape]
    if unexpected or missing or mismatched:
        lines = []
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatch(es) (is the preset right?): " + "; ".join(mismatched[:8]))
        if unexpected:
            lines.append(f"{len(unexpected)} checkpoint tensor(s) unused: " + ", ".join(unexpected[:8]))
        if missing:
            lines.append(f"{len(missing)} model parameter(s) not in the checkpoint: " + ", ".join(missing[:8]))
        guess = guess_backbone(state.keys())
        if guess and guess != getattr(model, "name", "gmmformer_v2"):
            lines.append(f"its keys look like a {guess} checkpoint: set model.backbone={guess}")
        raise CheckpointError("checkpoint does not fit the model: " + " | ".join(lines))
    check_finite_state(state, source if isinstance(source, (str, os.PathLike)) else "the reference weights")
    model.load_state_dict(state, strict=True)
    return model


def model_from_checkpoint(path: Union[str, Path], preset_name: Optional[str] = None, cfg: Optional[Config] = None,
                          adjust: Optional[Callable[[Config], Config]] = None) -> tuple[Config, Any, str]:
    """(config, model, kind) from a ralbook checkpoint (config inside) or the authors' file.

    For the authors' file the configuration is ``cfg`` or the preset ``preset_name``. ``adjust``
    edits the configuration before the model is built (command-line overrides). ``kind`` is
    ``ralbook`` or ``reference``.
    """

    obj = load_file(path)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("ralbook"):
        cfg = config_of(validate_ralbook(obj, path), path)
        cfg = adjust(cfg) if adjust else cfg
        model = build_model(cfg.model)
        load_model_state(model, obj["model"], path)
        return cfg, model, "ralbook"
    if cfg is None:
        if not preset_name:
            raise CheckpointError(f"{path} is not a ralbook checkpoint (the authors' format?): name its "
                                  "configuration with --preset tvr|act|cha")
        try:
            cfg = preset(preset_name)
        except KeyError as err:
            raise RalbookError(str(err)) from err
    cfg = adjust(cfg) if adjust else cfg
    if cfg.model.backbone != "gmmformer_v2":  # MS-SL's and GMMFormer's own files hold the bare backbone
        cfg.model.csa = cfg.model.word_confidence = cfg.model.msra = False
    model = build_model(cfg.model)
    load_reference(model, obj)
    return cfg, model, "reference"


def load_model_state(model: torch.nn.Module, state: dict[str, Tensor], source: Any) -> None:
    """load_state_dict with a CheckpointError that names the file and the mismatching tensors;
    NonFiniteError when a weight is NaN or infinite."""

    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint {source}: 'model' is not a dict of tensors "
                              f"(got {type(state).__name__})")
    check_finite_state(state, f"checkpoint {source}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {source} does not fit the model: {str(err).splitlines()[0]} "
                              f"({' '.join(str(err).split())[:400]})") from err
