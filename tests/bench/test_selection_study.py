"""benchmarks/selection_study.py: how well each selection criterion picks, judged by the
target labels the criteria themselves never read."""

from __future__ import annotations

import json

import pytest

from dalib_benchmarks.selection_study import judge, main


def _row(task, method, acc, **scores):
    base = {"dev_risk": 0.5, "iw_risk": 0.5, "holdout_error": 0.5, "entropy": 1.0, "snd": 1.0}
    return {"task": task, "method": method, "target_accuracy": acc, "selection": base | scores}


def test_each_criterion_picks_its_best_score_and_its_regret_is_the_oracles_minus_its_pick():
    rows = [_row("a->b", "x", 90.0, dev_risk=0.3, snd=1.0, entropy=0.2),
            _row("a->b", "y", 70.0, dev_risk=0.1, snd=3.0, entropy=0.1),
            _row("a->b", "z", 60.0, dev_risk=0.2, snd=2.0, entropy=0.3)]
    v = judge(rows)
    assert v["dev"]["tasks"]["a->b"]["pick"] == "y" and v["dev"]["mean_regret"] == pytest.approx(20.0)
    assert v["snd"]["tasks"]["a->b"]["pick"] == "y"  # higher is better
    t = v["dev"]["tasks"]["a->b"]
    assert (t["oracle_accuracy"], t["worst_accuracy"]) == (90.0, 60.0)
    # dev orders them y, z, x; the accuracy x, y, z: ranks (3, 1, 2) against (1, 2, 3)
    assert t["spearman"] == pytest.approx(-0.5)
    # entropy orders y, x, z: ranks (2, 1, 3) against (1, 2, 3)
    assert v["entropy"]["tasks"]["a->b"]["spearman"] == pytest.approx(0.5)
    assert v["iwv"]["tasks"]["a->b"]["spearman"] is None  # every candidate scored the same: no order


def test_a_tie_for_the_best_score_chooses_none_as_dalib_select_does():
    # the study had taken the first of the tied candidates, so the order they were listed in
    # decided its regret (22.10 or 1.70 for the held-out error on the digits)
    rows = [_row("a->b", "x", 50.0, holdout_error=0.1), _row("a->b", "y", 90.0, holdout_error=0.1),
            _row("a->b", "z", 95.0, holdout_error=0.3), _row("b->a", "x", 80.0, holdout_error=0.2),
            _row("b->a", "y", 70.0, holdout_error=0.3), _row("b->a", "z", 60.0, holdout_error=0.4)]
    v = judge(rows)["holdout"]
    tie = v["tasks"]["a->b"]
    assert tie["pick"] is None and tie["regret"] is None and tie["tied"] == {"x": 50.0, "y": 90.0}
    assert tie["regret_range"] == [5.0, 45.0] and v["tasks"]["b->a"]["pick"] == "x"
    assert v["mean_regret"] is None and v["mean_regret_range"] == [2.5, 22.5]
    assert judge(rows[::-1])["holdout"]["mean_regret_range"] == [2.5, 22.5]  # whatever the order


def test_a_tiny_study_writes_its_table(tmp_path):
    assert main(["--steps", "3", "--methods", "source_only", "dann", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "selection_study.json").read_text())
    assert len(data["rows"]) == 4 and set(data["verdict"]) == {"dev", "iwv", "holdout", "entropy", "snd"}
    text = (tmp_path / "selection_study.md").read_text()
    assert "| oracle (target labels) |" in text and "Reproduce: `python benchmarks/selection_study.py --steps 3" in text
    header = next(line for line in text.splitlines() if line.startswith("| criterion"))
    assert all(line.count("|") == header.count("|") for line in text.splitlines()
               if line.startswith("| `") and "`:" in line or line.startswith("| oracle") or line.startswith("| worst"))


def test_a_narrowed_study_writes_beside_the_published_table_and_a_bad_method_is_refused_first(tmp_path, monkeypatch,
                                                                                                capsys):
    """Run with other options than the published run's and no --out, the study had replaced
    results/selection_study.* (the table docs/selection.md quotes); a method that does not
    exist was a traceback after the candidates before it had trained."""
    from dalib_benchmarks import selection_study

    monkeypatch.setattr(selection_study, "HERE", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--steps", "2", "--methods", "source_only", "nosuch"])
    assert exit_.value.code == 2 and "--methods: invalid choice: 'nosuch'" in capsys.readouterr().err
    assert main(["--steps", "2", "--methods", "source_only", "dann"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["selection_study-custom.json",
                                                                        "selection_study-custom.md"]
    assert "options other than the published run's (--methods, --steps)" in capsys.readouterr().out
