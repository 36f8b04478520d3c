"""A decoder-only model's shapes from its config: parameter counts and FLOPs per token.

Reads a transformers config (dict, `config.json`, an HF folder, or one of the published
configs shipped in `qscope/assets/configs`) and reduces it to the numbers that set memory and
compute: dense or MoE MLPs, full (softmax) attention layers and the Gated DeltaNet
linear-attention layers of Qwen3.5 / Qwen3-Next. The parameter count is exact for the
architectures transformers builds from these configs (tests check it against a model built
on the meta device); FLOPs count matmuls (2 per multiply-add) plus the attention cores.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ..errors import QScopeError

# Chunk length of the chunked gated-delta-rule kernel (fla / transformers' torch fallback).
DELTA_CHUNK = 64


@dataclass(frozen=True)
class Arch:
    """What memory and compute depend on; layer i is `layer_types[i]` ('full' / 'linear')."""

    name: str
    model_type: str
    d_model: int
    n_layers: int
    vocab: int
    tied: bool
    layer_types: tuple[str, ...]
    moe_layers: tuple[bool, ...]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    attn_gate: bool  # Qwen3.5 / Qwen3-Next: q_proj also yields an output gate (2x its width)
    qk_norm: bool
    intermediate: int  # dense MLP width (layers that are not MoE)
    lin_k_heads: int = 0
    lin_v_heads: int = 0
    lin_k_dim: int = 0
    lin_v_dim: int = 0
    conv_kernel: int = 0
    n_experts: int = 0
    top_k: int = 0
    moe_intermediate: int = 0
    shared_intermediate: int = 0
    source: str = ""

    # ---------------------------------------------------------------- parameters
    def attn_params(self, i: int) -> int:
        d = self.d_model
        if self.layer_types[i] == "linear":
            qk, v = self.lin_k_heads * self.lin_k_dim, self.lin_v_heads * self.lin_v_dim
            conv_dim = 2 * qk + v
            # in_proj q,k,v + z (output gate) + b, a (per-head beta / decay); conv; A_log, dt_bias; norm; out_proj
            return d * (conv_dim + v + 2 * self.lin_v_heads) + conv_dim * self.conv_kernel + 2 * self.lin_v_heads \
                + self.lin_v_dim + v * d
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        return d * q * (2 if self.attn_gate else 1) + 2 * d * kv + q * d + (2 * self.head_dim if self.qk_norm else 0)

    def mlp_params(self, i: int, active: bool = False) -> int:
        """All MLP weights of layer i, or (active) those one token uses: router + its top-k + shared expert."""
        d = self.d_model
        if not self.moe_layers[i]:
            return 3 * d * self.intermediate
        experts = self.top_k if active else self.n_experts
        shared = 3 * d * self.shared_intermediate + d if self.shared_intermediate else 0
        return d * self.n_experts + experts * 3 * d * self.moe_intermediate + shared

    def layer_params(self, i: int) -> int:
        return self.attn_params(i) + self.mlp_params(i) + 2 * self.d_model

    @property
    def embed_params(self) -> int:
        return self.vocab * self.d_model

    @property
    def head_params(self) -> int:
        """lm_head weights held separately from the embedding (0 when tied)."""
        return 0 if self.tied else self.vocab * self.d_model

    @property
    def params(self) -> int:
        return self.embed_params + sum(self.layer_params(i) for i in range(self.n_layers)) + self.d_model + self.head_params

    @property
    def active_params(self) -> int:
        """Parameters one token multiplies with (MoE: top-k experts), lm_head included."""
        body = sum(self.attn_params(i) + self.mlp_params(i, active=True) for i in range(self.n_layers))
        return body + self.vocab * self.d_model

    # ---------------------------------------------------------------- compute
    def attn_matmul_params(self, i: int) -> int:
        """Weights of layer i's token mixer that enter matmuls (no norms, conv taps or gates' scalars)."""
        d = self.d_model
        if self.layer_types[i] == "linear":
            qk, v = self.lin_k_heads * self.lin_k_dim, self.lin_v_heads * self.lin_v_dim
            return d * (2 * qk + 2 * v + 2 * self.lin_v_heads) + v * d
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return d * q * (2 if self.attn_gate else 1) + 2 * d * kv + q * d

    def layer_flops(self, i: int, ctx: float) -> float:
        """Forward FLOPs per token at layer i; `ctx` = keys attended on average (T/2 for a causal
        prefill of T tokens, the cache length for one decode step)."""
        flops = 2.0 * (self.attn_matmul_params(i) + self.mlp_params(i, active=True))
        if self.layer_types[i] == "full":
            flops += 4.0 * self.n_heads * self.head_dim * ctx  # q.k and p.v
        else:
            dk, dv, c = self.lin_k_dim, self.lin_v_dim, DELTA_CHUNK
            conv_dim = 2 * self.lin_k_heads * dk + self.lin_v_heads * dv
            # causal conv taps + the chunked delta rule per head (intra-chunk C x C blocks, state
            # read, inter-chunk and state update): the matmuls of transformers' chunked kernel
            flops += 2.0 * conv_dim * self.conv_kernel + self.lin_v_heads * (c * (4.0 * dk + 2.0 * dv) + 6.0 * dk * dv)
        return flops

    def forward_flops(self, tokens: float, ctx: float, upto: int | None = None, logits: float = 0.0) -> float:
        """FLOPs of `tokens` tokens through layers 0..upto (all if None), plus `logits` positions
        through the lm_head."""
        last = self.n_layers - 1 if upto is None else upto
        return tokens * sum(self.layer_flops(i, ctx) for i in range(last + 1)) + logits * 2.0 * self.vocab * self.d_model

    # ---------------------------------------------------------------- caches
    @property
    def n_full(self) -> int:
        return self.layer_types.count("full")

    @property
    def n_linear(self) -> int:
        return self.layer_types.count("linear")

    def kv_bytes_per_token(self, bytes_per: int) -> int:
        """KV cache per token over all full-attention layers."""
        return self.n_full * 2 * self.n_kv_heads * self.head_dim * bytes_per

    def linear_state_bytes(self, bytes_per: int) -> int:
        """Recurrent state per sequence over all linear-attention layers: the delta-rule state
        (fp32) plus the causal-conv window."""
        conv_dim = 2 * self.lin_k_heads * self.lin_k_dim + self.lin_v_heads * self.lin_v_dim
        per_layer = self.lin_v_heads * self.lin_k_dim * self.lin_v_dim * 4 + conv_dim * max(self.conv_kernel - 1, 0) * bytes_per
        return self.n_linear * per_layer

    @property
    def widest_mlp(self) -> int:
        """The largest per-token MLP intermediate width any layer builds."""
        return max(self.intermediate if not moe else max(self.moe_intermediate, self.shared_intermediate)
                   for moe in self.moe_layers)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["layer_types"] = {"full": self.n_full, "linear": self.n_linear}
        out["moe_layers"] = sum(self.moe_layers)
        out.update(params=self.params, active_params=self.active_params)
        return out


# ------------------------------------------------------------------ reading configs
def config_dir() -> Path:
    return Path(str(resources.files("qscope") / "assets" / "configs"))


def shipped_configs() -> dict[str, Path]:
    """{hub id: file} of the published configs shipped with qscope."""
    out = {}
    for path in sorted(config_dir().glob("*.json")):
        out[json.loads(path.read_text())["_qscope"]["model"]] = path
    return out


def _shipped_path(name: str) -> Path | None:
    key = name.strip().rstrip("/").lower()
    if key == "default":
        key = "huggingfacetb/smollm2-135m-instruct"
    for model, path in shipped_configs().items():
        short = model.split("/")[-1].lower()
        # a -Base checkpoint has its instruct sibling's architecture
        if key in (model.lower(), short, model.lower() + "-base", short + "-base", path.stem.lower(),
                   path.stem.lower() + "-base", "qwen/" + path.stem.lower(), "qwen/" + path.stem.lower() + "-base"):
            return path
    return None


def read_config(source: str | Path) -> tuple[dict, str]:
    """(text config dict, where it came from) for a shipped model id, a config.json or an HF folder."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise QScopeError(f"{path}: not a readable config.json ({exc})") from None
        where = str(path)
    else:
        shipped = _shipped_path(str(source))
        if shipped is None:
            known = ", ".join(shipped_configs())
            raise QScopeError(f"{source}: no such config.json or folder, and not a model qscope knows the config of "
                              f"(known: {known}; or pass the model's config.json)")
        cfg = json.loads(shipped.read_text())
        where = f"{cfg['_qscope']['model']} ({cfg['_qscope']['source']})"
    if isinstance(cfg.get("text_config"), dict):  # vision-language wrapper (Qwen3.5): the text model
        text = dict(cfg["text_config"])
        text.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
        cfg = text
    return cfg, where


