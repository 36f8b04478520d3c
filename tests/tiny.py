"""Tiny random-config models and an offline tokenizer, so unit tests need no downloads."""

from __future__ import annotations

import functools

import torch
import transformers as tf

SENTENCES = [
    "The cat sat on the mat.", "A dog ran in the park.", "def add(a, b): return a + b",
    "Paris is the capital of France.", "The quick brown fox jumps over the lazy dog.",
    "for i in range(10): print(i)", "Hello world, this is a test.", "Numbers: 1 2 3 4 5 6 7 8 9 0",
]

BASE = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
            bos_token_id=1, tie_word_embeddings=False)


@functools.lru_cache(maxsize=1)
def tokenizer() -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences (vocab <= 320)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _moe(**kw):
    return dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **kw)


def _hybrid(**kw):
    # Qwen3.5 / Qwen3-Next alternate linear (gated delta-net) and full attention.
    return dict(layer_types=["linear_attention", "full_attention"] * 2, linear_num_key_heads=2,
                linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=2, **kw)


ARCHS = {
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**BASE)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**BASE)),
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**BASE)),
    "qwen3_moe": lambda: tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**_moe(**BASE))),
    "qwen3_5": lambda: tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(**_hybrid(**BASE))),
    "qwen3_5_vl": lambda: tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(
        text_config=_hybrid(**BASE), vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32,
                                                        out_hidden_size=32))),
    "qwen3_5_moe": lambda: tf.Qwen3_5MoeForCausalLM(tf.Qwen3_5MoeTextConfig(**_hybrid(**_moe(**BASE), shared_expert_intermediate_size=32))),
    "qwen3_next": lambda: tf.Qwen3NextForCausalLM(tf.Qwen3NextConfig(**_hybrid(**_moe(**BASE), shared_expert_intermediate_size=32))),
    "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**BASE)),
}


def tiny_lm(arch: str = "llama", seed: int = 0):
    """A `qscope.LM` around a random tiny model of `arch` (float32, eval mode)."""
    from qscope.model import LM

    torch.manual_seed(seed)
    model = ARCHS[arch]().float().eval()
    return LM(model, tokenizer(), name=f"tiny-{arch}")


def permuted_sae(sae, perm):
    """A copy of `sae` whose feature i is the original's feature perm[i] (a known matching)."""
    from qscope import SAE

    out = SAE.random(sae.cfg, seed=99)
    with torch.no_grad():
        out.W_dec.copy_(sae.W_dec[perm])
        out.W_enc.copy_(sae.W_enc[:, perm])
        out.b_enc.copy_(sae.b_enc[perm])
        out.b_dec.copy_(sae.b_dec)
    return out


def save_pair(lm, sae, folder):
    """`lm` and `sae` written where the CLI reads them: (model folder, SAE folder) under `folder`."""
    model_dir, sae_dir = folder / "model", folder / "sae"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    sae.save(sae_dir)
    return model_dir, sae_dir


def json_round_trip(result) -> dict:
    """`result.to_dict()`, checked to hold nothing that JSON would change (tuples, int keys, NaN)."""
    import json

    d = result.to_dict()
    back = json.loads(json.dumps(d))
    assert back == d
    return back
