"""kronfluence's token-wise pairwise scores, for comparison with the differential scorer.

Optional: needs ``pip install kronfluence`` (Grosse et al. 2023, arXiv:2308.03296; tested with
1.0.1). This is a different quantity from s_it = vᵀ ∇ℓ_it: kronfluence splits a training
sequence's gradient Σ_p δ_p a_pᵀ by position p, so position p's share carries the losses of
every later token that attends to it. We report, for target token j at label position q_j, the
share of position q_j − 1 (the position whose output predicts token j), of the score

    S_i,p = mean_{q ∈ forget} f_q − λ mean_{q ∈ retain} f_q,   f_q = ∇L_qᵀ P⁻¹ (δ_p a_pᵀ)_i,

with kronfluence's own EK-FAC factors fitted on forget ∪ retain (empirical Fisher) and its
heuristic damping (0.1 x mean eigenvalue). L_q = mean token NLL of query q, as in the direction.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from npo_lib.config import InfluenceConfig
from npo_lib.data.dataset import ViewCollator
from npo_lib.data.views import IGNORE_INDEX
from npo_lib.influence.modules import tracked_modules


class _Examples(Dataset):
    def __init__(self, examples: Sequence[Any]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Any:
        return self.examples[i]


def _nll(batch: dict[str, Tensor], model: nn.Module, sample: bool = False) -> tuple[Tensor, Tensor]:
    """Token NLL ``(B, T-1)`` and target mask; ``sample`` draws labels from the model (true
    Fisher)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    if sample:
        with torch.no_grad():
            # (B, T)
            drawn = torch.distributions.Categorical(logits=logits.detach().float()).sample()
        labels = torch.where(labels[:, 1:] != IGNORE_INDEX, drawn[:, :-1], IGNORE_INDEX)
        labels = torch.cat([batch["labels"][:, :1], labels], 1)
    pred, target = logits[:, :-1], labels[:, 1:]
    nll = nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(target.shape)
    return nll, (target != IGNORE_INDEX).to(nll.dtype)


def _task(module_names: list[str]):
    from kronfluence.task import Task

    class UnlearningTask(Task):
        """Train loss Σ_t ℓ_t per sequence (split by position); measurement L_q = mean_t ℓ_qt."""

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
            nll, _ = _nll(batch, model, sample)
            return nll.sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
            nll, mask = _nll(batch, model)
            return (nll.sum(1) / mask.sum(1).clamp_min(1)).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return module_names

        def get_attention_mask(self, batch: Any) -> Tensor:
            return batch["attention_mask"]

    return UnlearningTask()


def kronfluence_token_scores(
    model: nn.Module,
    forget: Sequence[Any],
    retain: Sequence[Any],
    cfg: InfluenceConfig,
    *,
    pad_token_id: int,
    progress: bool = False,
) -> tuple[list[Tensor], dict[str, Any]]:
    """Rows of kronfluence's per-token pairwise scores at the forget examples' target tokens, and
    what to record about them."""
    from kronfluence.analyzer import prepare_model

    c = cfg
    dtype = next(model.parameters()).dtype
    cpu = next(model.parameters()).device.type == "cpu"
    names = list(tracked_modules(model, c.modules, c.last_n_layers))
    task = _task(names)
    model = prepare_model(copy.deepcopy(model).eval(), task)  # kronfluence wraps layers in place
    forget, retain = list(forget), list(retain)
    scores = _pairwise_token_scores(
        model,
        task,
        forget,
        retain,
        c.batch_size,
        dtype=dtype,
        cpu=cpu,
        pad_token_id=pad_token_id,
        progress=progress,
    )
    info = {
        "tracked_modules": len(names),
        "kronfluence_damping": "heuristic: 0.1 x mean eigenvalue",
        "kronfluence_position": "target token j <- position of label j minus 1",
    }
    return _forget_rows(scores, forget, retain, c.lam), info


def _factor_and_score_arguments(dtype: torch.dtype) -> tuple[Any, Any]:
    """kronfluence's EK-FAC factor arguments (empirical Fisher) and per-token score arguments
    (heuristic damping), every dtype the model's."""
    from kronfluence.arguments import FactorArguments, ScoreArguments

    factor_args = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=True,
        activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype,
        per_sample_gradient_dtype=dtype,
        lambda_dtype=dtype,
    )
    score_args = ScoreArguments(
        damping_factor=None,
        compute_per_token_scores=True,
        score_dtype=dtype,
        per_sample_gradient_dtype=dtype,
        precondition_dtype=dtype,
    )
    return factor_args, score_args


def _pairwise_token_scores(
    model: nn.Module,
    task: Any,
    forget: list[Any],
    retain: list[Any],
    batch_size: int,
    *,
    dtype: torch.dtype,
    cpu: bool,
    pad_token_id: int,
    progress: bool,
) -> Tensor:
    """Per-token pairwise scores ``(Q, N, T)`` of the queries forget + retain against the
    forget examples, with EK-FAC factors fitted on forget ∪ retain, as CPU float64."""
    from kronfluence.analyzer import Analyzer
    from kronfluence.utils.dataset import DataLoaderKwargs

    factor_args, score_args = _factor_and_score_arguments(dtype)
    t_max = max(len(e["input_ids"]) for e in [*forget, *retain])
    # one padded length for every batch, so per-token score rows line up
    loader = DataLoaderKwargs(collate_fn=ViewCollator(pad_token_id, pad_to_multiple_of=t_max).pad)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        # its torch.cuda.amp use
        warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
        analyzer = Analyzer("npo", model, task, cpu=cpu, disable_tqdm=not progress, output_dir=out)
        analyzer.fit_all_factors(
            "ekfac",
            _Examples(forget + retain),
            per_device_batch_size=batch_size,
            factor_args=factor_args,
            dataloader_kwargs=loader,
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "tokens",
            "ekfac",
            _Examples(forget + retain),
            _Examples(forget),
            per_device_query_batch_size=batch_size,
            per_device_train_batch_size=batch_size,
            score_args=score_args,
            dataloader_kwargs=loader,
            overwrite_output_dir=True,
        )
        return analyzer.load_pairwise_scores("tokens")["all_modules"].double().cpu()


def _forget_rows(scores: Tensor, forget: list[Any], retain: list[Any], lam: float) -> list[Tensor]:
    """S = mean over forget queries − λ mean over retain queries ``(N, T)``, then per forget
    example its target tokens' shares, read at position q_j − 1 for the label at q_j."""
    n_f = len(forget)
    weights = torch.tensor(
        [1 / n_f] * n_f + [-lam / max(len(retain), 1)] * len(retain), dtype=torch.float64
    )
    combined = torch.einsum("q,qnt->nt", weights, scores)  # (N, T)
    rows = []
    for i, ex in enumerate(forget):
        p, n = ex["prompt_len"], sum(t != IGNORE_INDEX for t in ex["labels"])
        rows.append(combined[i, p - 1 : p - 1 + n].clone())
    return rows
