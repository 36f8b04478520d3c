"""Post-training (Application 4): SASFT penalty, language features, repetition, GRPO."""

from __future__ import annotations

import warnings

import pytest
import torch

from qscope.posttrain import grpo, language_features, repetition
from qscope.posttrain.sasft import (SASFTConfig, SASFTPenalty, SASFTTrainer, SFTExample, build_sft_batch, model_inputs,
                                   penalty_mask, resolve_examples, response_mask, run_sasft, sft_step, unlikelihood_loss)
from qscope.sae import SAE, SAEConfig
from tiny import SENTENCES, tiny_lm

try:
    import peft  # noqa: F401

    HAS_PEFT = True
except ImportError:
    HAS_PEFT = False
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install peft)")


def _sae(lm, layer, seed=3):
    sae = SAE.random(SAEConfig(d_model=lm.d_model, d_sae=64, k=8, layer=layer), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def _batch(lm):
    pairs = [("Say hi.", "The cat sat on the mat."), ("Code?", "def add(a, b): return a + b")]
    return build_sft_batch(lm.tokenizer, pairs, max_length=64, chat=False)


def test_penalty_matches_hand_computation():
    lm = tiny_lm()
    saes = {1: _sae(lm, 1), 2: _sae(lm, 2, seed=4)}
    feats = {1: [0, 5, 9], 2: [3, 7]}
    alphas = {1: torch.tensor([0.0, 0.1, -0.2]), 2: 0.05}
    pen = SASFTPenalty(lm, saes, feats, alphas, lam=0.5)
    batch = _batch(lm)
    ce, value, out = pen(lm.model, batch)
    # hand computation from hidden_states (layer n = hidden_states[n+1])
    hs = lm.model(**{k: v for k, v in model_inputs(batch).items() if k != "labels"}, output_hidden_states=True).hidden_states
    mask = (batch["labels"] != -100) & batch["attention_mask"].bool()
    total = 0.0
    count = 0
    for b in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            count += 1
            for layer in (1, 2):
                pre = saes[layer].pre_acts(hs[layer + 1][b, t])
                alpha = alphas[layer] if isinstance(alphas[layer], torch.Tensor) else torch.full((2,), alphas[layer])
                total += torch.relu(pre[feats[layer]] - alpha).sum().item()
    assert count == int(mask.sum()) and count > 0
    assert value.item() == pytest.approx(0.5 * total / count, rel=1e-4, abs=1e-7)
    assert torch.allclose(ce, out.loss)


def test_only_response_tokens_count():
    lm = tiny_lm()
    pen = SASFTPenalty(lm, {1: _sae(lm, 1)}, {1: [0, 1, 2, 3]}, {1: -10.0}, lam=1.0)  # every token contributes
    batch = _batch(lm)
    _, v1, _ = pen(lm.model, batch)
    # changing prompt-token residual contributions must not matter: mask the prompt differently
    labels = batch["labels"].clone()
    labels[:] = -100
    _, v0, _ = pen(lm.model, {**batch, "labels": labels})
    assert v0.item() == 0.0
    # penalty over response tokens equals mean of per-token excess at those positions only
    with pen.capture():
        lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    per_tok = pen.excess(1, pen._hidden[1])
    m = response_mask(batch)
    assert v1.item() == pytest.approx(per_tok[m].mean().item(), rel=1e-5)
    assert per_tok[~m].abs().sum() > 0  # prompt tokens would have counted if not masked


def test_penalty_gradient_matches_finite_difference_and_is_zero_below_alpha():
    lm = tiny_lm()
    lm.model.double()
    sae = _sae(lm, 1).double()
    batch = _batch(lm)
    pen = SASFTPenalty(lm, {1: sae}, {1: [0, 4, 8, 12]}, {1: 0.0}, lam=1.0)
    pen._w[1], pen._b[1] = pen._w[1].double(), pen._b[1].double()
    pen.alphas[1] = pen.alphas[1].double()
    param = lm.model.model.layers[0].mlp.down_proj.weight

    def value():
        with pen.capture():
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return pen.value(response_mask(batch))

    lm.model.zero_grad()
    v = value()
    assert v.item() > 0
    v.backward()
    grad = param.grad.clone()
    assert grad.abs().sum() > 0
    for p in sae.parameters():
        assert p.grad is None  # the SAE is frozen
    eps = 1e-4  # Llama's RMSNorm computes in float32 even in a float64 model: moderate eps and tolerance
    for idx in [(0, 0), (3, 5), (10, 7)]:
        with torch.no_grad():
            param[idx] += eps
            up = value().item()
            param[idx] -= 2 * eps
            down = value().item()
            param[idx] += eps
        assert (up - down) / (2 * eps) == pytest.approx(grad[idx].item(), rel=3e-2, abs=1e-6)
    # exact check w.r.t. the residual itself
    h = torch.randn(2, 5, lm.d_model, dtype=torch.float64, requires_grad=True)
    m = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: pen.from_hidden({1: x}, m), (h,))
    # all pre-activations below alpha -> zero penalty and zero gradient
    pen.alphas[1] = torch.full((4,), 1e6, dtype=torch.float64)
    lm.model.zero_grad()
    v = value()
    v.backward()
    assert v.item() == 0.0 and param.grad.abs().sum() == 0