def _layer_types(cfg: dict, n: int) -> tuple[str, ...]:
    types = cfg.get("layer_types")
    if types is None and cfg.get("full_attention_interval"):
        every = int(cfg["full_attention_interval"])
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n)]
    if types is None:
        return ("full",) * n
    if len(types) != n:
        raise QScopeError(f"config: layer_types has {len(types)} entries for {n} layers")
    return tuple("linear" if t == "linear_attention" else "full" for t in types)


def _n_experts(cfg: dict) -> int:
    # config.json says num_experts; transformers' Qwen3MoeConfig.to_dict() says num_local_experts
    return int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)


def _moe_layers(cfg: dict, n: int) -> tuple[bool, ...]:
    if not _n_experts(cfg):
        return (False,) * n
    if str(cfg.get("model_type", "")).startswith("qwen3_5_moe"):
        return (True,) * n
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    dense = set(cfg.get("mlp_only_layers") or [])
    return tuple(i not in dense and (i + 1) % step == 0 for i in range(n))


def arch_from_config(cfg: dict, name: str = "", source: str = "") -> Arch:
    """Reduce a text config dict to an `Arch`."""
    try:
        n = int(cfg["num_hidden_layers"])
        d = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        model_type = str(cfg.get("model_type", ""))
        hybrid = model_type.startswith(("qwen3_5", "qwen3_next"))
        return Arch(
            name=name or cfg.get("_qscope", {}).get("model") or cfg.get("_name_or_path") or model_type,
            model_type=model_type, d_model=d, n_layers=n, vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", False)), layer_types=_layer_types(cfg, n),
            moe_layers=_moe_layers(cfg, n), n_heads=heads, n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or d // heads), attn_gate=bool(cfg.get("attn_output_gate", hybrid)),
            qk_norm=model_type.startswith("qwen3"), intermediate=int(cfg.get("intermediate_size") or 0),
            lin_k_heads=int(cfg.get("linear_num_key_heads") or 0), lin_v_heads=int(cfg.get("linear_num_value_heads") or 0),
            lin_k_dim=int(cfg.get("linear_key_head_dim") or 0), lin_v_dim=int(cfg.get("linear_value_head_dim") or 0),
            conv_kernel=int(cfg.get("linear_conv_kernel_dim") or 0), n_experts=_n_experts(cfg),
            top_k=int(cfg.get("num_experts_per_tok") or 0), moe_intermediate=int(cfg.get("moe_intermediate_size") or 0),
            shared_intermediate=int(cfg.get("shared_expert_intermediate_size") or 0), source=source)
    except KeyError as exc:
        raise QScopeError(f"config {name or source}: missing field {exc.args[0]!r} (needed for the plan)") from None


def load_arch(source: str | Path) -> Arch:
    """`Arch` of a shipped model id (e.g. Qwen/Qwen3.5-35B-A3B[-Base]), a config.json or an HF folder."""
    cfg, where = read_config(source)
    name = cfg.get("_qscope", {}).get("model") or str(source)
    return arch_from_config(cfg, name=name, source=where)


def transformers_config(source: str | Path, **overrides):
    """The transformers config of the text model (for building it, e.g. with random weights);
    `overrides` replace fields (a scaled-down copy: fewer layers, narrower widths)."""
    from transformers import AutoConfig

    cfg, _ = read_config(source)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    cfg.update(overrides)
    model_type = cfg.pop("model_type")
    if model_type in ("qwen3_5", "qwen3_5_moe"):
        model_type += "_text"
    return AutoConfig.for_model(model_type, **cfg)
