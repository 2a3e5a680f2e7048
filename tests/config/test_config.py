import pytest

from candorlm.config import ModelConfig, RunConfig, load_preset, parse_override, preset_names, resolve
from candorlm.errors import CandorError


def test_presets_exist_and_validate():
    assert {"tiny", "small", "base", "large"} <= set(preset_names())
    for name in preset_names():
        cfg = resolve(name)
        assert cfg.model.d_model % cfg.model.n_heads == 0


def test_unknown_key_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(CandorError) as err:
        resolve("tiny", bad)
    msg = str(err.value)
    assert "train.learning_rate" in msg and "max_steps" in msg and "lr" in msg


def test_unknown_section_and_bad_value():
    with pytest.raises(CandorError, match="unknown config section 'optim'"):
        resolve(overrides=["optim.lr=1"])
    with pytest.raises(CandorError, match="divisible"):
        resolve(model={"d_model": 100, "n_heads": 3})


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "train.weight_decay=nan",
                                      "train.grad_clip=-inf", "model.rope_theta=inf", "ledger.price_per_hour=nan"])
def test_config_numbers_must_be_finite(override):
    key, _, value = override.partition("=")
    with pytest.raises(CandorError, match=f"{key}: Input should be a finite number") as err:
        resolve("tiny", overrides=[override])
    assert value in str(err.value)


def test_override_parsing_types():
    assert parse_override("train.lr=1e-3") == {"train": {"lr": 0.001}}
    assert parse_override("train.precision=fp32") == {"train": {"precision": "fp32"}}
    assert parse_override("model.tie_embeddings=false") == {"model": {"tie_embeddings": False}}
    with pytest.raises(CandorError):
        parse_override("nonsense")


def test_layers_override_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = 0.5\nmax_steps = 7\n")
    cfg = resolve("tiny", f, ["train.lr=0.25"])
    assert cfg.train.lr == 0.25 and cfg.train.max_steps == 7
    assert cfg.model.d_model == load_preset("tiny")["model"]["d_model"]


def test_seq_len_above_model_maximum():
    cfg = RunConfig(model=ModelConfig(max_seq_len=64), train={"seq_len": 128})
    with pytest.raises(CandorError, match="above the model's maximum"):
        cfg.check_seq_len()


def test_derived_sizes():
    m = ModelConfig(d_model=768, n_heads=12)
    assert m.head_dim == 64 and m.ff_dim % 64 == 0 and m.kv_heads == 12
    assert ModelConfig(mlp="gelu", d_model=64, n_heads=2).ff_dim == 256


def test_toml_round_trip():
    cfg = resolve("small")
    import tomllib

    assert RunConfig.model_validate(tomllib.loads(cfg.to_toml())) == cfg