def test_unlikelihood_loss_value():
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[-100, 2, 3]])
    # uniform over 4 tokens, 2 bad -> P(bad)=0.5 at positions 0,1 predicting labelled tokens 1,2
    assert unlikelihood_loss(logits, labels, [0, 1]).item() == pytest.approx(-torch.log(torch.tensor(0.5)).item())


ZH = "我们今天去公园散步。"


def test_penalty_mask_excludes_tokens_taught_to_be_the_language():
    lm = tiny_lm()
    examples = resolve_examples([("Say hi.", "The cat sat on the mat."), ("Chinese?", ZH),
                                 SFTExample("Mixed?", "A dog ran. " + ZH, penalise=False)], lang="zh")
    assert [ex.penalise for ex in examples] == [True, False, False]
    with pytest.raises(Exception, match="contains zh"):
        resolve_examples([SFTExample("Mixed?", "A dog ran. " + ZH, penalise=True)], lang="zh")
    batch = build_sft_batch(lm.tokenizer, examples, max_length=64, chat=False)
    resp, pen_mask = response_mask(batch), penalty_mask(batch)
    assert resp[1].any() and resp[2].any()  # the CE does train on the zh responses ...
    assert not pen_mask[1:].any()  # ... the penalty never covers them
    assert torch.equal(pen_mask[0], resp[0])
    # the penalty value is the mean excess over the penalised row only, not over every response token
    pen = SASFTPenalty(lm, {1: _sae(lm, 1)}, {1: [0, 1, 2, 3]}, {1: -10.0}, lam=1.0)
    _, value, _ = pen(lm.model, batch)
    per_tok = pen.excess(1, pen._hidden[1])
    assert value.item() == pytest.approx(per_tok[pen_mask].mean().item(), rel=1e-5)
    grad = torch.autograd.grad(value, pen._hidden[1])[0]
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0  # no push on the zh responses' residuals
    # the unlikelihood baseline covers the same rows
    opt = torch.optim.SGD(lm.model.parameters(), lr=0.0)
    ids = list(range(100, 300))
    stats = sft_step(lm.model, batch, opt, unlikelihood_ids=ids, ul_weight=1.0)
    with torch.no_grad():
        logits = lm.model(**model_inputs(batch)).logits
    expected = unlikelihood_loss(logits, batch["labels"].masked_fill(~pen_mask, -100), ids)
    assert stats["unlikelihood"] == pytest.approx(expected.item(), rel=1e-5)
    assert stats["unlikelihood"] != pytest.approx(unlikelihood_loss(logits, batch["labels"], ids).item(), rel=1e-3)


def _train_pairs():
    return [(f"Say {i}.", s) for i, s in enumerate(SENTENCES)] + [("Chinese?", ZH)]


