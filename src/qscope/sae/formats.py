"""Reading and writing SAE files: Qwen-Scope `.sae.pt`, SAELens, sparsify and qscope folders.

Each reader returns (SAEConfig, state dict in SAELens orientation); `load_sae` picks the reader
from what the source looks like and turns every failure into one clear QScopeError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import QScopeError
from ..io import atomic_dir, load_torch_plain
from .config import SAEConfig
from .registry import DEFAULT_RELEASE, Release, default_layers, default_sae_root, find_release
from .sae import SAE

State = dict[str, torch.Tensor]

QWEN_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
K_SUFFIX = ":k="  # `--sae layer12.sae.pt:k=50`: the k of a file that does not record it


# --------------------------------------------------------------------------- readers
def _layer_from_name(name: str) -> int | None:
    m = re.search(r"layers?[._-]?(\d+)", name)
    return int(m.group(1)) if m else None


def read_qwen_scope_file(path: Path, k: int | None = None) -> tuple[SAEConfig, State]:
    """A Qwen-Scope `layer{n}.sae.pt`: a plain dict of 4 tensors; W_enc (d_sae, d_model),
    W_dec (d_model, d_sae). Unpickled with `weights_only=True`: code in the pickle never runs.

    The file holds no k, and a wrong k gives wrong codes without any other sign: it comes from
    `k`, else from the path (Qwen-Scope repos are named `...-L0_<k>`), else loading fails."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic not in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):  # torch zip or raw pickle
        raise QScopeError(f"{path}: not a readable torch tensor file (unknown header {magic!r})")
    raw = load_torch_plain(path, "torch tensor file")
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
    if k is None:
        k_match = re.search(r"L0_(\d+)", str(path))
        if not k_match:
            raise QScopeError(f"{path}: the file does not record k (active latents per token) and its path names "
                              f"none (no 'L0_<k>'); pass it as '{path}{K_SUFFIX}<k>' (Python: SAE.load(..., k=<k>))")
        k = int(k_match.group(1))
    layer = _layer_from_name(path.name)
    return SAEConfig(d_model=d_model, d_sae=d_sae, activation="topk", k=k, layer=layer,
                     hook=f"model.layers.{layer}" if layer is not None else None), state


def _oriented(path: Path, key: str, tensor: torch.Tensor, expected: tuple[int, int]) -> torch.Tensor:
    if tuple(tensor.shape) == expected:
        return tensor
    if tuple(tensor.shape) == expected[::-1]:  # already transposed: accept, it is unambiguous
        return tensor.T
    raise QScopeError(f"{path}: tensor {key} has shape {tuple(tensor.shape)}, expected {expected} (from the bias sizes)")


def read_saelens_folder(folder: Path) -> tuple[SAEConfig, State]:
    """A SAELens (or qscope) folder: `cfg.json` + `sae_weights.safetensors`, W_enc (d_in, d_sae)."""
    where = folder / "cfg.json"
    cfg = _read_json(where)
    state = _read_safetensors(folder / "sae_weights.safetensors")
    ours = _typed(where, cfg, "qscope", dict) or {}
    meta = _typed(where, cfg, "metadata", dict) or {}
    fn_kwargs = _typed(where, cfg, "activation_fn_kwargs", dict) or {}
    arch = _typed(where, cfg, "architecture", str) or _typed(where, cfg, "activation_fn_str", str) or "standard"
    activation = _typed(where, ours, "activation", str, "qscope.") or {"topk": "topk", "jumprelu": "jumprelu"}.get(arch, "relu")
    k = _typed(where, cfg, "k", int) or _typed(where, fn_kwargs, "k", int, "activation_fn_kwargs.")
    if "hook" in ours:
        hook = _typed(where, ours, "hook", str, "qscope.")
    else:
        hook = _typed(where, meta, "hook_name", str, "metadata.") or _typed(where, cfg, "hook_name", str)
    layer = _typed(where, ours, "layer", int, "qscope.") if "layer" in ours else _typed(where, cfg, "hook_layer", int)
    if layer is None and hook:
        layer = _layer_from_name(hook.replace("blocks.", "layers."))
    config = SAEConfig(
        d_model=_typed(where, cfg, "d_in", int, required=True), d_sae=_typed(where, cfg, "d_sae", int, required=True),
        activation=activation, k=k, layer=layer, hook=hook,
        model_name=_typed(where, meta, "model_name", str, "metadata.") or _typed(where, cfg, "model_name", str),
        apply_b_dec_to_input=bool(_typed(where, cfg, "apply_b_dec_to_input", bool)),
        metadata=_typed(where, ours, "metadata", dict, "qscope.") or {},
    )
    if activation == "jumprelu" and "threshold" not in state and "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").exp()
    normalize = _typed(where, cfg, "normalize_activations", str)
    if normalize not in (None, "none"):
        raise QScopeError(f"{where}: normalize_activations={normalize!r} is not supported (qscope encodes the raw "
                          "residual); fold the normalisation into the weights first, or use an SAE saved with 'none'")
    state = _check_state(folder, config, state)
    if _typed(where, cfg, "rescale_acts_by_decoder_norm", bool):
        state = _fold_decoder_norm(state)
    return config, state


