"""Feature search: contrast, token effects, per-text codes."""

import pytest
import torch

from qscope import SAE, SAEConfig
from qscope.errors import QScopeError
from qscope.features.active import encode_text
from qscope.features.codes import iter_text_codes
from qscope.features.logits import token_effects
from qscope.features.search import contrast, features_for_tokens


@pytest.fixture(scope="module")
def lm(tiny_lm_copy):
    return tiny_lm_copy("llama", seed=2)


@pytest.fixture(scope="module")
def sae(lm):
    return SAE.random(SAEConfig(d_model=lm.d_model, d_sae=96, k=6, layer=2), seed=4)


def test_codes_match_direct_encoding(lm, sae):
    texts = ["The cat sat on the mat.", "Hello"]
    codes = list(iter_text_codes(lm, sae, texts, batch_size=2))
    cap = lm.capture(texts, [2])
    for c, row in zip(codes, range(2)):
        dense = torch.zeros(len(c.tokens), 96).scatter(-1, c.indices, c.values)
        assert torch.allclose(dense, sae.encode(cap.acts[2][row][cap.mask[row]]), atol=1e-5)
    assert torch.allclose(codes[0].dense_max(96), sae.encode(cap.valid(2)[1:len(codes[0].tokens)]).max(0).values,
                          atol=1e-5)


def test_contrast_finds_a_planted_feature(lm, sae):
    """Plant a feature whose encoder reads the mean residual of 'cat' texts."""
    pos = ["The cat sat on the mat."] * 3
    neg = ["for i in range(10): print(i)"] * 3
    mean_pos = lm.capture(pos[:1], [2]).valid(2, skip_first=True).mean(0)
    mean_neg = lm.capture(neg[:1], [2]).valid(2, skip_first=True).mean(0)
    planted = SAE.random(sae.cfg, seed=4)
    with torch.no_grad():
        direction = (mean_pos - mean_neg) / (mean_pos - mean_neg).norm()
        planted.W_enc[:, 17] = direction * 50
    result = contrast(lm, planted, pos, neg, top=5)
    assert result.features[0].feature == 17
    assert result.features[0].mean_pos > result.features[0].mean_neg
    assert result.tokens_pos == sum(len(lm.tokenize([t])["input_ids"][0]) - 1 for t in pos)
    assert contrast(lm, planted, pos, neg, top=5, by="rate").features[0].rate_pos >= 0


def test_contrast_refuses_empty(lm, sae):
    with pytest.raises(QScopeError):
        contrast(lm, sae, [], ["x"])


def test_token_effects_and_search_agree(lm, sae):
    token = " the"
    (best, score), (second, _) = features_for_tokens(lm, sae, [token], top=2)
    token_id = lm.tokenizer.encode(token)[0]
    effect_on_token = sae.W_dec @ lm.model.get_output_embeddings().weight[token_id]
    assert best == int(effect_on_token.argmax()) and abs(score - float(effect_on_token.max())) < 1e-5
    effect = token_effects(lm, sae, [best], n=3)[0]
    assert effect.promoted[0][1] >= score >= effect.suppressed[0][1]
    assert features_for_tokens(lm, sae, [token], top=1, suppress=True)[0][0] == int(effect_on_token.argmin())
    with pytest.raises(QScopeError, match="tokens"):
        features_for_tokens(lm, sae, ["The quick brown fox jumps"])


def test_encode_text_ranks_per_token(lm, sae):
    enc = encode_text(lm, sae, "The cat sat on the mat.", top=3)
    assert all(len(t.features) <= 3 for t in enc.tokens)
    assert all(a[1] >= b[1] for t in enc.tokens for a, b in zip(t.features, t.features[1:]))
    assert enc.strongest(2)[0][1] == max(v for t in enc.tokens[1:] for _, v in t.features)
