"""Cohort for model developers: submit federated jobs to a coordinator,
follow them, and get their metrics and signed models, from Python.

    import cohort
    with cohort.demo() as consortium:           # a throwaway local consortium
        c = consortium.coordinator()
        job = c.submit(consortium.job(rounds=5))
        c.wait(job)
        c.metrics(job)                          # polars DataFrame

Every call goes through the same Rust library as the ``cohort`` CLI. A
failure raises :class:`CohortError` with the reason (the coordinator's
message when it refused).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from . import _native
from ._native import CohortError

__all__ = [
    "CohortError",
    "Coordinator",
    "Demo",
    "demo",
    "evaluate",
    "reference_preprocessing",
    "predict",
    "verify_model",
    "verify_ledger",
    "ledger_entries",
    "rewards_frame",
    "plot_rewards",
    "inclusion_proof",
    "ledger_openings",
    "export_onnx",
    "demo_job",
    "ca_issue",
    "ca_revoke",
    "budget",
    "coordinator_key",
    "bench_secagg",
    "bench_he",
]
__version__ = _native.__version__

PathLike = Union[str, "os.PathLike[str]"]
Job = Union[str, PathLike, Mapping[str, Any]]


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _job_toml(job: Job) -> str:
    """Job-file TOML from a dict, TOML text, or a path to a job file."""
    if isinstance(job, Mapping):
        return _native.job_toml_from_json(json.dumps(job))
    if isinstance(job, os.PathLike) or (isinstance(job, str) and "\n" not in job and job.endswith(".toml")):
        path = Path(os.fspath(job))
        try:
            text = path.read_text()
        except OSError as e:
            raise CohortError(f"reading {path}: {e.strerror}") from None
    elif isinstance(job, str):
        text = job
    else:
        raise TypeError(f"a job is a dict, TOML text or a path to a .toml file, not {type(job).__name__}")
    _native.validate_job(text)
    return text


class Coordinator:
    """A coordinator, reached as a developer.

    ``tls`` is the developer's startup kit directory (``cohort ca issue
    --role developer``); ``None`` speaks plaintext to a coordinator started
    with ``--insecure`` (a laptop or a test). Connecting happens here: a
    wrong URL or a coordinator that is down raises :class:`CohortError`.
    """

    def __init__(self, url: str, tls: Optional[PathLike] = None) -> None:
        self._native = _native.Coordinator(url, _path(tls))
        self.url = url
        self.tls = _path(tls)

    def __repr__(self) -> str:
        return f"Coordinator({self.url!r}, tls={self.tls!r})"

    def submit(self, job: Job) -> str:
        """Submits a job (a dict shaped like a job file, TOML text, or a path
        to a ``.toml`` file) and returns its id. A misspelt key is refused by
        name before anything is sent."""
        return self._native.submit(_job_toml(job))

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job the coordinator knows, newest last."""
        return json.loads(self._native.jobs())

    def status(self, job: str, rounds_after: int = 0, events_after: int = 0) -> Dict[str, Any]:
        """A job's state, rounds, update receipts and events; with
        ``rounds_after`` / ``events_after``, only the rounds after that round
        and the events after that many (what a caller following the job has
        not seen yet)."""
        return json.loads(self._native.status(job, rounds_after, events_after))

    def wait(self, job: str, progress: bool = True, poll: float = 0.5, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Follows a job until it completes or fails and returns its status.

        With ``progress``, prints a line per completed round. Ctrl-C (or a
        ``timeout`` in seconds) stops waiting and leaves the job running on
        the coordinator."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = -1
        # Polls ask only for rounds not seen yet (and no events), so that
        # following a long job with many hospitals stays cheap; the
        # finished job is read whole once.
        last_round, no_events = 0, 2**32 - 1
        while True:
            view = self.status(job, last_round, no_events)
            if view["rounds"]:
                last_round = view["rounds"][-1]["round"]
            if progress and view["rounds_completed"] != shown:
                shown = view["rounds_completed"]
                print(_progress_line(view), file=sys.stderr, flush=True)
            if view["state"] in ("completed", "failed"):
                view = self.status(job)
                if progress and view.get("error"):
                    print(f"job {job} failed: {view['error']}", file=sys.stderr, flush=True)
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job} is still {view['state']} after {timeout} s; it keeps running")
            time.sleep(poll)

    def metrics(self, job: str, rewards: bool = False) -> "polars.DataFrame":  # noqa: F821
        """One row per round and hospital: the round's federated evaluation
        (loss, accuracy, auc over every hospital's validation rows), the
        round's timing, and what the hospital contributed: its training
        examples and, under DP, the ε it had spent by then. Validation
        metrics are released only as that aggregate (docs/JOBS.md), so they
        repeat across a round's rows. ``.to_pandas()`` converts it.

        With ``rewards`` (a job with ``[valuation]``), adds each hospital's
        ``value`` and ``reward`` in that round, read from the verified ledger
        (:meth:`rewards`); rounds not yet paid have nulls there."""
        frame = metrics_frame(self.status(job))
        if not rewards:
            return frame
        paid = rewards_frame(self.rewards(job)).select("round", "hospital", "value", "reward")
        return frame.join(paid, on=["round", "hospital"], how="left")

    def rewards(self, job: Optional[str] = None, plot: Optional[PathLike] = None) -> Dict[str, Any]:
        """Contribution values and halving rewards of ``[valuation]`` jobs
        (all, or ``job``'s), read from the coordinator's ledger after its
        signatures and Merkle root check out, exactly as ``cohort rewards
        show --json`` prints them: ``emitted`` (base units), per-hospital
        totals in ``hospitals``, and ``rounds`` (height, emission, method,
        each hospital's value, cumulative value and reward). ``plot`` also
        writes the per-round values and rewards as SVG. A job without paid
        rounds raises :class:`CohortError`. :func:`rewards_frame` makes it a
        DataFrame."""
        return json.loads(self._native.rewards(job, _path(plot)))

    def model(self, job: str, out: Optional[PathLike] = None, round: Optional[int] = None) -> Path:
        """Downloads the job's model (latest round, or ``round``) with its
        signature into ``out`` (a new temporary directory by default) and
        returns the directory: model.safetensors, model.json, model.sig."""
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="cohort-model-"))
        info = json.loads(self._native.model(job, os.fspath(out), round))
        return Path(info["dir"])

    def verify_ledger(self, state: Optional[PathLike] = None) -> Dict[str, Any]:
        """Downloads the coordinator's ledger and checks every signature and
        the Merkle root against its signed checkpoint (and that it extends
        the checkpoint seen last time, remembered in ``state``)."""
        return json.loads(self._native.verify_ledger(_path(state)))


