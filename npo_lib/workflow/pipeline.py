"""``npo run PIPELINE.yaml``: prepare -> influence -> forget (each method) -> evaluation (target,
retain, each method) -> token visualisation, every step an executed notebook, then the report and
the static run dashboard (``dashboard.html``)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npo_lib.embedded.paths import embedded_paths
from npo_lib.errors import ConfigError
from npo_lib.objectives.registry import parse_loss
from npo_lib.utils.io import atomic_write_json, atomic_write_text
from npo_lib.viz.dashboard import write_dashboard_html
from npo_lib.viz.report import report, request_report
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
    # method -> config keys of its forget run; ``init_from: <method declared before>`` starts
    # it from that method's unlearned model (sequential requests, MUSE's sustainability)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    # method whose unlearned model the heatmaps compare; default: the first INFLUENCE one
    visualize: str | None = None
    runs_dir: str = "runs"
    # config keys of the two fine-tuning runs (`npo finetune`, e.g. {finetune: {lr: 1e-5}}); set,
    # the pipeline first fine-tunes target and retain from model_path (a hub base) and unlearns
    # those
    finetune: dict[str, Any] | None = None
    # the methods are unlearning requests k = 1..n in their order (MUSE's scalability and
    # sustainability): the pipeline also writes requests.md / .csv / .json, one row per k
    requests: bool = False


INIT_FROM = "init_from"  # a method's key naming the method whose unlearned model it starts from


def method_parents(spec: PipelineSpec) -> dict[str, str]:
    """method -> the method it starts from (``init_from``), each checked: one declared before
    it (so the methods' order is an order to run them in, and no chain loops), and no
    ``model_path`` of its own beside it."""
    parents: dict[str, str] = {}
    for i, (method, over) in enumerate(spec.methods.items()):
        parent = over.get(INIT_FROM)
        if parent is None:
            continue
        earlier = list(spec.methods)[:i]
        if parent not in earlier:
            raise ConfigError(
                f"pipeline '{spec.name}': method {method}: {INIT_FROM}={parent} is not a method "
                f"declared before it ({', '.join(earlier) or 'none'})"
            )
        if "model_path" in over:
            raise ConfigError(
                f"pipeline '{spec.name}': method {method}: give {INIT_FROM} or model_path, not both"
            )
        parents[method] = parent
    return parents


def resolve_init_from(spec: PipelineSpec) -> tuple[PipelineSpec, dict[str, str]]:
    """The spec with each ``init_from: <method>`` replaced by ``model_path`` of that method's
    unlearned model (``<runs_dir>/<name>/<method>/model``), and the chain (method -> the method
    it starts from) whose forget steps it depends on."""
    parents = method_parents(spec)
    root = Path(spec.runs_dir) / spec.name
    methods = {
        m: {k: v for k, v in over.items() if k != INIT_FROM}
        | ({"model_path": str(root / parents[m] / "model")} if m in parents else {})
        for m, over in spec.methods.items()
    }
    return dataclasses.replace(spec, methods=methods), parents


def finetune_steps(spec: PipelineSpec, root: Path) -> tuple[list[Step], dict[str, Path]]:
    """Fine-tuning of target and retain (``finetune.ipynb``) and the model folders they save
    (``model/``; under LoRA the merged model, which needs ``save_merged=true``)."""
    over = dict(spec.finetune or {})
    cfg = spec_config(spec, over)
    if cfg.LoRA.r > 0 and not cfg.save_merged:
        raise ConfigError(
            f"pipeline '{spec.name}': finetune with LoRA needs save_merged: true "
            "(unlearning reads a merged model)"
        )
    steps, models = [], {}
    for role in ("target", "retain"):
        run = root / f"finetune-{role}"
        own = {**dict(spec.config.get("finetune") or {}), **dict(over.get("finetune") or {})}
        params = {**over, "finetune": {**own, "model": role}, "save_dir": str(run)}
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


# what the forget records the influence step scores depend on: a method reading token weights
# keeps them (else the scores belong to another forget set, e.g. benchmark.muse.forget_set)
SCORED_KEYS = ("benchmark", "data_path", "split", "task_id", "max_length")


def influence_methods(spec: PipelineSpec, infl: Path) -> tuple[list[str], str | None]:
    """The methods that read token weights (they need the influence step, and unlearn the
    forget set it scores: :data:`SCORED_KEYS`) and the one the heatmaps compare
    (``visualize``, default the first of them)."""
    if not spec.methods:
        raise ConfigError(
            f"pipeline '{spec.name}': no methods to compare "
            "(methods: {name: {forget_loss: ...}})"
        )
    base, needs = spec_config(spec), []
    for m, o in spec.methods.items():
        cfg = spec_config(spec, {**o, "influence_dir": str(infl)})
        if "token_weights" not in parse_loss(cfg.forget_loss).needs:
            continue
        if changed := [k for k in SCORED_KEYS if getattr(cfg, k) != getattr(base, k)]:
            raise ConfigError(
                f"pipeline '{spec.name}': method {m} reads token weights, but sets its own "
                f"{changed[0]}: the influence step scores the forget set of the pipeline's "
                "config (set it there)"
            )
        needs.append(m)
    vis = spec.visualize or (needs[0] if needs else None)
    if vis is not None and vis not in spec.methods:
        raise ConfigError(
            f"pipeline '{spec.name}': visualize={vis} is not one of the methods "
            f"({', '.join(spec.methods)})"
        )
    return needs, vis


def model_steps(spec: PipelineSpec, root: Path) -> tuple[list[Step], dict[str, Path], PipelineSpec]:
    """The steps that make target and retain (``prepare`` on the embedded default, the two
    fine-tunings under ``finetune:``, none for given models), their folders (role -> model) and
    the spec the later steps read (pointing at the fine-tuned models)."""
    base = spec_config(spec)
    if base.model_family == "tiny" and not base.model_path:
        prep = Step(
            "prepare",
            notebook_path("prepare"),
            step_params(spec, {}),
            root / "notebooks" / "01-prepare.ipynb",
        )
        paths = embedded_paths(base)
        return [prep], {"target": paths.target, "retain": paths.retain}, spec
    if spec.finetune is None:
        return [], {}, spec
    steps, models = finetune_steps(spec, root)
    tuned = {"model_path": str(models["target"]), "retain_model_path": str(models["retain"])}
    return steps, models, dataclasses.replace(spec, config={**spec.config, **tuned})


def evaluation_step(
    spec: PipelineSpec, name: str, model: Path, out: Path, deps: list[Step], **over: Any
) -> Step:
    """``evaluation.ipynb`` of the model in ``model``, its metrics into ``out``."""
    return Step(
        f"evaluate {name}",
        notebook_path("evaluation"),
        step_params(spec, {**over, "eval_model_path": str(model), "eval_out_dir": str(out)}),
        Path(spec.runs_dir) / spec.name / "notebooks" / f"04-evaluation-{name}.ipynb",
        deps=deps,
    )


def forget_step(spec: PipelineSpec, method: str, infl: Path, deps: list[Step]) -> Step:
    """``forget.ipynb`` of one method into ``<runs_dir>/<name>/<method>``; a re-run replaces a
    stale finished run there, an interrupted one resumes (:func:`forget_mode`)."""
    run = Path(spec.runs_dir) / spec.name / method
    over = {**spec.methods[method], "influence_dir": str(infl), "save_dir": str(run)}
    step = Step(
        f"forget {method}",
        notebook_path("forget"),
        step_params(spec, over),
        run.parent / "notebooks" / f"03-forget-{method}.ipynb",
        deps=deps,
    )
    step.runtime.update(forget_mode(step))
    return step


def visualisation_step(
    spec: PipelineSpec, method: str, infl: Path, folders: dict[str, Path], deps: list[Step]
) -> Step:
    """``token_visualization.ipynb``: the heatmaps of ``method``'s unlearned model against the
    target, and the forget quality vs model utility plot of every folder the report compares."""
    root = Path(spec.runs_dir) / spec.name
    extra = {
        **spec.methods[method],
        "influence_dir": str(infl),
        "unlearned_model_path": str(root / method / "model"),
        "heatmap_file": str(root / "heatmaps.html"),
        "compare_runs": [str(f) for f in folders.values()],
    }
    return Step(
        "token visualisation",
        notebook_path("token_visualization"),
        step_params(spec, extra),
        root / "notebooks" / "05-token_visualization.ipynb",
        deps=deps,
    )


def pipeline_steps(spec: PipelineSpec) -> tuple[list[Step], dict[str, Path]]:
    """The steps of the main pipeline and the folders the report compares (name -> folder):
    target and retain (prepared or fine-tuned), influence when a method reads token weights,
    then each method's forget (after the one it starts from, ``init_from``) and every
    evaluation, and the heatmaps last."""
    root = Path(spec.runs_dir) / spec.name
    infl = root / "influence"
    spec, parents = resolve_init_from(spec)
    needs_influence, vis = influence_methods(spec, infl)
    up, models, spec = model_steps(spec, root)
    steps = list(up)
    influence = None
    if needs_influence:
        influence = Step(
            "influence",
            notebook_path("influence"),
            step_params(spec, {"influence_dir": str(infl)}),
            root / "notebooks" / "02-influence.ipynb",
            deps=list(up),
        )
        steps.append(influence)
    folders = {role: root / role for role in models}
    evals = [evaluation_step(spec, r, m, root / r, list(up)) for r, m in models.items()]
    forgets: dict[str, Step] = {}
    for m, over in spec.methods.items():
        deps = list(up) + ([influence] if m in needs_influence and influence else [])
        deps += [forgets[parents[m]]] if m in parents else []  # declared before: made already
        forgets[m] = forget_step(spec, m, infl, deps)
        run = folders[m] = root / m
        evals.append(evaluation_step(spec, m, run / "model", run, [forgets[m]], **over))
    steps += [*forgets.values(), *evals]
    if vis is not None and influence is not None:
        deps = [influence, forgets[vis], *evals]
        steps.append(visualisation_step(spec, vis, infl, folders, deps))
    if spec.requests and "target" not in models:
        raise ConfigError(
            f"pipeline '{spec.name}': requests: true compares each request with the target, "
            "which this pipeline does not make (the embedded models or a finetune block do)"
        )
    return steps, folders


def request_summary(spec: PipelineSpec, folders: dict[str, Path]) -> dict[str, Any]:
    """``requests: true``: the metrics after each request k (the methods in order, k = 0 the
    target, the retain model as reference) into ``requests.{md,csv,json}``; the summary's
    entries for them."""
    root = Path(spec.runs_dir) / spec.name
    text, files = request_report(
        folders["target"],
        [folders[m] for m in spec.methods],
        root,
        starts_from=method_parents(spec),
        reference=folders.get("retain"),
    )
    return {"requests": text, **{f"requests_{k}": str(p) for k, p in files.items()}}


def run_pipeline(spec_file: str | os.PathLike, *, stream: bool = False) -> dict[str, Any]:
    """``npo run``: execute the pipeline (one console line per step; papermill's and the
    kernels' output in each step's log, and on stderr too when ``stream``), then write the
    report table and the run dashboard."""
    t0 = time.perf_counter()
    spec = read_spec(spec_file, PipelineSpec)
    steps, folders = pipeline_steps(spec)
    root = Path(spec.runs_dir) / spec.name
    live = not stream and sys.stdout.isatty()
    results = run_steps(steps, stream=stream, live=live)
    summary: dict[str, Any] = {
        "name": spec.name,
        "steps": [asdict(r) for r in results],
        "ok": all(r.status != "failed" for r in results),
    }
    if summary["ok"]:
        runs = list(folders.values())
        table, csv_path = report(runs, root / "report.csv")
        atomic_write_text(root / "report.md", table + "\n")
        summary.update(report=table, report_md=str(root / "report.md"), report_csv=str(csv_path))
        if spec.requests:
            summary.update(request_summary(spec, folders))
        heatmaps = root / "heatmaps.html"
        if heatmaps.is_file():
            summary["heatmaps"] = str(heatmaps.resolve())
        title = f"{spec.name}: run dashboard"
        dashboard = write_dashboard_html(runs, root / "dashboard.html", title=title)
        # the report, FQ-MU plot, loss curves, heatmaps; one file
        summary["dashboard"] = str(dashboard.resolve())
    summary["seconds"] = time.perf_counter() - t0
    atomic_write_json(root / "pipeline.json", summary)
    return summary