def _fold_decoder_norm(state: State) -> State:
    """SAELens' `rescale_acts_by_decoder_norm`: codes are `pre * ||W_dec[i]||` and decode divides by the
    norm again. Scaling W_enc's columns and b_enc by the norms and W_dec's rows by their inverse gives the
    same codes and reconstructions with the plain encode (SAELens' own `fold_W_dec_norm`)."""
    norms = state["W_dec"].norm(dim=-1)
    state = dict(state)
    state["W_enc"] = state["W_enc"] * norms
    state["b_enc"] = state["b_enc"] * norms
    state["W_dec"] = state["W_dec"] / norms.unsqueeze(-1)
    return state


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
    config = SAEConfig(d_model=d_model, d_sae=d_sae, activation="topk",
                       k=_typed(folder / "cfg.json", cfg, "k", int, required=True),
                       layer=_layer_from_name(folder.name), hook=folder.name, apply_b_dec_to_input=True)
    return config, _check_state(folder, config, state)


# --------------------------------------------------------------------------- dispatch
def load_sae(source: str | Path, layer: int | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, k: int | None = None) -> SAE:
    """Load any supported SAE; see `SAE.load`. `k` overrides a TopK SAE's k (files may not say it);
    a source string may also end in `:k=<k>` (the CLI's way to give it)."""
    source, k = _split_k(str(source), k)
    config, state, release = _resolve(source, layer, k)
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


def _split_k(source: str, k: int | None) -> tuple[str, int | None]:
    """'layer12.sae.pt:k=50' -> ('layer12.sae.pt', 50); an explicit `k` argument wins."""
    if K_SUFFIX not in source:
        return source, k
    head, _, value = source.rpartition(K_SUFFIX)
    if not value.isdigit() or int(value) < 1:
        raise QScopeError(f"{source}: expected {K_SUFFIX}<k> with k a positive whole number, e.g. {head}{K_SUFFIX}50")
    return head, k if k is not None else int(value)


def _topk_of(release: Release | None) -> int | None:
    return release.k if release is not None and release.activation == "topk" else None


def _resolve(source: str, layer: int | None, k: int | None = None) -> tuple[SAEConfig, State, Release | None]:
    if source.strip().lower() == "default":
        return _read_default(layer) + (DEFAULT_RELEASE,)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".pt" or path.name.endswith(".sae.pt"):
            return read_qwen_scope_file(path, k) + (None,)
        if path.suffix == ".safetensors":
            return _read_folder(path.parent, layer, k) + (None,)
        raise QScopeError(f"{path}: not an SAE file (expected layer<n>.sae.pt, or a folder with cfg.json)")
    if path.is_dir():
        release = find_release(path.name)
        return _read_folder(path, layer, k or _topk_of(release)) + (release,)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source) or source.endswith((".pt", ".safetensors", ".json")):
        raise QScopeError(f"{source}: no such file or folder (and not a hub repo id like 'Qwen/SAE-Res-...')")
    return _read_hub(source, layer, k)


def _read_default(layer: int | None) -> tuple[SAEConfig, State]:
    layers = default_layers()
    if not layers:
        raise QScopeError("the default SAEs are not installed (expected them under qscope/assets/saes)")
    if layer is None:
        raise QScopeError(f"'default' needs a layer: shipped layers are {layers}")
    if layer not in layers:
        raise QScopeError(f"no default SAE for layer {layer}: shipped layers are {layers}")
    return read_saelens_folder(default_sae_root() / f"layer{layer}")


def _read_folder(folder: Path, layer: int | None, k: int | None = None) -> tuple[SAEConfig, State]:
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
        return read_qwen_scope_file(file, k)
    subdirs = [d for d in folder.iterdir() if d.is_dir() and (d / "cfg.json").is_file()]
    if subdirs:
        if layer is None:
            raise QScopeError(f"{folder}: holds several SAEs ({', '.join(sorted(d.name for d in subdirs))}); say which layer")
        match = [d for d in subdirs if _layer_from_name(d.name) == layer]
        if not match:
            raise QScopeError(f"{folder}: no SAE for layer {layer} among {sorted(d.name for d in subdirs)}")
        return _read_folder(match[0], layer, k)
    raise QScopeError(f"{folder}: no SAE found (expected cfg.json + sae_weights.safetensors, "
                      "cfg.json + sae.safetensors, or layer<n>.sae.pt files)")


def _read_hub(repo: str, layer: int | None, k: int | None = None) -> tuple[SAEConfig, State, Release | None]:
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
            file = Path(hf_hub_download(repo, f"layer{layer}.sae.pt"))
            return read_qwen_scope_file(file, k or _topk_of(release)) + (release,)
        return _read_folder(Path(snapshot_download(repo)), layer, k) + (None,)
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


_KINDS = {int: "a whole number", str: "a string", dict: "a JSON object", bool: "true or false"}


def _typed(where: Path, cfg: dict[str, Any], key: str, kind: type, prefix: str = "", required: bool = False) -> Any:
    """`cfg[key]` if it has the JSON type `kind`; None if absent (an error when `required`).
    A file with `"d_in": "abc"` must fail here, naming the field, not deep inside torch."""
    value = cfg.get(key)
    if value is None:
        if required:
            raise QScopeError(f"{where}: missing field {prefix + key!r}")
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise QScopeError(f"{where}: field {prefix + key!r} must be {_KINDS[kind]}, got {json.dumps(value)[:60]}")
    return value


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
