"""The PyTorch bridge and the ONNX export give Cohort's own predictions on
the same rows (max abs difference <= 1e-5).

torch and onnxruntime are optional for users; CI installs both and sets
COHORT_REQUIRE_TORCH=1 / COHORT_REQUIRE_ONNX=1 so that a missing one fails
rather than skips (like COHORT_REQUIRE_EVM for tests/evm.rs)."""

import os

import pytest

import cohort


def _require(module, variable):
    if os.environ.get(variable) == "1":
        return __import__(module)
    return pytest.importorskip(module, reason=f"{module} not installed (set {variable}=1 to require it)")


def test_torch_module_matches_cohorts_predictions(consortium, trained):
    torch = _require("torch", "COHORT_REQUIRE_TORCH")
    import cohort.torch

    _, model = trained
    expected = cohort.predict(model, consortium.test_file)
    net = cohort.torch.load(model)
    assert isinstance(net, torch.nn.Module)
    assert net.feature_names == expected["feature_names"]
    with torch.no_grad():
        got = net(torch.tensor(expected["features"], dtype=torch.float32))
    want = torch.tensor(expected["probabilities"], dtype=torch.float32)
    assert got.shape == want.shape and len(want) > 100
    assert float((got - want).abs().max()) <= 1e-5


def test_torch_loads_a_logistic_model(consortium, coordinator, tmp_path):
    torch = _require("torch", "COHORT_REQUIRE_TORCH")
    import cohort.torch

    job = coordinator.submit(consortium.job(rounds=1, model={"kind": "logistic"}))
    assert coordinator.wait(job, progress=False, timeout=120)["state"] == "completed"
    model = coordinator.model(job, out=tmp_path / "logistic")
    expected = cohort.predict(model, consortium.test_file)
    net = cohort.torch.load(model)
    assert len(net.layers) == 1
    with torch.no_grad():
        got = net(torch.tensor(expected["features"]))
    assert float((got - torch.tensor(expected["probabilities"])).abs().max()) <= 1e-5


def test_onnx_export_matches_cohorts_predictions(consortium, trained, tmp_path):
    ort = _require("onnxruntime", "COHORT_REQUIRE_ONNX")
    import numpy as np

    _, model = trained
    onnx_file = cohort.export_onnx(model, tmp_path / "model.onnx")
    expected = cohort.predict(model, consortium.test_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (output,) = session.run(["probability"], {"features": np.asarray(expected["features"], dtype=np.float32)})
    assert output.shape == (len(expected["probabilities"]), 1)
    diff = np.abs(output[:, 0] - np.asarray(expected["probabilities"], dtype=np.float32)).max()
    assert diff <= 1e-5, diff


def test_export_of_a_missing_model_names_it(tmp_path):
    with pytest.raises(cohort.CohortError, match="nomodel"):
        cohort.export_onnx(tmp_path / "nomodel", tmp_path / "x.onnx")