def _run(lam, features=True, steps=4, seed=0):
    lm = tiny_lm()
    sae = _sae(lm, 1)
    cfg = SASFTConfig(lam=lam, features={1: [0, 1, 2]} if features else {}, alphas={1: [-1.0] * 3} if features else {},
                      lang="zh", lr=1e-2, steps=steps, batch=3, seed=seed, max_length=48, chat=False, lora_rank=0)
    steps_seen = []
    res = run_sasft(lm, {1: sae}, _train_pairs(), cfg, on_step=steps_seen.append)
    assert len(steps_seen) == steps and res.history == steps_seen
    return lm, sae, res


def test_run_sasft_with_lambda_zero_is_plain_sft():
    plain, _, res_plain = _run(0.0, features=False)
    zero, _, res_zero = _run(0.0)
    strong, _, _ = _run(1.0)
    assert res_zero.n_penalised == res_plain.n_penalised == len(SENTENCES)  # the zh response is CE-only
    assert res_zero.final["l_reduce"] > 0 and res_zero.final["penalty"] == 0.0
    a, b, c = (dict(m.model.named_parameters()) for m in (plain, zero, strong))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    d = res_zero.to_dict()
    assert d["config"]["features"] == {"1": [0, 1, 2]} and len(d["history"]) == 4


def _mean_l_reduce(lm, sae):
    pen = SASFTPenalty(lm, {1: sae}, {1: [0, 1, 2]}, {1: -1.0}, lam=1.0)
    batch = build_sft_batch(lm.tokenizer, resolve_examples(_train_pairs(), "zh"), max_length=48, chat=False)
    with torch.no_grad(), pen.capture():
        lm.model(**model_inputs(batch))
    return pen.last_reduce(penalty_mask(batch)).item()


def test_sasft_lowers_the_penalised_feature_activations():
    before = _mean_l_reduce(tiny_lm(), _sae(tiny_lm(), 1))
    plain = _mean_l_reduce(*_run(0.0, steps=15)[:2])
    sasft = _mean_l_reduce(*_run(1.0, steps=15)[:2])
    assert before > 0
    assert sasft < 0.5 * before and sasft < 0.5 * plain


def test_choose_language_features_uses_clean_text_for_alphas():
    lm = tiny_lm()
    sae = _sae(lm, 1)
    texts = {"zh": [ZH, "他们明天去学校。"], "en": SENTENCES[:4] + ["The cat " + ZH]}
    selection, held_out = language_features.selection_split(texts, fraction=0.5, seed=0)
    assert all(not set(selection[k]) & set(held_out[k]) for k in texts)
    chosen = language_features.choose_language_features(lm, {1: sae}, texts, "zh", top=2)
    assert chosen.n_alpha_texts == 4  # the en text with Chinese in it is not clean
    expected = language_features.estimate_alphas(lm, sae, chosen.features[1], SENTENCES[:4], layer=1, max_length=64)
    assert torch.allclose(torch.tensor(chosen.alphas[1]), expected, atol=1e-5)
    again = language_features.LanguageFeatureSet.from_dict(chosen.to_dict())
    assert again.features == chosen.features and again.alphas == chosen.alphas and again.lang == "zh"


def test_sft_step_and_trainer_add_penalty(tmp_path):
    from transformers import TrainingArguments

    lm = tiny_lm()
    pen = SASFTPenalty(lm, {2: _sae(lm, 2)}, {2: [1, 2]}, {2: -1.0}, lam=1.0)
    batch = _batch(lm)
    opt = torch.optim.SGD(lm.model.parameters(), lr=1e-2)
    stats = sft_step(lm.model, batch, opt, penalty=pen)
    assert stats["penalty"] > 0 and stats["loss"] == pytest.approx(stats["ce"] + stats["penalty"], rel=1e-5)

    rows = [{k: v[i] for k, v in batch.items()} for i in range(2)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[],
                             logging_steps=1, save_strategy="no", use_cpu=True)
    trainer = SASFTTrainer(model=lm.model, args=args, train_dataset=rows, penalty=pen)
    loss = trainer.compute_loss(lm.model, {k: v for k, v in batch.items()})
    plain = lm.model(**model_inputs(batch)).loss
    assert loss.item() == pytest.approx(plain.item() + trainer.last_penalty, rel=1e-5)
    assert trainer.last_penalty > 0
    # a loss normalised by num_items_in_batch is left unscaled by Trainer: the penalty is averaged over GA steps
    trainer.current_gradient_accumulation_steps = 2
    n = int((batch["labels"][:, 1:] != -100).sum())
    loss = trainer.compute_loss(lm.model, dict(batch), num_items_in_batch=n)
    assert loss.item() == pytest.approx(plain.item() + trainer.last_penalty / 2, rel=1e-5)
    trainer.train()


