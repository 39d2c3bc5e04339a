"""Contribution values and halving rewards from Python: a `[valuation]` job
on its own demo consortium (one hospital's labels shuffled), read back
from the coordinator's verified ledger."""

import csv
import math
import random

import polars as pl
import pytest

import cohort

ROUNDS = 4
INITIAL = 1_000_003  # odd, so halving and the proportional split both round
HALVING = 2


def shuffle_labels(path, seed=0):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [r["diagnosis"] for r in rows]
    random.Random(seed).shuffle(labels)
    for row, label in zip(rows, labels):
        row["diagnosis"] = label
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def valued(tmp_path_factory):
    demo = cohort.demo(
        hospitals=3,
        workdir=tmp_path_factory.mktemp("valued"),
        emission_initial=INITIAL,
        emission_halving=HALVING,
    )
    try:
        # Clients read their file for each job, so this hospital's labels
        # are noise for the job below.
        shuffle_labels(demo.hospitals["hospital-c"])
        c = demo.coordinator()
        job = c.submit(demo.job(rounds=ROUNDS, valuation={"method": "exact"}))
        view = c.wait(job, progress=False, timeout=300)
        assert view["state"] == "completed", view
        yield demo, c, job
    finally:
        demo.stop()


def test_rewards_add_up_to_each_rounds_halving_emission(valued, tmp_path):
    demo, c, job = valued
    plot = tmp_path / "rewards.svg"
    report = c.rewards(job, plot=plot)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    # The consortium's first rewarded rounds: heights 0.., emission halving
    # every HALVING of them.
    assert [r["height"] for r in rounds] == list(range(ROUNDS))
    assert [r["emission"] for r in rounds] == [INITIAL >> (h // HALVING) for h in range(ROUNDS)]
    for r in rounds:
        assert r["method"] == "exact-shapley" and r["utility_evaluations"] == 2**3
        assert sorted(h["name"] for h in r["hospitals"]) == sorted(demo.hospitals)
        # Exactly the round's emission, in whole base units.
        assert sum(h["reward"] for h in r["hospitals"]) == r["emission"]
        assert all(h["reward"] >= 0 for h in r["hospitals"])
    assert report["emitted"] == sum(r["emission"] for r in rounds)
    totals = {h["name"]: h for h in report["hospitals"]}
    assert sum(h["reward"] for h in totals.values()) == report["emitted"]
    for name, total in totals.items():
        per_round = [h for r in rounds for h in r["hospitals"] if h["name"] == name]
        assert total["reward"] == sum(h["reward"] for h in per_round)
        assert total["value"] == pytest.approx(sum(h["value"] for h in per_round))
    assert all(math.isfinite(h["value"]) for r in rounds for h in r["hospitals"])
    svg = plot.read_text()
    assert svg.startswith("<svg") and "hospital-c" in svg


def test_rewards_frame_and_metrics_columns(valued):
    _, c, job = valued
    frame = cohort.rewards_frame(c.rewards(job))
    assert frame.height == ROUNDS * 3
    assert frame["value"].null_count() == 0
    by_round = frame.group_by("round").agg(pl.col("reward").sum(), pl.col("emission").first())
    assert (by_round["reward"] == by_round["emission"]).all()
    metrics = c.metrics(job, rewards=True)
    assert metrics.height == ROUNDS * 3
    assert metrics["value"].null_count() == 0 and metrics["reward"].null_count() == 0
    assert metrics["reward"].sum() == frame["reward"].sum()


def test_rewards_of_a_job_without_valuation_or_unknown_job_raise(valued):
    demo, c, _ = valued
    plain = c.submit(demo.job(rounds=1))
    assert c.wait(plain, progress=False, timeout=300)["state"] == "completed"
    with pytest.raises(cohort.CohortError, match=f"no rewards for job {plain}"):
        c.rewards(plain)
    with pytest.raises(cohort.CohortError, match="no rewards for job nope"):
        c.rewards("nope")


def test_a_bad_emission_schedule_is_refused(tmp_path):
    with pytest.raises(cohort.CohortError, match="halving interval"):
        cohort.demo(workdir=tmp_path, emission_initial=10, emission_halving=0)
