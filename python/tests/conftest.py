"""One throwaway consortium (coordinator + 3 hospital clients in this
process, mutual TLS) and one short trained job shared by the tests."""

import pytest

import cohort


@pytest.fixture(scope="session")
def consortium(tmp_path_factory):
    demo = cohort.demo(hospitals=3, workdir=tmp_path_factory.mktemp("consortium"))
    yield demo
    demo.stop()


@pytest.fixture(scope="session")
def coordinator(consortium):
    return consortium.coordinator()


@pytest.fixture(scope="session")
def trained(consortium, coordinator, tmp_path_factory):
    """A completed 3-round job and its downloaded model directory."""
    job = coordinator.submit(consortium.job(rounds=3))
    view = coordinator.wait(job, progress=False, timeout=300)
    assert view["state"] == "completed", view
    model = coordinator.model(job, out=tmp_path_factory.mktemp("model"))
    return job, model
