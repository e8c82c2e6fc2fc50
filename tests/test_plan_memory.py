"""`npo plan`: the estimator's exact parts against an instantiated model, DeepSpeed's and
accelerate's estimators, the shipped hub configs, the refusal of `npo forget`, the docs table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from npo_lib.cli import main
from npo_lib.commands.plan import check_fits, plan_run
from npo_lib.commands.plan_table import BEGIN, END, memory_table
from npo_lib.config import load_config
from npo_lib.errors import ConfigError
from npo_lib.models.families import get_family
from npo_lib.models.memory import CONFIGS_DIR, Setup, Shape, estimate, family_config
from npo_lib.objectives.registry import parse_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
)


def _llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TINY, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return config, LlamaForCausalLM(config)


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v) and v.dim() > 0
    )


def _one_step(model) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    model(input_ids=torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    opt.step()
    return opt


@pytest.mark.parametrize("tied", [False, True])
def test_full_parts_are_exact_on_an_instantiated_llama(tied):
    config, model = _llama(tied)
    shape = Shape.from_config(config.to_dict())
    n = sum(p.numel() for p in model.parameters())
    assert shape.n_params == n
    est = estimate(shape, Setup(weight_bytes=4))
    opt = _one_step(model)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert est.parts["weights"] == 4 * n
    assert est.parts["gradients"] == grads
    assert est.parts["optimizer states"] == _state_bytes(opt)


def test_lora_parts_are_exact_on_an_instantiated_llama():
    from npo_lib.config import LoRAConfig
    from npo_lib.models.lora import apply_lora

    config, model = _llama(False)
    peft_model = apply_lora(model, LoRAConfig(r=4))
    shape = Shape.from_config(config.to_dict())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shape.lora_params(4) == trainable
    est = estimate(shape, Setup(weight_bytes=4, lora_r=4))
    opt = _one_step(peft_model)
    assert est.trainable == trainable
    assert est.parts["weights"] == 4 * sum(p.numel() for p in peft_model.parameters())
    assert est.parts["optimizer states"] == _state_bytes(opt)


def test_weights_and_largest_module_agree_with_accelerate():
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**TINY, tie_word_embeddings=False)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    total, _ = calculate_maximum_sizes(model)
    shape = Shape.from_config(config.to_dict())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary inv_freq
    assert estimate(shape, Setup(weight_bytes=2)).parts["weights"] == total - buffers
    assert shape.largest_module == max(
        m.weight.numel() for m in model.modules() if hasattr(m, "weight") and m.weight is not None
    )


@pytest.mark.parametrize("gpus", [1, 4])
def test_zero_states_agree_with_deepspeed_estimators(gpus):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = Shape.read(family_config("deepseek-ai/DeepSeek-R1-Distill-Llama-8B"))
    p = shape.n_params
    states = ("weights", "gradients", "optimizer states", "gathered module (ZeRO-3)")
    for stage in (2, 3):
        parts = estimate(shape, Setup(zero_stage=stage, gpus=gpus)).parts
        ours = sum(parts.get(k, 0) for k in states)
        if stage == 2:
            _, theirs = estimate_zero2_model_states_mem_needs(p, gpus, cpu_offload=False)
        else:
            _, theirs, _ = estimate_zero3_model_states_mem_needs(
                p, shape.largest_module, gpus, cpu_offload=False, cpu_offload_params=False
            )
        assert ours == pytest.approx(theirs, abs=2)


# public sizes of each model card's config.json (transformers' parameter count)
PUBLISHED = {
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 8_030_261_248,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,
    "HuggingFaceH4/zephyr-7b-beta": 7_241_732_096,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "meta-llama/Llama-2-7b-chat-hf": 6_738_415_616,
}


def test_shipped_configs_name_their_hub_id_and_give_the_published_sizes():
    shipped = {json.loads(p.read_text())["hub_id"] for p in CONFIGS_DIR.glob("*.json")}
    assert shipped == set(PUBLISHED)
    for hub_id, n in PUBLISHED.items():
        assert Shape.read(family_config(hub_id)).n_params == n, hub_id
    for name in ("llama3-8b", "llama3.2-1b", "qwen2.5-7b", "zephyr-7b", "llama2-7b"):
        assert family_config(get_family(name).hub_id) is not None, name


def _plan(*args: str, command: str = "forget"):
    cfg = load_config(["model_family=llama3-8b", *args])
    family, spec = get_family(cfg.model_family), parse_loss(cfg.forget_loss)
    return plan_run(cfg, family, spec, family.hub_id, command), cfg, family, spec


def test_reference_and_influence_parts_follow_the_objective():
    npo, *_ = _plan("forget_loss=NPO+GD")
    assert "reference model" not in npo.estimate.parts and npo.setup.forwards == 2
    live, *_ = _plan("forget_loss=NPO+GD", "plan.reference=live")
    assert live.estimate.parts["reference model"] > npo.estimate.parts["weights"]
    kl_lora, *_ = _plan("forget_loss=NPO+KL", "LoRA.r=8")
    assert kl_lora.setup.reference == "adapter_off"
    influence, *_ = _plan("influence.modules=last_n", command="influence")
    assert any("factors" in k for k in influence.estimate.parts)
    assert "optimizer states" not in influence.estimate.parts


def test_forget_refuses_a_run_that_cannot_fit_in_one_line():
    plan, cfg, family, spec = _plan("plan.gpu_memory_gb=40")
    assert not plan.fits
    with pytest.raises(ConfigError, match=r"largest part: optimizer states .*try LoRA.r=8"):
        check_fits(cfg, family, spec, family.hub_id)
    _, cfg, family, spec = _plan("plan.gpu_memory_gb=40", "plan.force=true")
    check_fits(cfg, family, spec, family.hub_id)  # forced
    if not torch.cuda.is_available():  # no GPU, no budget given: never refused
        _, cfg, family, spec = _plan("batch_size=64")
        check_fits(cfg, family, spec, family.hub_id)


def test_plan_command_prints_the_table_and_json(capsys, tmp_path):
    assert main(["plan", "model_family=llama3-8b", "plan.gpu_memory_gb=40"]) == 0
    out = capsys.readouterr().out
    assert "optimizer states" in out and "does not fit in 40 GiB" in out
    path = tmp_path / "plan.json"
    args = ["plan", "model_family=llama3-8b", "LoRA.r=8", "--json", str(path)]
    assert main(args) == 0
    plan = json.loads(path.read_text())
    assert plan["fits"] and plan["trainable"] == 20_971_520
    assert main(["plan", "model_family=llama3-8b", "plan.gpus=-1"]) == 2


def test_docs_table_is_the_estimators_output():
    page = (ROOT / "docs" / "memory.md").read_text()
    block = page[page.index(BEGIN) + len(BEGIN) : page.index(END)].strip()
    assert block == memory_table(), "stale: run `PYTHONPATH=. python bench/plan_memory.py --docs`"
