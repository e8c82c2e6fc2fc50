"""The token tables of a run, for the heatmap page, the explorer and the score figures."""

from __future__ import annotations

from pathlib import Path

from npo_lib.commands.folders import influence_files
from npo_lib.commands.influence import INFLUENCE_VIEW, load_inputs
from npo_lib.config import Config
from npo_lib.models.loading import load_model
from npo_lib.viz.tables import TokenTable, add_score, delta_logprobs, tables_from_influence


def token_tables(
    cfg: Config,
    influence_dir: str | Path | None = None,
    unlearned_model_path: str | Path | None = None,
    *,
    progress: bool = True,
) -> list[TokenTable]:
    """Every forget example's table for a run: ``influence`` and ``weight`` (the INFLUENCE loss's
    selection under ``cfg.selection``) from the influence files, fact masks from the records, and
    ``delta_logp`` (unlearned − target model) when ``unlearned_model_path`` is given.

    ``influence_dir`` defaults to where INFLUENCE reads (``folders.influence_files(cfg)``); the
    files must match ``cfg``'s data (checked by question).
    """
    folder = Path(influence_dir) if influence_dir else influence_files(cfg)
    inputs = load_inputs(cfg, with_retain_sample=False)
    tables = tables_from_influence(
        folder,
        inputs.dataset.forget,
        tags=inputs.tags,
        view=INFLUENCE_VIEW,
        selection=cfg.selection,
        w_selected=cfg.w_selected,
        w_other=cfg.w_other,
    )
    if unlearned_model_path is not None:
        target = load_model(cfg, inputs.model_path).eval()
        unlearned = load_model(cfg, str(unlearned_model_path)).eval()
        rows = delta_logprobs(
            target,
            unlearned,
            inputs.dataset,
            INFLUENCE_VIEW,
            pad_token_id=inputs.tokenizer.pad_token_id,
            progress=progress,
        )
        add_score(tables, "delta_logp", rows)
    return tables
