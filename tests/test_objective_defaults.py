"""Defaults that fit the model they meet: every registered objective, with nothing but its
defaults, takes a training step (its inputs from their providers, its loss and backward) on a
model of the embedded size (4 blocks) and on a deep one (32 blocks); RMU's blocks are fractions
of the depth, an explicit block index still works."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from npo_lib.config import TinyModelConfig, load_config
from npo_lib.errors import ConfigError
from npo_lib.objectives.losses.rmu import RMUParams
from npo_lib.objectives.registry import FORGET_TERMS, REGULARIZERS, LossHyper, parse_loss
from npo_lib.training.inputs import INPUTS, InputContext, prepare_inputs

SPECS = list(dict.fromkeys([f"{t}+GD" for t in FORGET_TERMS] + [f"GA+{r}" for r in REGULARIZERS]))
DEPTHS = {"embedded": 4, "deep32": 32}


def test_every_input_a_term_names_has_a_provider():
    for term in (*FORGET_TERMS.values(), *REGULARIZERS.values()):
        assert set(term.needs) <= set(INPUTS), term.name
    assert all(p.doc for p in INPUTS.values())


@pytest.mark.parametrize(
    ("value", "n", "block"),
    [(7 / 32, 32, 7), (7 / 32, 4, 1), (7 / 32, 2, 0), (2, 32, 2), (2.0, 4, 2), (0, 4, 0)],
)
def test_rmu_layer_is_a_fraction_of_the_depth_or_a_block(value, n, block):
    assert RMUParams(layer=value).block(n) == block


def test_rmu_trainable_blocks_follow_the_depth():
    assert RMUParams().trainable_blocks(32) == [5, 6, 7]  # WMDP: layer 7, layers 5, 6, 7
    assert RMUParams().trainable_blocks(4) == [0, 1]
    assert RMUParams(trainable_layers=[5 / 32, 6 / 32, 7 / 32]).trainable_blocks(32) == [5, 6, 7]
    assert RMUParams(trainable_layers=[0.5, 3]).trainable_blocks(4) == [2, 3]
    with pytest.raises(ConfigError, match="rmu_trainable_layers: block -1 is negative"):
        RMUParams(trainable_layers=[-1])


def test_a_fraction_too_deep_for_the_model_names_the_block(tmp_path):
    from npo_lib.commands.checks import check_activation_layers

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4}')
    cfg = load_config(["forget_loss=RMU+GD", "rmu_layer=0.9"])
    with pytest.raises(ConfigError, match=r"rmu_layer=0.9 \(block 4 of 4\)"):
        check_activation_layers(cfg, parse_loss(cfg.forget_loss), str(tmp_path))
    check_activation_layers(
        load_config(["forget_loss=RMU+GD"]), parse_loss("RMU+GD"), str(tmp_path)
    )


# ----------------------------------------------------------------------------- a step each


@pytest.fixture(scope="module")
def models(mini_world):
    """A random Llama of the embedded default's size and a 32-block one (width 16), both with
    the mini world's vocabulary."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    tiny = TinyModelConfig()
    shapes = {
        "embedded": dict(
            hidden_size=tiny.hidden_size,
            intermediate_size=tiny.intermediate_size,
            num_hidden_layers=tiny.num_hidden_layers,
            num_attention_heads=tiny.num_attention_heads,
            num_key_value_heads=tiny.num_key_value_heads,
        ),
        "deep32": dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=32,
            num_attention_heads=2,
            num_key_value_heads=2,
        ),
    }
    torch.manual_seed(0)
    out = {
        name: LlamaForCausalLM(
            LlamaConfig(vocab_size=len(tok), max_position_embeddings=256, **shape)
        )
        for name, shape in shapes.items()
    }
    assert {k: m.config.num_hidden_layers for k, m in out.items()} == DEPTHS
    return tok, out


@pytest.fixture(scope="module")
def datasets(mini_world, models):
    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.models.families import get_family

    tok, _ = models
    cache = {}

    def get(view: str):
        if view not in cache:
            cache[view] = UnlearningDataset.from_files(
                mini_world["data_path"],
                "forget10",
                1,
                tok,
                get_family("tiny").tags,
                views=(view,),
                with_retain=True,
                max_length=96,
            )
        return cache[view]

    return get


@pytest.mark.parametrize("depth", list(DEPTHS))
@pytest.mark.parametrize("loss", SPECS)
def test_every_objective_takes_a_step_with_its_defaults(models, datasets, tmp_path, loss, depth):
    from transformers import TrainingArguments

    from npo_lib.data.dataset import ViewCollator
    from npo_lib.training.trainer import UnlearningTrainer

    tok, by_depth = models
    model = copy.deepcopy(by_depth[depth])
    cfg = load_config([f"forget_loss={loss}"])  # every hyperparameter at its default
    spec = parse_loss(cfg.forget_loss)
    ds = datasets(spec.forget.view)
    t_max = max(len(ds[i][spec.forget.view]["input_ids"]) for i in range(len(ds)))
    trainer = UnlearningTrainer(
        model=model,
        args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True),
        train_dataset=ds,
        data_collator=ViewCollator(pad_token_id=tok.pad_token_id),
        loss_spec=spec,
        hyper=LossHyper.from_config(cfg),
        token_weights=torch.rand(len(ds), t_max),  # what INFLUENCE's influence files would give
    )
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    prepare_inputs(trainer, InputContext(cfg, spec, dataset=ds, reference_model=lambda: frozen))
    batch = ViewCollator(pad_token_id=tok.pad_token_id)([ds[0], ds[1]])
    loss_value = trainer.compute_loss(model, batch)
    loss_value.backward()
    assert math.isfinite(loss_value.item())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(model.get_parameter(n).grad is not None for n in trained)
    if spec.reads_hidden:  # the default ℓ = 7/32 of the depth; ℓ−2..ℓ train (down_proj)
        ell = {4: 1, 32: 7}[DEPTHS[depth]]
        assert trainer.hidden_layer == ell
        expect = {f"model.layers.{i}.mlp.down_proj.weight" for i in range(max(0, ell - 2), ell + 1)}
        assert trained == expect


def test_rmu_with_the_tiny_params_runs_on_the_embedded_depth(mini_world, models, tmp_path):
    """``npo forget params/tiny_forget.yaml forget_loss=RMU+GD`` on a 4-block model: the
    default ℓ (block 7 of 32 before, beyond its depth) is now 7/32 of it, block 1."""
    from pathlib import Path

    from safetensors.torch import load_file

    from npo_lib.cli import main

    tok, by_depth = models
    model_dir = tmp_path / "embedded"
    by_depth["embedded"].save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    params = Path(__file__).resolve().parents[1] / "params" / "tiny_forget.yaml"
    run = tmp_path / "run"
    code = main(
        [
            "forget",
            str(params),
            "forget_loss=RMU+GD",
            f"model_path={model_dir}",
            f"data_path={mini_world['data_path']}",
            f"save_dir={run}",
            "num_epochs=1",
            "warmup_epochs=0",  # one step: not at a warm-up's learning rate 0
        ]
    )
    assert code == 0
    before, after = (
        load_file(str(model_dir / "model.safetensors")),
        load_file(str(run / "model" / "model.safetensors")),
    )
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)} and changed
