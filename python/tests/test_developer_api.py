"""The developer API against a real coordinator: submit, follow, metrics,
models, verification, and the errors a developer meets."""

import hashlib
import json
import os
import shutil
import signal
import threading
import time

import polars as pl
import pytest

import cohort


def test_submit_wait_and_metrics_as_a_dataframe(coordinator, trained):
    job, _ = trained
    assert any(j["job_id"] == job for j in coordinator.jobs())
    status = coordinator.status(job)
    assert status["state"] == "completed" and status["rounds_completed"] == 3
    assert [r["round"] for r in status["rounds"]] == [1, 2, 3]
    # Following a job asks only for what is new.
    newer = coordinator.status(job, rounds_after=2, events_after=len(status["events"]))
    assert [r["round"] for r in newer["rounds"]] == [3] and newer["events"] == []
    assert newer["rounds_completed"] == 3
    frame = coordinator.metrics(job)
    assert isinstance(frame, pl.DataFrame)
    # One row per round and hospital.
    assert frame.height == 3 * 3
    assert sorted(frame["hospital"].unique().to_list()) == ["hospital-a", "hospital-b", "hospital-c"]
    assert frame["round"].unique().sort().to_list() == [1, 2, 3]
    assert frame["accuracy"].min() > 0.5 and frame["auc"].max() <= 1.0
    # No DP in this job: no epsilon.
    assert frame["epsilon"].null_count() == frame.height
    pandas = frame.to_pandas()
    assert len(pandas) == 9 and "loss" in pandas.columns


def test_model_is_signed_evaluates_and_is_on_the_ledger(consortium, trained, tmp_path):
    job, model = trained
    assert {"model.safetensors", "model.json", "model.sig"} <= set(os.listdir(model))
    report = cohort.verify_model(model, data_dir=consortium.data_dir, state=tmp_path / "seen.json")
    assert report["job_id"] == job and report["round"] == 3
    metrics = cohort.evaluate(model, consortium.test_file)
    assert metrics["examples"] > 100 and metrics["accuracy"] > 0.85


def test_a_tampered_model_fails_verification(consortium, trained, tmp_path):
    _, model = trained
    copy = tmp_path / "tampered"
    shutil.copytree(model, copy)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(cohort.CohortError, match="model.safetensors"):
        cohort.verify_model(copy, data_dir=consortium.data_dir, state=tmp_path / "seen.json")


def test_ledger_verifies_from_disk_and_over_the_network(consortium, coordinator, trained, tmp_path):
    job, _ = trained
    local = cohort.verify_ledger(consortium.data_dir, state=tmp_path / "a.json")
    remote = coordinator.verify_ledger(state=tmp_path / "b.json")
    assert local["entries"] >= 3 and remote["root"]
    entries = cohort.ledger_entries(consortium.data_dir, job)
    assert {e["entry"]["record"]["type"] for e in entries} >= {"job_created", "round_completed"}


def test_sealed_receipts_open_by_hand(consortium, trained):
    # The signed entry holds each hospital's receipt as a salted SHA-256
    # commitment; the openings the coordinator keeps reproduce it with
    # nothing but hashlib.
    job, _ = trained
    entries = cohort.ledger_entries(consortium.data_dir, job)
    last = max(e["index"] for e in entries if e["entry"]["record"]["type"] == "round_completed")
    signed = json.loads(cohort.inclusion_proof(consortium.data_dir, last)["leaf"])["record"]
    assert signed["updates"] == [] and "num_examples" not in json.dumps(signed)
    sealed = {p["name"]: p["commitment"] for p in signed["sealed_updates"]}
    openings = cohort.ledger_openings(consortium.data_dir, last)
    assert sorted(o["name"] for o in openings) == sorted(sealed) and len(sealed) >= 2
    for o in openings:
        salt = bytes.fromhex(o["salt"])
        digest = hashlib.sha256(b"cohort/ledger/sealed/v1\0" + salt + o["body"].encode()).hexdigest()
        assert digest == sealed[o["name"]]
        assert json.loads(o["body"])["client"] == o["name"]
    with pytest.raises(cohort.CohortError, match="no entry 1000000"):
        cohort.ledger_openings(consortium.data_dir, 1_000_000)


def test_wrong_url_and_a_coordinator_that_is_down_raise():
    with pytest.raises(cohort.CohortError, match="cannot reach the coordinator at http://127.0.0.1:9"):
        cohort.Coordinator("http://127.0.0.1:9")
    with pytest.raises(cohort.CohortError, match="not-a-url"):
        cohort.Coordinator("not-a-url")


