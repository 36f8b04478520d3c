"""Reading and writing SAE files: Qwen-Scope `.sae.pt`, SAELens, sparsify and qscope folders.

Each reader returns (SAEConfig, state dict in SAELens orientation); `load_sae` picks the reader
from what the source looks like and turns every failure into one clear QScopeError.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import QScopeError
from ..io import atomic_dir
from .config import SAEConfig
from .registry import DEFAULT_RELEASE, Release, default_layers, default_sae_root, find_release
from .sae import SAE

State = dict[str, torch.Tensor]

QWEN_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


# --------------------------------------------------------------------------- readers
def _layer_from_name(name: str) -> int | None:
    m = re.search(r"layers?[._-]?(\d+)", name)
    return int(m.group(1)) if m else None


def read_qwen_scope_file(path: Path) -> tuple[SAEConfig, State]:
    """A Qwen-Scope `layer{n}.sae.pt`: a plain dict of 4 tensors; W_enc (d_sae, d_model),
    W_dec (d_model, d_sae). Unpickled with `weights_only=True`: code in the pickle never runs."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):  # torch zip or raw pickle
        raise QScopeError(f"{path}: not a readable torch tensor file (unknown header {magic!r})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QScopeError(f"{path}: refused to unpickle: the file holds more than plain tensors ({_first_line(exc)})") from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file
        raise QScopeError(f"{path}: not a readable torch tensor file ({_first_line(exc)})") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(key), torch.Tensor) for key in QWEN_SCOPE_KEYS):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise QScopeError(f"{path}: expected a dict with tensors {list(QWEN_SCOPE_KEYS)}, found {found}")
    d_sae, d_model = raw["b_enc"].numel(), raw["b_dec"].numel()
    state = {
        "W_enc": _oriented(path, "W_enc", raw["W_enc"], (d_sae, d_model)).T,
        "W_dec": _oriented(path, "W_dec", raw["W_dec"], (d_model, d_sae)).T,
        "b_enc": raw["b_enc"].reshape(-1),
        "b_dec": raw["b_dec"].reshape(-1),
    }
    layer = _layer_from_name(path.name)
    # The file holds no k; Qwen-Scope repos name it (`...-L0_50`). Callers may pass k explicitly.
    k_match = re.search(r"L0_(\d+)", str(path))
    return SAEConfig(d_model=d_model, d_sae=d_sae, activation="topk", k=int(k_match.group(1)) if k_match else 50, layer=layer,
                     hook=f"model.layers.{layer}" if layer is not None else None), state


def _oriented(path: Path, key: str, tensor: torch.Tensor, expected: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape) == expected:
        return tensor
    if tuple(tensor.shape) == expected[::-1]:  # already transposed: accept, it is unambiguous
        return tensor.T
    raise QScopeError(f"{path}: tensor {key} has shape {tuple(tensor.shape)}, expected {expected} (from the bias sizes)")


def read_saelens_folder(folder: Path) -> tuple[SAEConfig, State]:
    """A SAELens (or qscope) folder: `cfg.json` + `sae_weights.safetensors`, W_enc (d_in, d_sae)."""
    cfg = _read_json(folder / "cfg.json")
    state = _read_safetensors(folder / "sae_weights.safetensors")
    ours = cfg.get("qscope") or {}
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture") or cfg.get("activation_fn_str") or "standard"
    activation = ours.get("activation") or {"topk": "topk", "jumprelu": "jumprelu"}.get(arch, "relu")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    hook = ours["hook"] if "hook" in ours else (meta.get("hook_name") or cfg.get("hook_name"))
    layer = ours.get("layer", cfg.get("hook_layer"))
    if layer is None and hook:
        layer = _layer_from_name(hook.replace("blocks.", "layers."))
    config = SAEConfig(
        d_model=int(_field(folder, cfg, "d_in")), d_sae=int(_field(folder, cfg, "d_sae")), activation=activation,
        k=int(k) if k else None, layer=layer, hook=hook, model_name=meta.get("model_name") or cfg.get("model_name"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)), metadata=ours.get("metadata") or {},
    )
    if activation == "jumprelu" and "threshold" not in state and "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").exp()
    return config, _check_state(folder, config, state)


