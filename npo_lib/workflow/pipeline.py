"""``npo run PIPELINE.yaml``: prepare -> influence -> forget (each method) -> evaluation (target,
retain, each method) -> token visualisation, every step an executed notebook, then the report and
the static run dashboard (``dashboard.html``)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.embedded.paths import embedded_paths
from npo_lib.errors import ConfigError
from npo_lib.objectives.registry import parse_loss
from npo_lib.utils.io import atomic_write_json, atomic_write_text
from npo_lib.viz.dashboard import write_dashboard_html
from npo_lib.viz.report import report
from npo_lib.workflow.steps import (
    Step,
    forget_mode,
    notebook_path,
    read_spec,
    run_steps,
    spec_config,
    step_params,
)


@dataclass
class PipelineSpec:
    """``npo run`` file: shared config, the methods to compare, where the heatmaps look."""

    name: str = "demo"
    params: list[str] = field(default_factory=list)  # config params files for every step
    config: dict[str, Any] = field(default_factory=dict)  # config keys for every step
    methods: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # method -> config keys of its forget run
    visualize: str | None = (
        None  # method whose unlearned model the heatmaps compare; default: first INFLUENCE one
    )
    runs_dir: str = "runs"
    # config keys of the two fine-tuning runs (`npo finetune`, e.g. {finetune: {lr: 1e-5}}); set, the
    # pipeline first fine-tunes target and retain from model_path (a hub base) and unlearns those
    finetune: dict[str, Any] | None = None


def finetune_steps(spec: PipelineSpec, root: Path) -> tuple[list[Step], dict[str, Path]]:
    """Fine-tuning of target and retain (``finetune.ipynb``) and the model folders they save
    (``model/``; under LoRA the merged model, which needs ``save_merged=true``)."""
    over = dict(spec.finetune or {})
    cfg = spec_config(spec, over)
    if cfg.LoRA.r > 0 and not cfg.save_merged:
        raise ConfigError(
            f"pipeline '{spec.name}': finetune with LoRA needs save_merged: true (unlearning reads a merged model)"
        )
    steps, models = [], {}
    for role in ("target", "retain"):
        run = root / f"finetune-{role}"
        params = {
            **over,
            "finetune": {
                **dict(spec.config.get("finetune") or {}),
                **dict(over.get("finetune") or {}),
                "model": role,
            },
            "save_dir": str(run),
        }
        step = Step(
            f"finetune {role}",
            notebook_path("finetune"),
            step_params(spec, params),
            root / "notebooks" / f"00-finetune-{role}.ipynb",
        )
        step.runtime.update(forget_mode(step))
        steps.append(step)
        models[role] = run / "model"
    return steps, models


def pipeline_steps(spec: PipelineSpec) -> tuple[list[Step], dict[str, Path]]:
    """The steps of the main pipeline and the folders the report compares (name -> folder)."""
    if not spec.methods:
        raise ConfigError(
            f"pipeline '{spec.name}': no methods to compare (methods: {{name: {{forget_loss: ...}}}})"
        )
    root = Path(spec.runs_dir) / spec.name
    nbdir = root / "notebooks"
    infl = root / "influence"
    base = spec_config(spec)
    embedded = base.model_family == "tiny" and not base.model_path
    cfgs = {
        m: spec_config(spec, {**o, "influence_dir": str(infl)}) for m, o in spec.methods.items()
    }
    needs_influence = [
        m for m, c in cfgs.items() if "token_weights" in parse_loss(c.forget_loss).needs
    ]
    vis = spec.visualize or (needs_influence[0] if needs_influence else None)
    if vis is not None and vis not in spec.methods:
        raise ConfigError(
            f"pipeline '{spec.name}': visualize={vis} is not one of the methods ({', '.join(spec.methods)})"
        )

    steps: list[Step] = []
    up: list[Step] = []
    models: dict[str, Path] = {}  # role -> model folder the evaluations of target and retain read
    if embedded:
        prep = Step(
            "prepare", notebook_path("prepare"), step_params(spec, {}), nbdir / "01-prepare.ipynb"
        )
        steps.append(prep)
        up = [prep]
        paths = embedded_paths(base)
        models = {"target": paths.target, "retain": paths.retain}
    elif spec.finetune is not None:
        up, models = finetune_steps(spec, root)
        steps += up
        spec = dataclasses.replace(
            spec,
            config={
                **spec.config,
                "model_path": str(models["target"]),
                "retain_model_path": str(models["retain"]),
            },
        )
    influence = None
    if needs_influence:
        influence = Step(
            "influence",
            notebook_path("influence"),
            step_params(spec, {"influence_dir": str(infl)}),
            nbdir / "02-influence.ipynb",
            deps=list(up),
        )
        steps.append(influence)
    folders: dict[str, Path] = {}
    evals: list[Step] = []
    for role, model_dir in models.items():
        folders[role] = root / role
        evals.append(
            Step(
                f"evaluate {role}",
                notebook_path("evaluation"),
                step_params(
                    spec, {"eval_model_path": str(model_dir), "eval_out_dir": str(root / role)}
                ),
                nbdir / f"04-evaluation-{role}.ipynb",
                deps=list(up),
            )
        )
    forgets: dict[str, Step] = {}
    for m, over in spec.methods.items():
        run = root / m
        folders[m] = run
        deps = list(up) + ([influence] if m in needs_influence and influence else [])
        forgets[m] = Step(
            f"forget {m}",
            notebook_path("forget"),
            step_params(spec, {**over, "influence_dir": str(infl), "save_dir": str(run)}),
            nbdir / f"03-forget-{m}.ipynb",
            deps=deps,
        )
        evals.append(
            Step(
                f"evaluate {m}",
                notebook_path("evaluation"),
                step_params(
                    spec, {**over, "eval_model_path": str(run / "model"), "eval_out_dir": str(run)}
                ),
                nbdir / f"04-evaluation-{m}.ipynb",
                deps=[forgets[m]],
            )
        )
    steps += list(forgets.values()) + evals
    if vis is not None and influence is not None:
        steps.append(
            Step(
                "token visualisation",
                notebook_path("token_visualization"),
                step_params(
                    spec,
                    {
                        **spec.methods[vis],
                        "influence_dir": str(infl),
                        "unlearned_model_path": str(root / vis / "model"),
                        "heatmap_file": str(root / "heatmaps.html"),
                        "compare_runs": [str(f) for f in folders.values()],
                    },
                ),
                nbdir / "05-token_visualization.ipynb",
                deps=[influence, forgets[vis], *evals],
            )
        )
    for (
        s
    ) in forgets.values():  # a re-run replaces the stale finished run; an interrupted one resumes
        s.runtime.update(forget_mode(s))
    return steps, folders


def run_pipeline(spec_file: str | os.PathLike, *, stream: bool = True) -> dict[str, Any]:
    """``npo run``: execute the pipeline, then write and print the report table."""
    t0 = time.perf_counter()
    spec = read_spec(spec_file, PipelineSpec)
    steps, folders = pipeline_steps(spec)
    root = Path(spec.runs_dir) / spec.name
    results = run_steps(steps, stream=stream)
    summary: dict[str, Any] = {
        "name": spec.name,
        "steps": [asdict(r) for r in results],
        "ok": all(r.status != "failed" for r in results),
    }
    if summary["ok"]:
        table, csv_path = report([folders[k] for k in folders], root / "report.csv")
        atomic_write_text(root / "report.md", table + "\n")
        summary.update(report=table, report_csv=str(csv_path))
        heatmaps = root / "heatmaps.html"
        if heatmaps.is_file():
            summary["heatmaps"] = str(heatmaps.resolve())
        dashboard = write_dashboard_html(
            [folders[k] for k in folders],
            root / "dashboard.html",
            title=f"{spec.name}: run dashboard",
        )
        summary["dashboard"] = str(
            dashboard.resolve()
        )  # the report, FQ-MU plot, loss curves, heatmaps; one file
    summary["seconds"] = time.perf_counter() - t0
    atomic_write_json(root / "pipeline.json", summary)
    return summary
