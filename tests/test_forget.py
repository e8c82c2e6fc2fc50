"""The forgetting trainer on a random tiny Llama: reference cache, run folders, resume, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from npo_lib.commands.forget import check_forget_config, run_forget
from npo_lib.config import load_config
from npo_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(world, run: Path, *over: str):
    return load_config(
        [
            f"model_path={world['model_path']}",
            f"data_path={world['data_path']}",
            f"save_dir={run}",
            "split=forget10",
            "task_id=1",
            "batch_size=2",
            "num_epochs=1",
            "lr=1e-3",
            "warmup_epochs=0",
            *over,
        ]
    )


def _log(run: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (run / "log.jsonl").read_text().splitlines()
        if "loss" in line and "train_runtime" not in line
    ]


def test_cached_reference_equals_live_model(mini_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from npo_lib.data.dataset import UnlearningDataset, ViewCollator
    from npo_lib.models.families import get_family
    from npo_lib.objectives.primitives import token_logprobs
    from npo_lib.objectives.reference import compute_reference_logprobs

    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    model = AutoModelForCausalLM.from_pretrained(mini_world["model_path"], dtype=torch.float32)
    ds = UnlearningDataset.from_files(
        mini_world["data_path"], "forget10", 1, tok, get_family("tiny").tags
    )
    cache = compute_reference_logprobs(
        model,
        ds,
        "full",
        pad_token_id=tok.pad_token_id,
        batch_size=3,
        fingerprint="x",
        progress=False,
    )
    collate = ViewCollator(pad_token_id=tok.pad_token_id)
    for i in range(len(ds)):  # live reference, one example at a time (no padding)
        b = collate([ds[i]["full"]])
        logp, mask = token_logprobs(model(input_ids=b["input_ids"]).logits, b["labels"])
        n = logp.shape[1]
        torch.testing.assert_close(cache.token[i, :n], logp[0].float(), atol=1e-5, rtol=1e-5)
        assert torch.all(cache.token[i, n:] == 0)
        torch.testing.assert_close(cache.seq[i], logp[0].sum().float(), atol=1e-4, rtol=1e-5)


def test_run_folder_reproducible_and_never_overwritten(mini_world, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(mini_world, run, "forget_loss=NPO+GD")
    res = run_forget(cfg, progress=False)
    for name in (
        "config.yaml",
        "log.jsonl",
        "ref_logprobs.safetensors",
        "result.json",
        "model/config.json",
    ):
        assert (run / name).is_file(), name
    assert load_config([str(run / "config.yaml")]) == cfg
    rows = _log(run)
    assert len(rows) == res["steps"] == 2
    assert {"loss", "forget/NPO", "reg/GD"} <= set(rows[0])
    # step 1: θ = θ_ref, so Δ = 0 and NPO = (2/β) log 2 exactly (the cache matches the model)
    assert rows[0]["forget/NPO"] == pytest.approx(2 / cfg.beta * math.log(2), rel=1e-5)
    with pytest.raises(ConfigError, match="overwrite=true"):
        run_forget(cfg, progress=False)
    (
        run / "notebooks"
    ).mkdir()  # a sweep's executed notebooks, one being written while it overwrites
    (run / "notebooks" / "01-forget.ipynb").write_text("{}")
    (run / "attacks").mkdir()
    again = run_forget(load_config([str(run / "config.yaml"), "overwrite=true"]), progress=False)
    assert again["steps"] == 2
    assert (run / "notebooks" / "01-forget.ipynb").is_file() and not (
        run / "attacks"
    ).exists()  # the rest of the old run is gone


def test_unfinished_folder_asks_for_resume(mini_world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    with pytest.raises(ConfigError, match="resume=true"):
        check_forget_config(_cfg(mini_world, run))


def test_loss_errors_before_any_model_loads(mini_world, tmp_path):
    with pytest.raises(ConfigError, match="valid"):
        check_forget_config(_cfg(mini_world, tmp_path / "bad", "forget_loss=NPX+GD"))
    cfg = _cfg(
        mini_world,
        tmp_path / "run",
        "forget_loss=INFLUENCE+GD",
        f"influence_dir={tmp_path / 'infl'}",
    )
    with pytest.raises(ConfigError) as e:
        check_forget_config(cfg)
    assert str(tmp_path / "infl" / "scores.safetensors") in str(e.value) and "npo influence" in str(
        e.value
    )


def test_oracle_selection_on_data_without_fact_spans_fails_before_any_model_loads(
    mini_world, tmp_path
):
    import other_benchmark

    folder = other_benchmark.generate(tmp_path / "companies", n_companies=10, n_holdout=1)
    cfg = _cfg(
        {**mini_world, "data_path": str(folder)},
        tmp_path / "run",
        "forget_loss=INFLUENCE+GD",
        "selection.method=oracle",
        "task_id=null",
        f"influence_dir={tmp_path / 'infl'}",
    )
    with pytest.raises(ConfigError, match="selection.method=oracle needs fact_spans") as e:
        check_forget_config(cfg)
    assert str(folder) in str(e.value)
    # the embedded benchmark marks its fact tokens: the same selection passes this check and
    # stops only at the missing influence files
    ok = _cfg(
        mini_world,
        tmp_path / "run2",
        "forget_loss=INFLUENCE+GD",
        "selection.method=oracle",
        f"influence_dir={tmp_path / 'infl'}",
    )
    with pytest.raises(ConfigError, match="scores.safetensors"):
        check_forget_config(ok)


class _Interrupt(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"stop at {self.at}")


def test_resume_follows_the_uninterrupted_trajectory(mini_world, tmp_path):
    over = ("forget_loss=NPO+GD", "num_epochs=3", "save_steps=2")
    full = tmp_path / "full"
    run_forget(_cfg(mini_world, full, *over), progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_forget(_cfg(mini_world, cut, *over), callbacks=[_Interrupt(3)], progress=False)
    assert not (cut / "result.json").exists() and (cut / "checkpoints" / "checkpoint-2").is_dir()
    with pytest.raises(ConfigError, match="resume=true"):
        run_forget(_cfg(mini_world, cut, *over), progress=False)
    res = run_forget(_cfg(mini_world, cut, *over, "resume=true"), progress=False)
    assert res["resumed_from"].endswith("checkpoint-2")
    a, b = _log(full), _log(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-6)


class _Poison(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_non_finite_loss_names_step_and_term_and_keeps_checkpoint(mini_world, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(mini_world, run, "forget_loss=NPO+GD", "num_epochs=2", "save_steps=1")
    from npo_lib.training.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"step 3: forget/NPO=nan.*checkpoint-2"):
        run_forget(cfg, callbacks=[_Poison()], progress=False)
    assert (run / "checkpoints" / "checkpoint-2").is_dir()


@pytest.mark.parametrize("lora", [0, 4])
def test_kl_reference_stays_the_model_before_unlearning(mini_world, tmp_path, lora):
    """KL(p_ref ‖ p_θ) reads a frozen reference (a copy, or the base with the adapter off): 0 at
    step 1, and after the updates it still gives the original model's logits, not the trained
    one's."""
    from transformers import AutoModelForCausalLM

    from npo_lib.commands.forget import build_trainer
    from npo_lib.training.arguments import save_trained

    cfg = _cfg(
        mini_world,
        tmp_path / "run",
        "forget_loss=NPO+KL",
        f"LoRA.r={lora}",
        "save_merged=true",
        "lr=1e-2",
    )
    res = check_forget_config(cfg)
    out = res.run_dir
    out.mkdir(parents=True)
    trainer, tok, ds = build_trainer(res)
    trainer.train()
    assert _log(out)[0]["reg/KL"] == pytest.approx(0.0, abs=1e-6) and _log(out)[-1]["reg/KL"] > 1e-4
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])["retain"]
    original = AutoModelForCausalLM.from_pretrained(mini_world["model_path"]).eval()
    with torch.no_grad():
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        before, after = original(**kw).logits, trainer.model.eval()(**kw).logits
        ref = trainer.reference_logits(trainer.model, batch)
    assert (after - before).abs().max() > 1e-3  # the model moved
    torch.testing.assert_close(ref, before, rtol=0, atol=1e-5)  # the reference did not
    save_trained(cfg, trainer, tok, out)
    if lora:
        assert (out / "adapter" / "adapter_config.json").is_file() and (
            out / "model" / "config.json"
        ).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "zero2", "zero3"])