def read_sparsify_folder(folder: Path) -> tuple[SAEConfig, State]:
    """A sparsify folder: `cfg.json` + `sae.safetensors` with `encoder.weight` (d_sae, d_in).
    sparsify encodes `x - b_dec`, so the config records `apply_b_dec_to_input=True`."""
    cfg = _read_json(folder / "cfg.json")
    raw = _read_safetensors(folder / "sae.safetensors")
    missing = [key for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if key not in raw]
    if missing:
        raise QScopeError(f"{folder / 'sae.safetensors'}: missing tensors {missing} of a sparsify SAE")
    d_sae, d_model = raw["encoder.weight"].shape
    state = {"W_enc": raw["encoder.weight"].T, "b_enc": raw["encoder.bias"], "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    config = SAEConfig(d_model=d_model, d_sae=d_sae, activation="topk", k=int(_field(folder, cfg, "k")),
                       layer=_layer_from_name(folder.name), hook=folder.name, apply_b_dec_to_input=True)
    return config, _check_state(folder, config, state)


# --------------------------------------------------------------------------- dispatch
def load_sae(source: str | Path, layer: int | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, k: int | None = None) -> SAE:
    """Load any supported SAE; see `SAE.load`. `k` overrides a TopK SAE's k (files may not say it)."""
    config, state, release = _resolve(str(source), layer)
    if release is not None:
        _check_release(source, release, config)
        config.model_name = config.model_name or release.model
        config.k = release.k if release.activation == "topk" else config.k
    if layer is not None and config.layer is not None and config.layer != layer:
        raise QScopeError(f"{source}: this SAE is for layer {config.layer}, not layer {layer}")
    if config.layer is None:
        config.layer = layer
    if k is not None:
        config.k = k
        config.__post_init__()
    sae = SAE(config, dtype=dtype, device="meta")
    sae.load_state_dict({name: t.to(dtype) for name, t in state.items()}, strict=True, assign=True)
    return sae.requires_grad_(False).to(device)  # inference by default; trainers re-enable grads


def _resolve(source: str, layer: int | None) -> tuple[SAEConfig, State, Release | None]:
    if source.strip().lower() == "default":
        return _read_default(layer) + (DEFAULT_RELEASE,)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".pt" or path.name.endswith(".sae.pt"):
            return read_qwen_scope_file(path) + (None,)
        if path.suffix == ".safetensors":
            return _read_folder(path.parent, layer) + (None,)
        raise QScopeError(f"{path}: not an SAE file (expected layer<n>.sae.pt, or a folder with cfg.json)")
    if path.is_dir():
        return _read_folder(path, layer) + (find_release(path.name),)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source) or source.endswith((".pt", ".safetensors", ".json")):
        raise QScopeError(f"{source}: no such file or folder (and not a hub repo id like 'Qwen/SAE-Res-...')")
    return _read_hub(source, layer)


def _read_default(layer: int | None) -> tuple[SAEConfig, State]:
    layers = default_layers()
    if not layers:
        raise QScopeError("the default SAEs are not installed (expected them under qscope/assets/saes)")
    if layer is None:
        raise QScopeError(f"'default' needs a layer: shipped layers are {layers}")
    if layer not in layers:
        raise QScopeError(f"no default SAE for layer {layer}: shipped layers are {layers}")
    return read_saelens_folder(default_sae_root() / f"layer{layer}")


