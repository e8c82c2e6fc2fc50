"""The metric and attack registries: every view shows what they declare (titles, directions,
columns), a metric or attack declared once appears in the report, the dashboard and the study,
the listings are plain data, and the defaults below the schema are the schema's."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from npo_lib.eval import registry as R
from npo_lib.eval import robustness as RB


@pytest.fixture
def toy_metric(monkeypatch):
    """A metric declared once, for the report, the dashboard and the study."""
    m = R.Metric(
        "toy_recall",
        "toy recall",
        "{:.2f}",
        "lower",
        "a number the views must show",
        frozenset({"report", "dashboard", "study"}),
    )
    monkeypatch.setitem(R.METRICS, m.key, m)
    return m


@pytest.fixture
def toy_attack(monkeypatch):
    """An attack declared once, with one report column, probing before and after."""
    attack = RB.Attack(
        "toy_attack",
        lambda ctx: {},
        "a toy attack",
        (RB.AttackColumn("toy after", ("after", RB.RECALL)),),
        probes=True,
    )
    monkeypatch.setitem(RB.ATTACKS, attack.name, attack)
    return attack


def _run(root: Path, name: str, agg: dict, robustness: dict | None = None, **cfg) -> Path:
    d = root / name
    (d / "eval").mkdir(parents=True)
    body = {"aggregates": agg, "identity": {"role": "run"}}
    if robustness:
        body["robustness"] = robustness
    (d / "eval" / "metrics.json").write_text(json.dumps(body))
    if cfg:
        import yaml

        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def test_the_report_dashboard_and_study_show_what_the_registry_declares(tmp_path, toy_metric):
    from npo_lib.study.grid import collect, markdown
    from npo_lib.viz.dashboard import run_views, table_html
    from npo_lib.viz.report import report

    agg = {"forget_quality": 0.5, "model_utility": 0.7, "privleak": -3.0, "toy_recall": 0.25}
    runs = [_run(tmp_path, f"r{s}", agg, forget_loss="NPO+GD", lr=1e-4, seed=s) for s in range(2)]
    text, csv_path = report(runs, tmp_path / "r.csv")
    head = text.splitlines()[0]
    for m in R.metrics_for("report", [agg]):
        assert f" {m.title} {R.DIRECTIONS[m.direction].arrow} |" in head, m.key
    # a metric none of the runs holds (another benchmark's) is no column
    assert "fact recall" not in head and "VerbMem" not in head and "WMDP" not in head
    assert "| r0 | 0.5 | 0.700 |" in text and "| -3.0 | 0.25 |" in text
    assert csv_path.read_text().splitlines()[0].endswith(",privleak,toy_recall")

    page = table_html(run_views(runs))
    assert (
        '<th data-key="toy_recall" title="lower is better; a number the views must show">' in page
    )
    assert ">toy recall ↓</th>" in page and ">forget quality ↑</th>" in page
    assert ">privleak →0</th>" in page and 'data-value="0.25"' in page

    settings = collect(runs, ("forget_loss", "lr"))
    table = markdown(settings, ("forget_loss", "lr"), {}, 0.95)
    assert "toy recall ↓" in table.splitlines()[0] and "0.25 ± 0.00" in table


def test_a_new_attack_column_appears_by_declaring_it_once(tmp_path, toy_attack):
    from npo_lib.config import StudyConfig
    from npo_lib.study.readings import check_attacks
    from npo_lib.study.tables import methods_table
    from npo_lib.viz.dashboard import run_views, table_html
    from npo_lib.viz.report import report

    probe = {"before": {"fact_recall": 0.1}, "after": {"fact_recall": 0.4}}
    run = _run(tmp_path, "npo", {"forget_quality": 0.5}, {"toy_attack": probe})
    text, csv_path = report([run], tmp_path / "r.csv")
    assert "| run | toy after ↓ |\n|---|---:|\n| npo | 40.0% |" in text
    assert csv_path.read_text().splitlines()[0].endswith(",toy_attack.after.recall")
    assert ">toy after ↓</th>" in table_html(run_views([run]))

    study = StudyConfig(attacks=["toy_attack"])
    check_attacks(study)  # a probing attack the study can read
    assert "toy_attack: forget recall before -> after" in methods_table([], study)[0]
    assert RB.attack_columns(["toy_attack"])[0].key == "toy_attack.after.recall"


def test_the_study_reads_only_attacks_that_probe_before_and_after():
    from npo_lib.config import StudyConfig
    from npo_lib.errors import ReportError
    from npo_lib.study.readings import check_attacks

    with pytest.raises(
        ReportError, match="study.attacks: 'leak_at_k' has no forget probe.*relearn"
    ):
        check_attacks(StudyConfig(attacks=["relearn", "leak_at_k"]))


def test_listings_are_plain_data_of_every_registered_metric_pair_and_attack():
    metrics = R.list_metrics()
    assert [m["key"] for m in metrics] == list(R.METRICS)
    assert json.loads(json.dumps(metrics)) == metrics  # plain data
    fq = next(m for m in metrics if m["key"] == "forget_quality")
    assert fq["better"] == "higher is better" and fq["log"] and "frontier" in fq["views"]
    assert [m["key"] for m in R.list_metrics("report")][:2] == ["forget_quality", "model_utility"]
    tofu, muse, wmdp = R.list_benchmarks()
    assert (muse["headline"], wmdp["headline"]) == ("knowmem", "wmdp_mmlu")
    assert tofu["headline"] == "fq_mu"
    assert [(p["forget"], p["utility"]) for p in tofu["pairs"]] == [
        ("forget_quality", "model_utility"),
        ("forget_fact_recall", "retain_fact_recall"),
    ]
    assert tofu["pairs"][1]["forget_better"] == "lower is better"
    attacks = RB.list_attacks()
    assert [a["name"] for a in attacks] == list(RB.ATTACKS)
    relearn = attacks[0]
    assert relearn["probes"] and relearn["columns"][1]["key"] == "relearn.after.recall"
    assert json.loads(json.dumps(attacks)) == attacks


def test_a_pair_needs_a_utility_that_is_better_higher_and_keys_that_exist():
    with pytest.raises(ValueError, match="utility must be higher-better"):
        R.MetricPair("bad", "model_utility", "forget_fact_recall")
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        R.MetricPair("bad", "nope", "model_utility")
    with pytest.raises(ValueError, match="frontier view"):
        R.MetricPair("bad", "forget_rouge", "model_utility")
    with pytest.raises(ValueError, match="registered twice"):
        R.register(R.METRICS["privleak"])
    assert R.set_key("world_facts", "truth_ratio") == "world_facts_truth_ratio"
    with pytest.raises(KeyError):
        R.set_key("world_facts", "cot_rouge")  # not computed on that set


def test_defaults_below_the_schema_are_the_schemas():
    from npo_lib.config import Config
    from npo_lib.eval.generation import greedy_generate, greedy_generate_many, sample_generate
    from npo_lib.eval.scoring import score_targets
    from npo_lib.influence.preconditioners import PRECONDITIONERS
    from npo_lib.viz import render

    cfg = Config()

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    for fn in (greedy_generate, greedy_generate_many, sample_generate):
        assert default(fn, "max_new_tokens") == cfg.eval.max_new_tokens, fn.__name__
        assert default(fn, "batch_size") == cfg.eval.gen_batch_size, fn.__name__
    assert default(score_targets, "batch_size") == cfg.eval.batch_size
    for name, cls in PRECONDITIONERS.items():
        assert cls().damping == cfg.influence.damping, name
    assert default(render.clip_value, "percentile") == cfg.viz.clip_percentile
    assert default(render.power_map, "gamma") == cfg.viz.gamma
    assert default(render.render_example, "scales") == (cfg.viz.scale,)
    assert default(render.legend_html, "scale") == cfg.viz.scale