def _progress_line(view: Mapping[str, Any]) -> str:
    line = f"job {view['job_id']}: {view['state']}, round {view['rounds_completed']}/{view['rounds_total']}"
    rounds = view.get("rounds") or []
    if rounds and rounds[-1].get("metrics"):
        m = rounds[-1]["metrics"]
        line += f"  loss {m['loss']:.4f}  acc {m['accuracy']:.3f}  auc {m['auc']:.3f}"
    return line


_METRIC_KEYS = ("loss", "accuracy", "auc", "examples")


def metrics_frame(view: Mapping[str, Any]) -> "polars.DataFrame":  # noqa: F821
    """The DataFrame of :meth:`Coordinator.metrics` from a status dict."""
    import polars as pl

    rows = []
    for r in view.get("rounds") or []:
        m = r.get("metrics") or {}
        base = {
            "job_id": view["job_id"],
            "round": r["round"],
            "loss": m.get("loss"),
            "accuracy": m.get("accuracy"),
            "auc": m.get("auc"),
            "eval_examples": m.get("examples"),
            "train_loss": r.get("train_loss"),
            "round_secs": r.get("duration_secs"),
            "slowest_fit_secs": r.get("slowest_fit_secs"),
        }
        updates = r.get("updates") or []
        if not updates:
            rows.append({**base, "hospital": None, "hospital_examples": None, "epsilon": None})
        for u in updates:
            eps = u.get("dp_epsilon")
            rows.append(
                {
                    **base,
                    "hospital": u["client"],
                    "hospital_examples": u.get("num_examples"),
                    "epsilon": float(eps) if eps not in (None, "") else None,
                }
            )
    schema = {
        "job_id": pl.Utf8,
        "round": pl.UInt32,
        "hospital": pl.Utf8,
        "hospital_examples": pl.UInt64,
        "epsilon": pl.Float64,
        "loss": pl.Float64,
        "accuracy": pl.Float64,
        "auc": pl.Float64,
        "eval_examples": pl.UInt64,
        "train_loss": pl.Float64,
        "round_secs": pl.Float64,
        "slowest_fit_secs": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def rewards_frame(report: Mapping[str, Any]) -> "polars.DataFrame":  # noqa: F821
    """One row per paid round and hospital from :meth:`Coordinator.rewards`:
    ``job_id``, ``round``, ``height`` (the consortium's rewarded-round
    counter the halving schedule runs on), ``emission``, ``method``,
    ``hospital``, ``value``, ``cumulative_value``, ``reward`` (base units)."""
    import polars as pl

    rows = [
        {
            "job_id": r["job_id"],
            "round": r["round"],
            "height": r["height"],
            "emission": r["emission"],
            "method": r["method"],
            "hospital": h["name"],
            "value": h["value"],
            "cumulative_value": h["cumulative_value"],
            "reward": h["reward"],
        }
        for r in report.get("rounds") or []
        for h in r["hospitals"]
    ]
    schema = {
        "job_id": pl.Utf8,
        "round": pl.UInt32,
        "height": pl.UInt64,
        "emission": pl.UInt64,
        "method": pl.Utf8,
        "hospital": pl.Utf8,
        "value": pl.Float64,
        "cumulative_value": pl.Float64,
        "reward": pl.UInt64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def plot_rewards(report: Mapping[str, Any], axes: Any = None) -> Any:
    """Matplotlib figure of :meth:`Coordinator.rewards`: each hospital's
    value per round, reward per round and cumulative reward, one line per
    hospital (rounds in payout order). Draws into ``axes`` (three Axes) when
    given; returns the figure."""
    import matplotlib.pyplot as plt

    import polars as pl

    frame = rewards_frame(report)
    order = frame.select("job_id", "round").unique(maintain_order=True).with_row_index("paid")
    frame = frame.join(order, on=["job_id", "round"]).sort("paid").with_columns(
        pl.col("reward").cum_sum().over("hospital").alias("cumulative_reward")
    )
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    else:
        fig = axes[0].figure
    for name in sorted(frame["hospital"].unique().to_list()):
        rows = frame.filter(pl.col("hospital") == name)
        x = (rows["paid"] + 1).to_list()
        for ax, column in zip(axes, ("value", "reward", "cumulative_reward")):
            ax.plot(x, rows[column].to_list(), marker="o", label=name)
    for ax, title in zip(axes, ("value per round", "reward per round (base units)", "cumulative reward (base units)")):
        ax.set_title(title)
        ax.set_xlabel("paid round")
    axes[0].axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0].legend()
    fig.tight_layout()
    return fig


def reference_preprocessing(data: PathLike, job: Job) -> Dict[str, Any]:
    """A job's ``preprocessing`` section (every column's mean, standard
    deviation and fill) computed from reference data the developer may
    publish: its own cohort or a public one, never a hospital's. With it in
    the job no hospital computes or releases statistics, so a job under
    differential privacy spends nothing of their budgets on them:
    ``job["preprocessing"] = cohort.reference_preprocessing("ref.csv", job)``."""
    return json.loads(_native.reference_preprocessing(os.fspath(data), _job_toml(job)))["preprocessing"]


def evaluate(model: PathLike, data: PathLike) -> Dict[str, Any]:
    """Metrics of a downloaded model on a labelled CSV or Parquet file,
    preprocessed exactly as in training."""
    return json.loads(_native.evaluate(os.fspath(model), os.fspath(data)))


def predict(model: PathLike, data: PathLike) -> Dict[str, Any]:
    """Cohort's own predictions on a labelled file: ``features`` (the
    preprocessed rows the network sees, in ``feature_names`` order),
    ``probabilities`` and ``labels``."""
    return json.loads(_native.predict(os.fspath(model), os.fspath(data)))


def verify_model(
    model: PathLike,
    public_key: Optional[PathLike] = None,
    data_dir: Optional[PathLike] = None,
    state: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Checks a downloaded model's files against its signature and the
    signature against the coordinator's key (``public_key`` PEM, or the key
    the ledger in ``data_dir`` publishes; then the ledger must record this
    model too). Raises :class:`CohortError` on any mismatch."""
    return json.loads(_native.verify_model(os.fspath(model), _path(public_key), _path(data_dir), _path(state)))


def verify_ledger(data_dir: PathLike, state: Optional[PathLike] = None) -> Dict[str, Any]:
    """Checks the ledger in a coordinator's data directory (read-only)."""
    return json.loads(_native.verify_ledger(os.fspath(data_dir), _path(state)))


def ledger_entries(data_dir: PathLike, job: Optional[str] = None) -> List[Dict[str, Any]]:
    """The ledger's entries (``index``, ``entry``), optionally one job's."""
    return json.loads(_native.ledger_entries(os.fspath(data_dir), job))


def inclusion_proof(data_dir: PathLike, index: int) -> Dict[str, Any]:
    """Entry ``index``'s RFC 9162 inclusion proof, in hex."""
    return json.loads(_native.inclusion_proof(os.fspath(data_dir), index))


def ledger_openings(data_dir: PathLike, index: int) -> List[Dict[str, Any]]:
    """The openings (``name``, ``salt``, ``body``) the coordinator keeps for
    entry ``index``'s sealed parts: each hospital's enrolment counts or
    update receipt. ``sha256(b"cohort/ledger/sealed/v1\\0" + salt + body)``
    equals the commitment the signed entry holds under that hospital's
    name."""
    return json.loads(_native.ledger_openings(os.fspath(data_dir), index))


def export_onnx(model: PathLike, out: PathLike) -> Path:
    """Writes a downloaded model as ONNX (input ``features``: preprocessed
    rows; output ``probability``), like ``cohort model export --format onnx``."""
    _native.export_onnx(os.fspath(model), os.fspath(out))
    return Path(out)


def ca_issue(ca: PathLike, role: str, name: str, out: PathLike, days: int = 365) -> Dict[str, Any]:
    """Issues a startup kit (``role``: hospital, developer, validator or
    coordinator) from the CA directory ``ca`` into ``out``, like ``cohort ca issue``."""
    return json.loads(_native.ca_issue(os.fspath(ca), role, name, os.fspath(out), days))


def ca_revoke(ca: PathLike, name: str) -> Dict[str, Any]:
    """Revokes every certificate of member ``name`` and republishes the CA's
    crl.pem, like ``cohort ca revoke``; a coordinator watching it refuses the
    member within seconds."""
    return json.loads(_native.ca_revoke(os.fspath(ca), name))


def budget(client_dir: PathLike) -> Dict[str, Any]:
    """A hospital client's privacy budget report from its data directory,
    like ``cohort client budget``."""
    return json.loads(_native.budget(os.fspath(client_dir)))


def coordinator_key(data_dir: PathLike) -> str:
    """The PEM public key that signs a coordinator's ledger and models."""
    return _native.coordinator_key(os.fspath(data_dir))


def bench_secagg(clients: int, entries: int, dropout: float = 0.0, neighbours: int = 8, threshold: float = 0.66, bits: int = 32) -> Dict[str, Any]:
    """One SecAgg+ round with every party in this process, like ``cohort
    bench secagg``: client and server CPU time, bytes sent and received per
    client."""
    return json.loads(_native.bench_secagg(clients, entries, dropout, neighbours, threshold, bits))


def bench_he(params: int, hospitals: int = 3, threshold: float = 0.66, bits: int = 32) -> Dict[str, Any]:
    """One threshold-HE aggregation round with every party in this process,
    like ``cohort bench he``: times and upload bytes per hospital."""
    return json.loads(_native.bench_he(params, hospitals, threshold, bits))


def demo_job() -> Dict[str, Any]:
    """The bundled WDBC job (examples/wdbc-mlp.toml) as a dict."""
    return tomllib.loads(_native.demo_job())


class Demo:
    """A throwaway consortium on this machine: a coordinator and one client
    per hospital in this process on loopback (real gRPC, mutual TLS with a
    fresh CA), each hospital with its share of the bundled WDBC data. Stop
    it with :meth:`stop` or use it as a context manager."""

    def __init__(
        self,
        hospitals: int = 3,
        seed: int = 42,
        alpha: float = 5.0,
        tls: bool = True,
        workdir: Optional[PathLike] = None,
        max_epsilon: Optional[float] = None,
        delta: float = 1e-5,
        emission_initial: Optional[int] = None,
        emission_halving: Optional[int] = None,
    ) -> None:
        self._native = _native.Sandbox(
            hospitals, seed, alpha, tls, _path(workdir), max_epsilon, delta, emission_initial, emission_halving
        )
        info = json.loads(self._native.info)
        self.url: str = info["url"]
        self.workdir = Path(info["workdir"])
        self.kit: Optional[Path] = Path(info["developer_kit"]) if info["developer_kit"] else None
        self.ca: Optional[Path] = Path(info["ca_dir"]) if info["ca_dir"] else None
        self.data_dir = Path(info["coordinator_dir"])
        self.hospitals: Dict[str, Path] = {name: Path(p) for name, p in info["hospitals"]}
        self.test_file = Path(info["test_file"])
        self._job = tomllib.loads(info["job_toml"])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<cohort.Demo {self.url} {len(self.hospitals)} hospitals, {state}, in {self.workdir}>"

    @property
    def running(self) -> bool:
        return self._native.running

    def coordinator(self) -> Coordinator:
        """A developer's connection to this consortium's coordinator."""
        return Coordinator(self.url, tls=self.kit)

    def job(self, rounds: Optional[int] = None, **sections: Mapping[str, Any]) -> Dict[str, Any]:
        """The demo job as a dict (a fresh copy), with ``rounds`` and any
        section's keys overridden, e.g. ``job(privacy={"aggregation": "secagg"})``."""
        job = json.loads(json.dumps(self._job))
        if rounds is not None:
            job["training"]["rounds"] = rounds
        for section, values in sections.items():
            if isinstance(values, Mapping) and isinstance(job.get(section), dict):
                job[section].update(values)
            else:
                job[section] = values
        return job

    def reference_preprocessing(self, job: Optional[Job] = None) -> Dict[str, Any]:
        """:func:`reference_preprocessing` of ``job`` (the demo job by
        default) from the developer's held-out test file, which stands in
        for its reference data: ``job(preprocessing=demo.reference_preprocessing())``."""
        return reference_preprocessing(self.test_file, self._job if job is None else job)

    def budgets(self) -> Dict[str, Dict[str, Any]]:
        """Each hospital's differential-privacy budget report (spent,
        remaining, per job), as its client keeps it."""
        return {name: budget(self.workdir / "clients" / name) for name in self.hospitals}

    def stop(self) -> None:
        """Stops the coordinator and clients; the files stay in ``workdir``."""
        self._native.stop()

    def __enter__(self) -> "Demo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def demo(
    hospitals: int = 3,
    seed: int = 42,
    alpha: float = 5.0,
    tls: bool = True,
    workdir: Optional[PathLike] = None,
    max_epsilon: Optional[float] = None,
    delta: float = 1e-5,
    emission_initial: Optional[int] = None,
    emission_halving: Optional[int] = None,
) -> Demo:
    """Starts a throwaway local consortium (see :class:`Demo`). With
    ``max_epsilon``, every hospital's client enforces that total
    differential-privacy budget (at ``delta``) across jobs.
    ``emission_initial`` base units per rewarded round, halving every
    ``emission_halving`` rewarded rounds, is the coordinator's reward
    schedule for ``[valuation]`` jobs (default: Bitcoin's, 5·10^9 halving
    every 210,000, like ``cohort coordinator``)."""
    return Demo(
        hospitals=hospitals,
        seed=seed,
        alpha=alpha,
        tls=tls,
        workdir=workdir,
        max_epsilon=max_epsilon,
        delta=delta,
        emission_initial=emission_initial,
        emission_halving=emission_halving,
    )
