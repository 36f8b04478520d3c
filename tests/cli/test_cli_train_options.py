"""`qscope train` options come from TrainConfig: every field is placed, help shows its real default,
and each flag lands in the field it names."""

from dataclasses import fields

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from qscope.cli import train as train_cli
from qscope.train import TrainConfig
from qscope.train.trainer import DERIVED

NOT_OPTIONS = {"k_aux", "store_dtype", "save_dtype"}  # k_aux, store_dtype: config files; save_dtype: --save-fp16


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    train_cli.register(app)
    return app


def _options() -> dict[str, object]:
    group = get_command(_app()).commands["train"]
    return {param.name: param for param in group.params}


def test_every_config_field_is_an_option_or_set_aside():
    names = {f.name for f in fields(TrainConfig)}
    assert set(train_cli.FIELD_OPTIONS) | NOT_OPTIONS == names
    assert not set(train_cli.FIELD_OPTIONS) & NOT_OPTIONS


def test_help_shows_the_config_default_and_the_option_defaults_to_unset():
    defaults = TrainConfig()
    options = _options()
    for name in train_cli.FIELD_OPTIONS:
        option, default = options[name], getattr(defaults, name)
        assert option.default is None, name  # unset: a --config file's value stands
        if isinstance(default, float):
            assert option.help.endswith(f"[{default:g}]"), (name, option.help)
        elif default not in (None, []):
            assert option.help.endswith(f"[{default}]"), (name, option.help)
        elif option.help.endswith("]"):
            assert name in DERIVED, name  # a "[rule]" only where TrainConfig computes the unset value
    assert "--layers 3,15,24" in CliRunner().invoke(_app(), ["train", "--help"]).output


def test_flags_land_in_their_fields(monkeypatch, tmp_path):
    seen = []

    class FakeTrainer:
        def __init__(self, cfg, **kw):
            seen.append(cfg)

        def run(self):
            return {"steps": 0, "tokens": 0, "wall_s": 0.0, "tokens_per_s": 0.0, "layers": {}}

    monkeypatch.setattr("qscope.train.Trainer", FakeTrainer)
    config = tmp_path / "run.json"
    config.write_text('{"k": 7, "ctx_len": 64, "layers": [2]}')
    args = ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--layers", "1,3", "--tokens", "2k",
            "--dead-after", "1k", "--lr", "0.001", "--lr-decay", "0.2", "--seed", "5", "--save-fp16", "--no-progress"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    cfg = seen[0]
    assert (cfg.out_dir, cfg.layers, cfg.total_tokens, cfg.dead_after_tokens) == (str(tmp_path / "run"), [1, 3], 2000, 1000)
    assert (cfg.lr, cfg.lr_decay_frac, cfg.seed, cfg.save_dtype) == (0.001, 0.2, 5, "float16")
    assert (cfg.k, cfg.ctx_len, cfg.batch_size) == (7, 64, TrainConfig().batch_size)  # the file's, and the default


@pytest.mark.parametrize("args, message", [(["--batch-size", "0"], "--batch-size"), (["--tokens", "2X"], "not a count")])
def test_bad_values_are_refused(args, message, tmp_path):
    res = CliRunner().invoke(_app(), ["train", "--out", str(tmp_path / "run"), *args])
    assert res.exit_code != 0 and message in (res.output + str(res.exception))