def _prompt_completion():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": "Say hi.", "completion": " The cat sat on the mat."},
                              {"prompt": "Code?", "completion": " def add(a, b): return a + b"}] * 2)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_trl_sft_trainer_adds_penalty(tmp_path, lora):
    trl = pytest.importorskip("trl")
    if lora and not HAS_PEFT:
        pytest.skip("peft is not installed")
    from qscope.posttrain import SASFTSFTTrainer, sasft_trainer

    assert SASFTSFTTrainer is sasft_trainer() is sasft_trainer(trl.SFTTrainer) and issubclass(SASFTSFTTrainer, trl.SFTTrainer)
    lm = tiny_lm()
    pen = SASFTPenalty(lm, {1: _sae(lm, 1)}, {1: [0, 1, 2]}, {1: -1.0}, lam=1.0)  # low alpha: penalty > 0
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                         report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)  # TRL defaults otherwise
    data = _prompt_completion()
    trainer = SASFTSFTTrainer(model=lm.model, args=args, train_dataset=data, processing_class=lm.tokenizer,
                              peft_config=peft_config, penalty=pen)
    # TRL's labels (hence the penalty's response mask) cover exactly the completion (+ EOS), not the prompt
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    mask = response_mask(batch)
    for i, src in enumerate(data.select(range(2))):
        n_prompt = len(lm.tokenizer(src["prompt"])["input_ids"])
        assert not mask[i, :n_prompt].any()
        assert lm.tokenizer.decode(batch["input_ids"][i][mask[i]]) == src["completion"] + lm.tokenizer.eos_token
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert bool(frozen) == lora
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()  # with TRL's default (non-reentrant) gradient checkpointing
    assert not [w for w in caught if "SASFT penalty has no gradient" in str(w.message)]
    assert trainer.last_penalty > 0
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    # TRL's extra no-grad forward (return_outputs=True) must not blank the penalty's graph
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL deprecates return_outputs
        loss, _ = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.requires_grad and all(h.requires_grad for h in pen._hidden.values()) and trainer.last_penalty > 0


@needs_peft
def test_penalty_under_lora_trains_adapters_only():
    lm = tiny_lm()
    grpo.add_lora(lm, r=4)
    pen = SASFTPenalty(lm, {1: _sae(lm, 1)}, {1: [0, 1, 2]}, {1: -1.0}, lam=1.0)
    batch = _batch(lm)
    lora = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "lora_B" in n}
    base = lm.model.base_model.model.model.layers[0].mlp.down_proj.weight.detach().clone()
    opt = torch.optim.Adam([p for p in lm.model.parameters() if p.requires_grad], lr=1e-2)
    stats = sft_step(lm.model, batch, opt, penalty=pen)
    assert stats["penalty"] > 0
    changed = [n for n, p in lm.model.named_parameters() if n in lora and not torch.equal(p, lora[n])]
    assert changed
    assert torch.equal(base, lm.model.base_model.model.model.layers[0].mlp.down_proj.weight)


def test_script_token_ids():
    lm = tiny_lm()
    ids = language_features.script_token_ids(lm.tokenizer, ["你好世界"])
    assert ids and all(not any(c.isascii() for c in lm.tokenizer.decode([i])) for i in ids)
    assert language_features.script_token_ids(lm.tokenizer, ["The cat"]) == []