def _read_folder(folder: Path, layer: int | None) -> tuple[SAEConfig, State]:
    """Pick the reader from the folder's files; descend into per-layer sub-folders if needed."""
    if (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file():
        return read_saelens_folder(folder)
    if (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file():
        return read_sparsify_folder(folder)
    if list(folder.glob("layer*.sae.pt")):
        if layer is None:
            raise QScopeError(f"{folder}: a Qwen-Scope folder; say which layer (e.g. --layer 12)")
        file = folder / f"layer{layer}.sae.pt"
        if not file.is_file():
            raise QScopeError(f"{folder}: has no layer{layer}.sae.pt")
        return read_qwen_scope_file(file)
    subdirs = [d for d in folder.iterdir() if d.is_dir() and (d / "cfg.json").is_file()]
    if subdirs:
        if layer is None:
            raise QScopeError(f"{folder}: holds several SAEs ({', '.join(sorted(d.name for d in subdirs))}); say which layer")
        match = [d for d in subdirs if _layer_from_name(d.name) == layer]
        if not match:
            raise QScopeError(f"{folder}: no SAE for layer {layer} among {sorted(d.name for d in subdirs)}")
        return _read_folder(match[0], layer)
    raise QScopeError(f"{folder}: no SAE found (expected cfg.json + sae_weights.safetensors, "
                      "cfg.json + sae.safetensors, or layer<n>.sae.pt files)")


def _read_hub(repo: str, layer: int | None) -> tuple[SAEConfig, State, Release | None]:
    """A hub repo id: Qwen-Scope repos hold `layer{n}.sae.pt`; others are fetched as folders."""
    from huggingface_hub import hf_hub_download, snapshot_download

    release = find_release(repo)
    if release is not None:
        if layer is None:
            raise QScopeError(f"{repo}: say which layer (0..{release.n_layers - 1})")
        if layer not in release.layers:
            raise QScopeError(f"{repo}: layer {layer} out of range (0..{release.n_layers - 1})")
    try:
        if release is not None:
            return read_qwen_scope_file(Path(hf_hub_download(repo, f"layer{layer}.sae.pt"))) + (release,)
        return _read_folder(Path(snapshot_download(repo)), layer) + (None,)
    except QScopeError:
        raise
    except Exception as exc:
        raise QScopeError(f"{repo}: could not fetch from the Hugging Face hub ({_first_line(exc)})") from None


def _check_release(source: Any, release: Release, config: SAEConfig) -> None:
    if (config.d_model, config.d_sae) != (release.d_model, release.d_sae):
        raise QScopeError(f"{source}: shape d_model={config.d_model}, d_sae={config.d_sae} does not match the release "
                          f"{release.repo} (d_model={release.d_model}, d_sae={release.d_sae})")


# --------------------------------------------------------------------------- writer
def save_sae(sae: SAE, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """qscope folder = SAELens layout, written atomically (a temp folder renamed into place)."""
    folder = Path(folder)
    state = {name: t.detach().to("cpu", dtype or t.dtype).contiguous() for name, t in sae.state_dict().items()}
    cfg = sae.cfg.to_saelens()
    cfg["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "sae_weights.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# --------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QScopeError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QScopeError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise QScopeError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path) -> State:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise QScopeError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise QScopeError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def _field(folder: Path, cfg: dict[str, Any], key: str) -> Any:
    if cfg.get(key) is None:
        raise QScopeError(f"{folder / 'cfg.json'}: missing field {key!r}")
    return cfg[key]


def _check_state(where: Path, config: SAEConfig, state: State) -> State:
    expected = {"W_enc": (config.d_model, config.d_sae), "W_dec": (config.d_sae, config.d_model),
                "b_enc": (config.d_sae,), "b_dec": (config.d_model,)}
    if config.activation == "jumprelu":
        expected["threshold"] = (config.d_sae,)
    for key, shape in expected.items():
        if key not in state:
            raise QScopeError(f"{where}: missing tensor {key!r} (found {sorted(state)})")
        if tuple(state[key].shape) != shape:
            raise QScopeError(f"{where}: tensor {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
    return {key: state[key] for key in expected}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