def test_two_ranks_match_single_process_at_step_one(mini_world, tmp_path, launcher):
    """Global batch = the whole forget task: 1 rank x 4 or 2 ranks x 2 give the same step-1 loss."""
    if launcher.startswith("zero"):
        pytest.importorskip("deepspeed")
    single = tmp_path / "single"
    run_forget(
        _cfg(mini_world, single, "forget_loss=NPO", "batch_size=4", "num_epochs=2"), progress=False
    )
    multi = tmp_path / "multi"
    args = [
        f"model_path={mini_world['model_path']}",
        f"data_path={mini_world['data_path']}",
        f"save_dir={multi}",
        "split=forget10",
        "task_id=1",
        "batch_size=2",
        "num_epochs=2",
        "lr=1e-3",
        "warmup_epochs=0",
        "forget_loss=NPO",
    ]
    bindir = Path(sys.executable).parent
    if launcher == "torchrun":
        cmd = [
            str(bindir / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "npo_lib.forget",
            *args,
        ]
    else:
        args.append(f"ds_config={ROOT / f'params/ds/{launcher}.json'}")
        port = "29534" if launcher == "zero2" else "29535"
        cmd = [
            str(bindir / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            port,
            "--module",
            "npo_lib.forget",
            *args,
        ]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((multi / "result.json").read_text())
    assert res["world_size"] == 2
    assert _log(multi)[0]["loss"] == pytest.approx(_log(single)[0]["loss"], rel=1e-5)
    assert _log(multi)[-1]["loss"] == pytest.approx(_log(single)[-1]["loss"], rel=1e-3)
    shutil.rmtree(multi)


def _fact_scores(world, task: int, folder: Path) -> list[list[float]]:
    """Influence files whose scores are the ground truth: 1 on fact tokens, 0 elsewhere."""
    from transformers import AutoTokenizer

    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.influence.files import token_manifest, write_influence_files
    from npo_lib.models.families import get_family

    tags = get_family("tiny").tags
    tok = AutoTokenizer.from_pretrained(world["model_path"])
    ds = UnlearningDataset.from_files(world["data_path"], "forget10", task, tok, tags)
    rows = token_manifest(ds, "full", tok, tags)
    scores = []
    for row, rec in zip(rows, ds.forget):
        cot_len = len(rec["cot"]) + len(tags.think_end)  # target = cot + Te + answer
        spans = [(s, e) for s, e in rec["fact_spans"]["cot"]] + [
            (cot_len + s, cot_len + e) for s, e in rec["fact_spans"]["answer"]
        ]
        scores.append([float(any(a < e and s < b for s, e in spans)) for a, b in row["offsets"]])
    write_influence_files(folder, scores, rows, {"scorer": "ground-truth fact spans (test)"})
    return scores


def _forget_logit_grads(world, cfg) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|∂ loss / ∂ logits| per position (B, T-1) of one batch of the whole forget task, the token
    weights of its next-token labels (B, T-1) and its target mask (B, T-1)."""
    from npo_lib.commands.forget import build_trainer

    res = check_forget_config(cfg)
    res.run_dir.mkdir(parents=True, exist_ok=True)
    trainer, _, ds = build_trainer(res)
    model = trainer.model
    trainer.ensure_reference(
        model
    )  # its no-grad pass first, so the hook sees only the loss's forward
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    seen: list[torch.Tensor] = []

    def keep(module, inputs, logits):  # returns None: the output stays as it is
        logits.retain_grad()
        seen.append(logits)

    hook = model.lm_head.register_forward_hook(keep)
    trainer.compute_loss(model, batch).backward()
    hook.remove()
    labels = batch["full"]["labels"]  # (B, T)
    T = labels.shape[1]
    grads = seen[0].grad.abs().sum(-1)[:, : T - 1]  # logits at t predict label t + 1
    weights = trainer.token_weights[batch["index"], 1:T]
    return grads, weights, labels[:, 1:] != -100


def test_influence_trains_only_on_the_selected_tokens_and_refuses_other_data(mini_world, tmp_path):
    infl = tmp_path / "influence"
    scores = _fact_scores(mini_world, 1, infl)
    assert all(0 < sum(s) < len(s) for s in scores)  # every example has fact and other tokens
    base = (
        "forget_loss=INFLUENCE",
        f"influence_dir={infl}",
        "selection.whole_words=false",
        "beta=0.1",
    )
    facts = _cfg(
        mini_world,
        tmp_path / "facts",
        *base,
        "selection.method=threshold",
        "selection.threshold=0.5",
    )
    grads, weights, target = _forget_logit_grads(mini_world, facts)
    selected = weights > 0
    assert selected.any() and (target & ~selected).any()
    assert (grads[target & ~selected] == 0).all()  # no gradient from a token the selection left out
    assert (grads[selected] > 0).all()
    # another selection (the first token of every example): the gradient follows it
    first = _cfg(mini_world, tmp_path / "first", *base, "selection.method=top_k", "selection.k=1")
    grads2, weights2, _ = _forget_logit_grads(mini_world, first)
    assert not torch.equal(weights2 > 0, selected) and (weights2 > 0).sum(1).eq(1).all()
    assert (grads2[target & ~(weights2 > 0)] == 0).all() and (grads2[weights2 > 0] > 0).all()
    # scores made for task 1 do not fit task 2: refused, naming the folder
    with pytest.raises(ConfigError, match="do not match|cover"):
        run_forget(_cfg(mini_world, tmp_path / "run2", *base, "task_id=2"), progress=False)


def test_influence_weights_follow_the_selection(mini_world, tmp_path):
    from transformers import AutoTokenizer

    from npo_lib.data.dataset import UnlearningDataset
    from npo_lib.influence.files import load_token_weights
    from npo_lib.models.families import get_family

    infl = tmp_path / "influence"
    scores = _fact_scores(mini_world, 1, infl)
    cfg = _cfg(
        mini_world,
        tmp_path / "run",
        f"influence_dir={infl}",
        "selection.method=threshold",
        "selection.threshold=0.5",
        "selection.whole_words=false",
        "w_selected=1.0",
        "w_other=0.25",
    )
    tok = AutoTokenizer.from_pretrained(mini_world["model_path"])
    ds = UnlearningDataset.from_files(
        mini_world["data_path"], "forget10", 1, tok, get_family("tiny").tags
    )
    w = load_token_weights(cfg, infl, ds, "full")
    for i, s in enumerate(scores):
        p = ds[i]["full"]["prompt_len"]
        assert w[i, :p].sum() == 0  # prompt positions carry no weight
        assert w[i, p : p + len(s)].tolist() == [1.0 if x else 0.25 for x in s]


@pytest.mark.parametrize(
    "loss,lora", [("WGA+GD", 0), ("SatImp+KL", 4), ("UNDIAL+GD", 0), ("UNDIAL+GD", 4)]
)
def test_token_weighted_baselines_train_full_and_under_lora(mini_world, tmp_path, loss, lora):
    """UNDIAL's teacher: a frozen copy (full) or the base with the adapter off (LoRA): step 1 of
    UNDIAL is then the distillation towards the unchanged model's adjusted logits."""
    run = tmp_path / "run"
    res = run_forget(
        _cfg(mini_world, run, f"forget_loss={loss}", f"LoRA.r={lora}", "save_merged=true"),
        progress=False,
    )
    rows = _log(run)
    name = loss.split("+")[0]
    assert res["steps"] > 0 and all(math.isfinite(r[f"forget/{name}"]) for r in rows)
    assert (run / "model" / "config.json").is_file()


@pytest.mark.parametrize(
    "loss,lora,gc", [("RMU+GD", 0, True), ("RMU+ACT", 0, False), ("RMU+GD+ACT", 4, False)]
)
def test_rmu_trains_only_the_chosen_blocks_full_and_under_lora(
    mini_world, tmp_path, loss, lora, gc
):
    """RMU reads block ℓ = 0's output and trains only its mlp.down_proj (ℓ−2..ℓ clipped at 0):
    every other weight of the saved model is the original's (with gradient checkpointing too,
    where the frozen embeddings give the checkpointed blocks inputs without gradient). ACT's
    reference (the frozen copy, or the base with the adapter off) is the model itself at step 1,
    so ACT starts at 0."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    res = run_forget(
        _cfg(
            mini_world,
            run,
            f"forget_loss={loss}",
            f"LoRA.r={lora}",
            "save_merged=true",
            "lr=1e-2",
            "num_epochs=4",
            "rmu_layer=0",
            "rmu_steering_coeff=5",
            f"gradient_checkpointing={gc}",
        ),
        progress=False,
    )
    rows = _log(run)
    assert res["steps"] > 1 and all(math.isfinite(r["forget/RMU"]) for r in rows)
    assert rows[-1]["forget/RMU"] < rows[0]["forget/RMU"]  # the activations move towards c·u
    if "ACT" in loss:
        assert rows[0]["reg/ACT"] == pytest.approx(0.0, abs=1e-10) and rows[-1]["reg/ACT"] > 0
    before = load_file(str(Path(mini_world["model_path"]) / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}


def test_rmu_layer_is_checked_before_any_model_loads(mini_world, tmp_path):
    """The mini model has 2 blocks: ℓ = 1 is the last (HF returns it normed), ℓ = 0 is valid."""
    from npo_lib.commands.forget import build_trainer

    for over, match in (
        (("rmu_layer=1",), r"rmu_layer=1: .* 2 decoder blocks"),
        (("rmu_layer=0", "rmu_trainable_layers=[0,5]"), "block 5 does not exist"),
        (("rmu_layer=0", "rmu_trainable_modules=[mlp.nothing]"), "leave no parameter to train"),
    ):
        cfg = _cfg(mini_world, tmp_path / "run", "forget_loss=RMU+GD", *over)
        res = check_forget_config(cfg)
        with pytest.raises(ConfigError, match=match):
            build_trainer(res)
    with pytest.raises(ConfigError, match="rmu_trainable_layers: block -1"):
        check_forget_config(
            _cfg(mini_world, tmp_path / "run", "forget_loss=RMU+GD", "rmu_trainable_layers=[-1]")
        )


ZERO_CASES = [
    ("WGA+GD", "zero2"),
    ("UNDIAL+GD", "zero2"),
    ("RMU+GD", "zero2"),
    ("RMU+ACT", "zero3"),
]


@pytest.mark.slow
@pytest.mark.parametrize("loss,stage", ZERO_CASES)
def test_baselines_under_zero_match_single_process(mini_world, tmp_path, loss, stage):
    """2 CPU ranks x 2 examples under ZeRO-2 (RMU+ACT: ZeRO-3, its frozen copy a sharded engine of
    its own) against 1 process x 2 examples x 2 accumulated micro-batches: the same 4 examples
    in the same 2 halves, so the step-1 loss (the mean of the halves' losses; WGA, GD and UNDIAL
    are token means, which 1 x 4 would weigh differently) and the step-2 loss after one update
    agree."""
    pytest.importorskip("deepspeed")
    over = [f"forget_loss={loss}", "num_epochs=2", "rmu_layer=0", "rmu_steering_coeff=5"]
    single = tmp_path / "single"
    run_forget(_cfg(mini_world, single, *over, "gradient_accumulation_steps=2"), progress=False)
    multi = tmp_path / "multi"
    args = [
        f"model_path={mini_world['model_path']}",
        f"data_path={mini_world['data_path']}",
        f"save_dir={multi}",
        "split=forget10",
        "task_id=1",
        "batch_size=2",
        "lr=1e-3",
        "warmup_epochs=0",
        *over,
        f"ds_config={ROOT / f'params/ds/{stage}.json'}",
    ]
    bindir = Path(sys.executable).parent
    port = str(29536 + ZERO_CASES.index((loss, stage)))
    cmd = [
        str(bindir / "deepspeed"),
        "--num_gpus",
        "2",
        "--master_port",
        port,
        "--module",
        "npo_lib.forget",
        *args,
    ]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads((multi / "result.json").read_text())["world_size"] == 2
    one, two = _log(single), _log(multi)
    assert len(one) == len(two) == 2
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-3)
    shutil.rmtree(multi)
