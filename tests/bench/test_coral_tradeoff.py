"""benchmarks/coral_tradeoff.py: Deep CORAL's λ by the paper's loss-balance rule, from training
losses alone."""

from __future__ import annotations

import json
import math

import pytest

from dalib_benchmarks.coral_tradeoff import balance, choose, end_losses, main
from tests._support.toy_suite import toy_suite_text

TOY_SUITE = toy_suite_text("""
[deep]
steps = 15
batch_size = 16
""")


def test_end_losses_average_the_last_fifth_of_the_loss_lines():
    history = [{"step": i, "loss/cls": float(i), "loss/coral": 2.0 * i} for i in range(1, 11)]
    history.insert(5, {"step": 5, "source_acc": 90.0})  # an evaluation line: no losses
    cls, coral = end_losses(history)
    assert cls == pytest.approx(9.5) and coral == pytest.approx(19.0)
    with pytest.raises(ValueError, match="no loss/cls"):
        end_losses([{"step": 1, "source_acc": 90.0}])


def test_balance_is_zero_when_the_weighted_coral_term_equals_the_classification_loss():
    assert balance(10.0, 0.05, 0.005) == pytest.approx(0.0, abs=1e-12)
    assert balance(1.0, 0.05, 0.005) == pytest.approx(math.log(10))
    assert balance(100.0, 0.05, 0.005) == pytest.approx(math.log(10))  # too heavy counts as much as too light


def test_choose_takes_the_smallest_mean_balance_and_the_smaller_lambda_on_a_tie():
    rows = [{"trade_off": 1.0, "balance": 2.0}, {"trade_off": 1.0, "balance": 1.0},
            {"trade_off": 10.0, "balance": 0.1}, {"trade_off": 10.0, "balance": 0.5},
            {"trade_off": 100.0, "balance": 0.2}, {"trade_off": 100.0, "balance": 0.4}]
    assert choose(rows) == 10.0
    assert choose([{"trade_off": 3.0, "balance": 0.5}, {"trade_off": 1.0, "balance": 0.5}]) == 1.0


def test_the_script_trains_each_lambda_on_each_task_and_keeps_no_target_score(tmp_path, toy_dataset):
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE.replace("batch_size = 16", "batch_size = 16\nlog_every = 0"))  # logs nothing itself
    out = tmp_path / "results"
    assert main(["--suite", str(suite), "--grid", "1", "10", "--steps", "15", "--out", str(out)]) == 0
    payload = json.loads((out / "coral_tradeoff_toy.json").read_text())
    assert [(r["trade_off"], r["task"]) for r in payload["rows"]] == [(1.0, "src->tgt"), (10.0, "src->tgt")]
    for r in payload["rows"]:
        assert r["cls"] > 0 and r["coral"] >= 0
        assert r["ratio"] == pytest.approx(r["trade_off"] * r["coral"] / r["cls"])
    best = min(payload["rows"], key=lambda r: (r["balance"], r["trade_off"]))
    assert payload["chosen"] == best["trade_off"]
    assert "target_acc" not in json.dumps(payload)  # the runs' target scores are dropped unread
    md = (out / "coral_tradeoff_toy.md").read_text()
    assert f"λ = {payload['chosen']:g}" in md and f"--suite {suite} " in md  # the command that reproduces it


def test_the_chosen_lambda_and_every_loss_are_the_same_with_the_target_labels_dropped(tmp_path, unlabelled_dataset):
    """The rule reads training losses only: on the same suite with the target's labels removed
    (``toy-unlabelled``), every row and the choice come out the same to the last bit."""
    payloads = []
    for dataset in ("toy-shift", unlabelled_dataset):
        suite = tmp_path / f"{dataset}.toml"
        suite.write_text(TOY_SUITE.replace('dataset = "toy-shift"', f'dataset = "{dataset}"')
                         .replace('title = "toy shift"', 'title = "toy"'))
        out = tmp_path / dataset
        assert main(["--suite", str(suite), "--grid", "1", "10", "--steps", "15", "--out", str(out)]) == 0
        payload = json.loads(next(out.glob("coral_tradeoff_*.json")).read_text())
        payloads.append(([{k: v for k, v in r.items() if k != "seconds"} for r in payload["rows"]], payload["chosen"]))
    assert payloads[0] == payloads[1]
    assert len(payloads[0][0]) == 2


def test_another_seed_or_step_count_writes_beside_the_suites_file_and_the_line_says_where(tmp_path, monkeypatch,
                                                                                         toy_dataset):
    """The suite's [methods.coral] cites coral_tradeoff_SUITE.md: a run with other steps had
    replaced it; another grid still writes it (the selection is over whatever grid is given).
    The Reproduce line names the --data-root and --out that were given."""
    from dalib_benchmarks import coral_tradeoff

    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE)
    monkeypatch.setattr(coral_tradeoff, "HERE", tmp_path)
    assert main(["--suite", str(suite), "--grid", "1", "--steps", "5"]) == 0
    assert main(["--suite", str(suite), "--grid", "1", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").glob("*.md")) == ["coral_tradeoff_toy-custom.md",
                                                                          "coral_tradeoff_toy.md"]
    assert main(["--suite", str(suite), "--grid", "1", "--steps", "5", "--out", str(tmp_path / "my out")]) == 0
    assert (f"--jobs 1 --out '{tmp_path / 'my out'}'` (" in
            (tmp_path / "my out" / "coral_tradeoff_toy.md").read_text())
