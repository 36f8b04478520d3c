"""A small, clear GRPO loop, with Qwen-Scope's SAE-guided variant.

Per step: for each prompt, a group of G rollouts is sampled; a rule-based reward scores each
(default: minus the repetition ratio, minus a penalty for near-empty answers); advantages are
the rewards normalised within the group; the loss is the policy gradient
`-A * log pi(token)` averaged over each completion's tokens, plus `kl_coef` times the k3 KL
estimate to the reference policy (the base model: LoRA adapters switched off).

SAE-guided variant (`GRPOConfig.steer` set): ONE rollout per group is generated while the
repetition features are steered up (`Steering.add(sae, {f: +strength})`). That rollout tends
to repeat itself, scores low, and acts as a rare negative example; there is no new reward
term. Its tokens are scored under the unsteered policy like any other rollout (one on-policy
update per batch, so the importance ratio is 1 for the others and ignored for it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..errors import QScopeError
from ..model import hooks
from .repetition import repetition_ratio, words

if TYPE_CHECKING:
    from ..model import LM

RewardFn = Callable[[str, str], float]


def default_reward(prompt: str, text: str) -> float:
    """-(repetition ratio of word 3-grams) - 0.5 if the answer has fewer than 5 words."""
    return -repetition_ratio(text, 3) - (0.5 if len(words(text)) < 5 else 0.0)


@dataclass
class GRPOConfig:
    group_size: int = 4
    prompts_per_step: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    lr: float = 1e-4
    kl_coef: float = 0.04
    steer: object = None  # a Steering (repetition features up) -> SAE-guided variant
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self) if self.steer is None else {k: v for k, v in self.__dict__.items() if k != "steer"}
        d["steer"] = self.steer.to_dict() if self.steer is not None else None
        return d


@dataclass
class Rollout:
    group: int
    prompt: str
    text: str
    steered: bool
    reward: float = 0.0
    advantage: float = 0.0


@dataclass
class Batch:
    rollouts: list[Rollout]
    input_ids: torch.Tensor  # (n, P + T): left-padded prompt + completion
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # (n, T): real completion tokens (through the first EOS)
    prompt_width: int


def add_lora(lm: LM, r: int = 8, alpha: int = 16, target_modules: Sequence[str] = ("q_proj", "v_proj"),
             dropout: float = 0.0) -> LM:
    """Wrap `lm.model` in LoRA adapters (peft), in place; `lm.layers` stays valid."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover
        raise QScopeError("LoRA needs peft: pip install peft") from exc
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout, bias="none",
                     task_type="CAUSAL_LM")
    lm.model = get_peft_model(lm.model, cfg)
    return lm


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@torch.no_grad()
def sample_groups(lm: LM, prompts: Sequence[str], cfg: GRPOConfig, seed: int = 0) -> Batch:
    """G rollouts per prompt (chat template); with `cfg.steer`, rollout 0 of each group is steered."""
    if cfg.group_size < 2:
        raise QScopeError("GRPO needs group_size >= 2")
    tok = lm.tokenizer
    chat = [lm.chat_prompt(p) for p in prompts]
    n_plain = cfg.group_size - (1 if cfg.steer is not None else 0)
    plan = [(g, False) for g in range(len(prompts)) for _ in range(n_plain)]
    if cfg.steer is not None:
        plan += [(g, True) for g in range(len(prompts))]
    enc = lm.tokenize([chat[g] for g, _ in plan], max_length=None, padding_side="left")
    width = enc["input_ids"].shape[1]
    gen = dict(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature, pad_token_id=tok.pad_token_id,
               min_new_tokens=1)
    was_training = lm.model.training
    lm.model.eval()
    outs = []
    for steered in (False, True):
        rows = [i for i, (_, s) in enumerate(plan) if s == steered]
        if not rows:
            continue
        torch.manual_seed(seed + (7919 if steered else 0))
        ctx = hooks.edit(lm.layers, lm._edits(cfg.steer)) if steered else _null()
        with ctx:
            out = lm.model.generate(input_ids=enc["input_ids"][rows], attention_mask=enc["attention_mask"][rows], **gen)
        outs.append((rows, out[:, width:]))
    lm.model.train(was_training)
    T = max(o.shape[1] for _, o in outs)
    comp = torch.full((len(plan), T), tok.pad_token_id, dtype=torch.long)
    for rows, o in outs:
        comp[rows, : o.shape[1]] = o
    eos = tok.eos_token_id
    cmask = torch.ones_like(comp, dtype=torch.long)
    for i in range(len(plan)):
        hits = (comp[i] == eos).nonzero()
        if len(hits):
            cmask[i, int(hits[0]) + 1:] = 0
        else:
            pad_hits = (comp[i] == tok.pad_token_id).nonzero() if tok.pad_token_id != eos else hits
            if len(pad_hits):
                cmask[i, int(pad_hits[0]):] = 0
    texts = [tok.decode(comp[i][cmask[i].bool()], skip_special_tokens=True) for i in range(len(plan))]
    rollouts = [Rollout(g, prompts[g], texts[i], s) for i, (g, s) in enumerate(plan)]
    ids = torch.cat([enc["input_ids"], comp], 1)
    attn = torch.cat([enc["attention_mask"], cmask], 1)
    return Batch(rollouts, ids, attn, cmask, width)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps); zero for a group of equal rewards."""
    adv = torch.zeros_like(rewards)
    for g in groups.unique():
        m = groups == g
        r = rewards[m]
        adv[m] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return adv


def completion_logprobs(model, batch: Batch) -> torch.Tensor:
    """log pi(token) of every completion token: (n, T)."""
    attn = batch.attention_mask
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    P = batch.prompt_width
    logits = logits[:, P - 1:-1].float()
    target = batch.input_ids[:, P:]
    return logits.log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def grpo_loss(model, batch: Batch, ref_model=None, kl_coef: float = 0.04) -> tuple[torch.Tensor, dict]:
    """Policy-gradient loss with group-normalised advantages + k3 KL to the reference."""
    adv = torch.tensor([r.advantage for r in batch.rollouts], dtype=torch.float32)
    mask = batch.completion_mask.float()
    logp = completion_logprobs(model, batch)
    kl = torch.zeros_like(logp)
    if kl_coef:
        with torch.no_grad():
            if ref_model is None and _is_peft(model):
                with model.disable_adapter():
                    ref = completion_logprobs(model, batch)
            elif ref_model is not None:
                ref = completion_logprobs(ref_model, batch)
            else:
                raise QScopeError("KL to the reference needs a LoRA (peft) model or a ref_model")
        d = ref - logp
        kl = d.exp() - d - 1
    per_tok = -adv.unsqueeze(1) * logp + kl_coef * kl
    per_seq = (per_tok * mask).sum(1) / mask.sum(1).clamp(min=1)
    loss = per_seq.mean()
    stats = {"kl": float(((kl.detach() * mask).sum(1) / mask.sum(1).clamp(min=1)).mean())}
    return loss, stats


def grpo_step(lm: LM, prompts: Sequence[str], cfg: GRPOConfig, optimizer, reward_fn: RewardFn = default_reward,
              step: int = 0, ref_model=None) -> dict:
    """Sample groups, score, normalise, one gradient step. Returns statistics of the step."""
    batch = sample_groups(lm, prompts, cfg, seed=cfg.seed * 100_003 + step * 101)
    rewards = torch.tensor([float(reward_fn(r.prompt, r.text)) for r in batch.rollouts])
    adv = group_advantages(rewards, torch.tensor([r.group for r in batch.rollouts]))
    for r, rew, a in zip(batch.rollouts, rewards.tolist(), adv.tolist()):
        r.reward, r.advantage = rew, a
    lm.model.train()
    loss, stats = grpo_loss(lm.model, batch, ref_model, cfg.kl_coef)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    lm.model.eval()
    plain = [r for r in batch.rollouts if not r.steered]
    steered = [r for r in batch.rollouts if r.steered]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"step": step, "loss": float(loss.detach()), **stats,
            "reward": mean([r.reward for r in plain]), "repetition": mean([repetition_ratio(r.text) for r in plain]),
            "reward_steered": mean([r.reward for r in steered]),
            "repetition_steered": mean([repetition_ratio(r.text) for r in steered]),
            "n_rollouts": len(batch.rollouts), "n_steered": len(steered), "sample": plain[0].text if plain else ""}


@dataclass
class GRPOResult:
    """The run's config and per-step statistics (`grpo_step`'s dicts)."""

    config: GRPOConfig
    history: list[dict]

    @property
    def final(self) -> dict:
        return self.history[-1]

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "final": self.final, "history": self.history}


def train_grpo(lm: LM, prompts: Sequence[str], cfg: GRPOConfig, steps: int, reward_fn: RewardFn = default_reward,
               optimizer=None, ref_model=None, on_step: Callable[[dict], None] | None = None,
               start_step: int = 0) -> GRPOResult:
    """`steps` GRPO steps cycling through `prompts` (cfg.prompts_per_step per step); progress via
    `on_step(stats)`, as `run_sasft` beside it."""
    if not prompts:
        raise QScopeError("GRPO needs at least one prompt")
    if steps < 1:
        raise QScopeError(f"GRPO needs steps >= 1, not {steps}")
    params = [p for p in lm.model.parameters() if p.requires_grad]
    if not params:
        raise QScopeError("no trainable parameters: add LoRA adapters (add_lora) or unfreeze some")
    optimizer = optimizer or torch.optim.AdamW(params, lr=cfg.lr)
    history = []
    k = cfg.prompts_per_step
    for step in range(start_step, start_step + steps):
        chunk = [prompts[(step * k + i) % len(prompts)] for i in range(k)]
        stats = grpo_step(lm, chunk, cfg, optimizer, reward_fn, step, ref_model)
        history.append(stats)
        if on_step:
            on_step(stats)
    return GRPOResult(cfg, history)