def test_repetition_ratio():
    r = repetition.repetition_ratio
    assert r("the cat sat on the mat") == 0.0
    assert r("") == 0.0 and r("one two") == 0.0
    assert r("a b c a b c") == pytest.approx(1 - 3 / 4)
    assert r("go go go go go go", n=1) == pytest.approx(5 / 6)
    assert r("I like it. I like it. I like it. I like it.") > 0.6
    assert repetition.repeat_positions([5, 6, 5, 6, 7], n=2) == ([1], [3])


def test_repetition_features_and_corpus():
    lm = tiny_lm()
    sae = _sae(lm, 2)
    texts = repetition.repetitive_corpus(SENTENCES * 2, n=12, seed=0, min_words=4)
    assert len(texts) == 12 and all(repetition.repetition_ratio(t, 2) > 0 for t in texts)
    res = repetition.repetition_features(lm, sae, texts, top=5)
    assert len(res.ids) == 5 and res.n_first > 0 and res.n_repeat > 0
    scores = [f.score for f in res.features]
    assert scores == sorted(scores, reverse=True)
    check = repetition.causal_check(lm, sae, res.ids[:2], ["Hi", "Tell me"], strengths=(-2.0, 0.0, 2.0), max_new_tokens=6)
    assert len(check.repetition) == 3


def test_monolinguality_and_alphas():
    lm = tiny_lm()
    sae = _sae(lm, 1)
    res = language_features.monolinguality(lm, sae, {"en": SENTENCES[:4], "code": SENTENCES[4:]}, "en", top=3)
    assert len(res.features) == 3 and res.scores == sorted(res.scores, reverse=True)
    alphas = language_features.estimate_alphas(lm, sae, res.features, SENTENCES[4:])
    cap = lm.capture(SENTENCES[4:], [1])
    expected = sae.pre_acts(cap.valid(1, skip_first=True))[:, res.features].mean(0)
    assert torch.allclose(alphas, expected, atol=1e-5)


@needs_peft
@pytest.mark.parametrize("guided", [False, True])
def test_grpo_groups_and_step(guided):
    from qscope.steer import Steering

    lm = tiny_lm()
    sae = _sae(lm, 2)
    grpo.add_lora(lm, r=4)
    steer = Steering.add(sae, {0: 3.0, 1: 3.0}) if guided else None
    cfg = grpo.GRPOConfig(group_size=3, prompts_per_step=2, max_new_tokens=6, steer=steer, lr=1e-2)
    batch = grpo.sample_groups(lm, ["Hello", "The cat"], cfg, seed=1)
    for g in (0, 1):
        group = [r for r in batch.rollouts if r.group == g]
        assert len(group) == 3
        assert sum(r.steered for r in group) == (1 if guided else 0)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if p.requires_grad}
    reward = lambda prompt, text: float(len(text))  # noqa: E731  - varied rewards -> non-zero advantages
    res = grpo.train_grpo(lm, ["Hello", "The cat"], cfg, steps=1, reward_fn=reward)
    assert res.final["n_steered"] == (2 if guided else 0) and res.to_dict()["config"]["group_size"] == 3
    after = dict(lm.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_group_advantages():
    adv = grpo.group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1]))
    assert adv[0] < 0 < adv[1] and adv[2] == 0 and adv[3] == 0


def test_cli_help():
    import typer
    from typer.testing import CliRunner

    from qscope.cli import posttrain

    app = typer.Typer()
    posttrain.register(app)

    @app.callback()
    def _root():
        pass

    runner = CliRunner()
    for args in (["posttrain", "sasft", "--help"], ["posttrain", "grpo", "--help"],
                 ["posttrain", "features", "language", "--help"], ["posttrain", "features", "repetition", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Example: qscope posttrain" in res.output
    res = runner.invoke(app, ["posttrain", "sasft", "/nonexistent/pairs.jsonl", "--features", "/nonexistent/f.json"])
    assert res.exit_code != 0 and "no such file" in str(res.exception)