def test_missing_kit_names_the_directory(tmp_path):
    with pytest.raises(cohort.CohortError, match="nokit"):
        cohort.Coordinator("https://127.0.0.1:7070", tls=tmp_path / "nokit")


def test_a_job_dict_with_a_typo_names_the_key(consortium, coordinator):
    job = consortium.job()
    job["training"]["roundz"] = 3
    with pytest.raises(cohort.CohortError, match="roundz"):
        coordinator.submit(job)
    before = len(coordinator.jobs())
    job = consortium.job(model={"kind": "transformer"})
    with pytest.raises(cohort.CohortError, match="transformer"):
        coordinator.submit(job)
    assert len(coordinator.jobs()) == before


def test_unknown_job_gives_the_coordinators_message(coordinator):
    with pytest.raises(cohort.CohortError, match="no-such-job"):
        coordinator.status("no-such-job")


def test_a_revoked_kit_is_refused_with_the_reason(consortium, tmp_path):
    kit = tmp_path / "dev-2"
    cohort.ca_issue(consortium.ca, "developer", "dev-2", kit)
    c = cohort.Coordinator(consortium.url, tls=kit)
    c.jobs()
    revoked = cohort.ca_revoke(consortium.ca, "dev-2")
    assert [r["name"] for r in revoked["revoked"]] == ["dev-2"]
    deadline = time.monotonic() + 30
    while True:
        try:
            c.jobs()
        except cohort.CohortError as e:
            assert "revoked" in str(e), e
            break
        assert time.monotonic() < deadline, "the revoked kit still works after 30 s"
        time.sleep(0.5)
    with pytest.raises(cohort.CohortError):
        cohort.Coordinator(consortium.url, tls=kit).jobs()


def test_ctrl_c_during_wait_leaves_the_job_running(tmp_path):
    # Its own consortium, so the long job slows no other test.
    with cohort.demo(hospitals=2, workdir=tmp_path) as consortium:
        _interrupt_a_wait(consortium, consortium.coordinator())


def _interrupt_a_wait(consortium, coordinator):
    job = coordinator.submit(consortium.job(rounds=400))
    # A shell that starts a job in the background (`cmd &`, as some CI
    # runners do) makes it ignore SIGINT, and Python then never raises
    # KeyboardInterrupt; at a terminal, where Ctrl-C comes from, it does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            coordinator.wait(job, progress=False)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    status = coordinator.status(job)
    assert status["state"] in ("pending", "running"), status
    # It keeps training without anyone waiting.
    deadline = time.monotonic() + 60
    while coordinator.status(job)["rounds_completed"] <= status["rounds_completed"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_metrics_carry_each_hospitals_epsilon_under_dp(consortium, coordinator):
    job = consortium.job(
        rounds=2,
        model={"kind": "logistic"},
        training={"local_epochs": 1, "batch_size": 96},
        privacy={"dp": {"level": "record", "target_epsilon": 2.0, "accountant": "rdp"}},
    )
    # The statistics given publicly (from the developer's own data): the
    # hospitals spend their whole epsilon on training.
    job["preprocessing"] = consortium.reference_preprocessing(job)
    assert set(job["preprocessing"]["numeric"]) >= {"radius_mean", "area_worst"}
    job_id = coordinator.submit(job)
    assert coordinator.wait(job_id, progress=False, timeout=120)["state"] == "completed"
    frame = coordinator.metrics(job_id)
    assert frame["epsilon"].null_count() == 0
    last = frame.filter(pl.col("round") == 2)
    assert last.height == 3
    # Each hospital spends up to its target by the last round, never more.
    assert all(0.0 < eps <= 2.0 + 1e-9 for eps in last["epsilon"].to_list())
    for name, budget in consortium.budgets().items():
        line = next(j for j in budget["jobs"] if j["job_id"] == job_id)
        assert line["statistics_passes"] == 0, (name, line)


def test_a_splitfed_job_sums_the_hospitals_parts_securely(consortium, coordinator):
    # The demo job's MLP cut after its first hidden layer: the hospitals
    # train the bottom against the coordinator's top, and their bottoms are
    # summed under SecAgg+ (only the sum reaches the coordinator).
    job = consortium.job(
        rounds=2,
        training={"mode": "splitfed"},
        privacy={"aggregation": "secagg"},
    )
    job_id = coordinator.submit(job)
    view = coordinator.wait(job_id, progress=False, timeout=300)
    assert view["state"] == "completed", view
    summed = [
        e["message"]
        for e in view["events"]
        if "parts summed under secure aggregation" in e["message"]
    ]
    assert len(summed) == 2, view["events"]
    # No receipt carries a hospital's example count: it travels masked.
    for round_ in view["rounds"]:
        assert all(u["num_examples"] == 0 for u in round_["updates"])
