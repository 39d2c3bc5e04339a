#!/usr/bin/env python3
"""Flower's SecAgg+ measured on the same grid as `cohort bench secagg`.

This is the reference side of Cohort's secure-aggregation benchmark
(docs/BENCHMARKS.md). It runs Flower's own SecAgg+ code from the installed
`flwr` package, in one process, with no simulation engine, Ray or network:

* Server: `flwr.server.workflow.SecAggPlusWorkflow`. Its four stage methods
  (`setup_stage`, `share_keys_stage`, `collect_masked_vectors_stage`,
  `unmask_stage`) are called in the order that `SecAggPlusWorkflow.__call__`
  calls them, on a `WorkflowState` and a `LegacyContext`, exactly as
  `__call__` does. (`__call__` itself is not used only because it hides the
  per-stage boundaries we time.) The `Grid` they talk to is `InProcessGrid`
  below: its `send_and_receive` hands every message to the destination
  client's `ClientApp` and returns the replies.
* Client: a real `flwr.clientapp.ClientApp(client_fn, mods=[secaggplus_mod])`,
  one per client, each with its own `Context` kept across the four stages.
  The innermost handler is Flower's legacy `Client.fit` path (the one
  `secaggplus_mod` expects); `fit` returns the client's fixed input vector,
  already serialised, so "training" costs nothing.

Nothing of the protocol is re-implemented here: key generation, Shamir
sharing, encryption of shares, quantisation, masking, unmasking, mask recovery
for dropped clients and dequantisation all run in Flower's code.

What this harness adds, and how it is counted:

* Transport: every message crosses the in-process grid in Flower's protobuf
  form (`flwr.common.serde.message_to_proto` then `message_from_proto`), so
  server and clients never share objects. Message IDs are set to
  `Message.object_id`, as Flower's gRPC/HTTP grids and SuperNode do.
  Serialisation and deserialisation are transport work and are counted in
  neither side's CPU time.
* Client CPU: `time.process_time` around each `ClientApp` call of that
  client, summed over its stages. The mean is over the clients that
  completed all four stages (the dropped ones stop after stage 1).
* Server CPU: `time.process_time` around the four stage methods, minus the
  time spent inside `InProcessGrid.send_and_receive` (clients plus transport).
  It includes unmasking, recovery of dropped clients' pairwise masks and
  dequantisation (all inside `unmask_stage`).
* Strategy: the workflow ends by handing the aggregate to
  `Strategy.aggregate_fit` (backward compatibility with the legacy API).
  `PassThroughStrategy` returns that aggregate as it is; FedAvg would
  re-average n identical copies of the already-averaged vector, which is not
  SecAgg+ work. `configure_fit` sends empty parameters, so bytes received
  count SecAgg+ traffic and not a model download.
* Bytes sent per client: `ByteSize()` of the protobuf `Message` (metadata and
  content) of every reply that client sends, summed over its stages.
  Bytes received: the same for the messages the server sends it. Flower
  1.41's transport uploads a message's records as content-addressed objects
  beside the message header; `bytes_sent_per_client_objects` gives that form
  too (sum of `deflate()` sizes of the reply's object tree), for reference.

Parameters matched to Cohort's: neighbourhood k = min(8, n-1), so
`num_shares = k + 1` (Flower counts the client itself),
`reconstruction_threshold = ceil(0.66 * (k + 1))`, `modulus_range = 2**32`,
Flower's default `clipping_range` (8.0), `quantization_range` (2**22) and
`max_weight` (1000). Every client reports `num_examples = max_weight`, so
Flower's weighting factor is exactly 1.0 (no precision lost to weighting) and
the workflow's weighted average is the plain mean of the surviving inputs.
The check multiplies that mean by the number of survivors and compares it with
the float64 sum of their inputs, allowing one quantisation step per survivor
(stochastic rounding).

Inputs: one float32 vector per client, standard normal * 0.01, fixed seed.
Dropout: floor(fraction * n) clients, chosen with a fixed seed, answer
`setup` and `share_keys` (so their key shares are out) and then vanish: they
never receive the `collect_masked_vectors` message and never send a masked
vector, so the server must recover their pairwise masks from the survivors'
shares.

Usage:
    python3 scripts/bench_secagg_flower.py --clients 10 --entries 10000 --dropout 0.1
    python3 scripts/bench_secagg_flower.py --clients 10,50,100 \\
        --entries 10000,100000,1000000 --dropout 0,0.1 [--repeat 1]

One JSON line per configuration on stdout; a progress line per configuration
on stderr.
"""

import os

# One core per measurement: keep numpy's BLAS pools out of the CPU times.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402

import numpy as np  # noqa: E402

import flwr  # noqa: E402
from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.client import Client  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.common import (  # noqa: E402
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import (  # noqa: E402
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.common.serde import message_from_proto, message_to_proto  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.compat.legacy_context import LegacyContext  # noqa: E402
from flwr.server.strategy import Strategy  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import (  # noqa: E402
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
)
from flwr.server.workflow.constant import Key as WorkflowKey  # noqa: E402
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (  # noqa: E402
    WorkflowState,
)
from flwr.serverapp.grid import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.supercore.inflatable.inflatable_object import (  # noqa: E402
    get_all_nested_objects,
)

RUN_ID = 1
SEED = 20240601
MAX_NEIGHBOURS = 8  # Cohort's neighbourhood size k (capped at n - 1)
THRESHOLD_FRACTION = 0.66  # Cohort's reconstruction threshold, of k + 1
MODULUS_RANGE = 2**32
CLIPPING_RANGE = 8.0  # Flower's default
QUANTIZATION_RANGE = 2**22  # Flower's default
MAX_WEIGHT = 1000.0  # Flower's default


# ----------------------------------------------------------------------------
# Client side: a real ClientApp with secaggplus_mod
# ----------------------------------------------------------------------------


class FixedVectorClient(Client):
    """Legacy Flower client whose `fit` returns a fixed, pre-serialised vector."""

    def __init__(self, tensors: list[bytes]) -> None:
        self._tensors = tensors

    def fit(self, ins: FitIns) -> FitRes:
        # A fresh Parameters each call: Flower's converters may consume it.
        return FitRes(
            status=Status(code=Code.OK, message="ok"),
            parameters=Parameters(
                tensors=list(self._tensors), tensor_type="numpy.ndarray"
            ),
            num_examples=int(MAX_WEIGHT),
            metrics={},
        )


class SimClient:
    """One client: its ClientApp, its Context and what it costs."""

    def __init__(self, node_id: int, vector: np.ndarray) -> None:
        self.node_id = node_id
        self.vector = vector
        tensors = ndarrays_to_parameters([vector]).tensors
        client = FixedVectorClient(tensors)
        self.app = ClientApp(client_fn=lambda _ctx: client, mods=[secaggplus_mod])
        self.context = Context(
            run_id=RUN_ID,
            node_id=node_id,
            node_config={},
            state=RecordDict(),
            run_config={},
        )
        self.dropped = False
        self.cpu_secs = 0.0
        self.bytes_sent = 0
        self.bytes_sent_objects = 0
        self.bytes_received = 0
        self.stages_done: list[str] = []


# ----------------------------------------------------------------------------
# Server side: the Grid the workflow talks to
# ----------------------------------------------------------------------------


class InProcessGrid(Grid):
    """Delivers each message to its client's ClientApp in this process.

    Messages cross in Flower's protobuf form. CPU spent in here (clients and
    serialisation) is tallied in `inside_cpu_secs` so that the caller can
    subtract it from the server's stage time.
    """

    def __init__(self, clients: dict[int, SimClient]) -> None:
        self.clients = clients
        self.inside_cpu_secs = 0.0
        self._run = None

    def set_run(self, run) -> None:  # noqa: ANN001
        self._run = run

    @property
    def run(self):  # noqa: ANN201
        return self._run

    def create_message(  # pylint: disable=too-many-arguments
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.clients)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the workflow only uses send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the workflow only uses send_and_receive")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        start = time.process_time()
        replies: list[Message] = []
        for msg in messages:
            # The SuperLink's part: a content-addressed message ID.
            msg.metadata.__dict__["_message_id"] = msg.object_id
            client = self.clients[msg.metadata.dst_node_id]
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if client.dropped and stage == Stage.COLLECT_MASKED_VECTORS:
                # Gone after sharing its keys: no masked vector, no reply.
                continue
            wire_in = message_to_proto(msg)
            client.bytes_received += wire_in.ByteSize()
            msg_at_client = message_from_proto(wire_in)
            del wire_in

            c0 = time.process_time()
            reply = client.app(msg_at_client, client.context)
            client.cpu_secs += time.process_time() - c0
            client.stages_done.append(str(stage))

            reply.metadata.__dict__["_message_id"] = reply.object_id
            client.bytes_sent_objects += sum(
                len(obj.deflate()) for obj in get_all_nested_objects(reply).values()
            )
            wire_out = message_to_proto(reply)
            client.bytes_sent += wire_out.ByteSize()
            replies.append(message_from_proto(wire_out))
            del wire_out, reply, msg_at_client
        self.inside_cpu_secs += time.process_time() - start
        return replies


class PassThroughStrategy(Strategy):
    """Legacy strategy around the workflow: empty FitIns, aggregate kept as is."""

    def __init__(self, proxies: list[GridClientProxy]) -> None:
        self.proxies = proxies
        self.aggregate: Parameters | None = None

    def initialize_parameters(self, client_manager):  # noqa: ANN001, ANN201
        return None

    def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        return [(proxy, FitIns(empty, {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        # The workflow has set every result's parameters to the unmasked,
        # dequantised aggregate (the weighted mean); keep it.
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}

    def configure_evaluate(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
        return []

    def aggregate_evaluate(self, server_round, results, failures):  # noqa: ANN001, ANN201
        return None, {}

    def evaluate(self, server_round, parameters):  # noqa: ANN001, ANN201
        return None


# ----------------------------------------------------------------------------
# One configuration
# ----------------------------------------------------------------------------


def secagg_params(clients: int) -> tuple[int, int]:
    """Cohort's neighbourhood in Flower's terms: (num_shares, threshold)."""
    k = min(MAX_NEIGHBOURS, clients - 1)
    num_shares = k + 1
    threshold = math.ceil(THRESHOLD_FRACTION * num_shares)
    return num_shares, threshold


def run_once(clients: int, entries: int, dropout: float, seed: int) -> dict:
    """Run one SecAgg+ round and return its measurements."""
    random.seed(seed)  # the workflow shuffles the ring with `random`
    np.random.seed(seed)  # Flower's stochastic rounding uses np.random
    id_rng = random.Random(seed)
    node_ids = id_rng.sample(range(1, 2**63), clients)
    sim: dict[int, SimClient] = {}
    for idx, nid in enumerate(node_ids):
        rng = np.random.default_rng([seed, idx])
        vector = (rng.standard_normal(entries, dtype=np.float32) * np.float32(0.01))
        sim[nid] = SimClient(nid, vector.astype(np.float32))
    num_dropped = math.floor(dropout * clients + 1e-9)
    for nid in random.Random(seed + 1).sample(node_ids, num_dropped):
        sim[nid].dropped = True

    num_shares, threshold = secagg_params(clients)
    workflow = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        max_weight=MAX_WEIGHT,
    )
    grid = InProcessGrid(sim)
    proxies = [GridClientProxy(nid, grid, RUN_ID) for nid in node_ids]
    strategy = PassThroughStrategy(proxies)
    base = Context(
        run_id=RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={},
        state=RecordDict(), run_config={},
    )
    context = LegacyContext(base, strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: 1}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        Parameters(tensors=[], tensor_type="numpy.ndarray"), keep_input=True
    )
    state = WorkflowState()

    # Same steps, same order as SecAggPlusWorkflow.__call__.
    steps = (
        workflow.setup_stage,
        workflow.share_keys_stage,
        workflow.collect_masked_vectors_stage,
        workflow.unmask_stage,
    )
    server_cpu_by_stage: dict[str, float] = {}
    completed = True
    wall0 = time.perf_counter()
    for stage, step in zip(Stage.all(), steps, strict=True):
        inside0 = grid.inside_cpu_secs
        t0 = time.process_time()
        ok = step(grid, context, state)
        server_cpu_by_stage[stage] = (time.process_time() - t0) - (
            grid.inside_cpu_secs - inside0
        )
        if not ok:
            completed = False
            break
    wall = time.perf_counter() - wall0

    survivors = [c for c in sim.values() if not c.dropped]
    result = {
        "server_cpu_secs": sum(server_cpu_by_stage.values()),
        "server_cpu_secs_by_stage": server_cpu_by_stage,
        "client_cpu_secs_mean": float(np.mean([c.cpu_secs for c in survivors])),
        "client_cpu_secs_max": float(np.max([c.cpu_secs for c in survivors])),
        "bytes_sent_per_client": float(np.mean([c.bytes_sent for c in survivors])),
        "bytes_received_per_client": float(
            np.mean([c.bytes_received for c in survivors])
        ),
        "bytes_sent_per_client_objects": float(
            np.mean([c.bytes_sent_objects for c in survivors])
        ),
        "clients_dropped": num_dropped,
        "num_shares": state.num_shares,
        "threshold": state.threshold,
        "wall_secs": wall,
    }

    sum_ok = False
    max_abs_err = None
    if completed and strategy.aggregate is not None:
        mean = parameters_to_ndarrays(strategy.aggregate)[0]
        expected = np.sum(
            [c.vector.astype(np.float64) for c in survivors], axis=0
        )
        recovered = mean * len(survivors)
        step_size = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
        tolerance = len(survivors) * step_size * (1 + 1e-6) + 1e-9
        max_abs_err = float(np.max(np.abs(recovered - expected)))
        sum_ok = bool(recovered.shape == expected.shape and max_abs_err <= tolerance)
    result["sum_ok"] = sum_ok
    result["sum_max_abs_err"] = max_abs_err
    result["completed"] = completed
    return result


def parse_list(text: str, kind):  # noqa: ANN001, ANN201
    return [kind(item) for item in text.split(",") if item.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Flower SecAgg+ CPU and bytes, one JSON line per configuration."
    )
    parser.add_argument("--clients", default="10", help="e.g. 10 or 10,50,100")
    parser.add_argument("--entries", default="10000", help="e.g. 10000,100000")
    parser.add_argument("--dropout", default="0", help="fraction(s), e.g. 0,0.1")
    parser.add_argument("--repeat", type=int, default=1, help="runs to average")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    logging.getLogger("flwr").setLevel(logging.ERROR)
    # The ServerApp's identity, as Flower's runtimes set it before a workflow
    # runs (`Message(...)` reads it for run ID and source node of instructions).
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = RUN_ID
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    implementation = f"flower {flwr.__version__}"
    configs = [
        (c, e, d)
        for c in parse_list(args.clients, int)
        for e in parse_list(args.entries, int)
        for d in parse_list(args.dropout, float)
    ]
    for index, (clients, entries, dropout) in enumerate(configs, start=1):
        if clients < 3:
            print(f"skip: {clients} clients (SecAgg+ needs at least 3)", file=sys.stderr)
            continue
        runs = [
            run_once(clients, entries, dropout, args.seed + r)
            for r in range(args.repeat)
        ]
        averaged = {
            key: float(np.mean([r[key] for r in runs]))
            for key in (
                "client_cpu_secs_mean",
                "client_cpu_secs_max",
                "server_cpu_secs",
                "bytes_sent_per_client",
                "bytes_received_per_client",
                "bytes_sent_per_client_objects",
                "wall_secs",
            )
        }
        errs = [r["sum_max_abs_err"] for r in runs if r["sum_max_abs_err"] is not None]
        line = {
            "implementation": implementation,
            "clients": clients,
            "entries": entries,
            "dropout": dropout,
            "client_cpu_secs_mean": round(averaged["client_cpu_secs_mean"], 6),
            "server_cpu_secs": round(averaged["server_cpu_secs"], 6),
            "bytes_sent_per_client": round(averaged["bytes_sent_per_client"]),
            "bytes_received_per_client": round(averaged["bytes_received_per_client"]),
            "sum_ok": all(r["sum_ok"] for r in runs),
            "client_cpu_secs_max": round(averaged["client_cpu_secs_max"], 6),
            "bytes_sent_per_client_objects": round(
                averaged["bytes_sent_per_client_objects"]
            ),
            "clients_dropped": runs[0]["clients_dropped"],
            "num_shares": runs[0]["num_shares"],
            "threshold": runs[0]["threshold"],
            "sum_max_abs_err": max(errs) if errs else None,
            "server_cpu_secs_by_stage": {
                stage: round(float(np.mean(
                    [r["server_cpu_secs_by_stage"].get(stage, 0.0) for r in runs]
                )), 6)
                for stage in Stage.all()
            },
            "repeat": args.repeat,
            "wall_secs": round(averaged["wall_secs"], 3),
        }
        print(json.dumps(line), flush=True)
        print(
            f"[{index}/{len(configs)}] flower clients={clients} entries={entries} "
            f"dropout={dropout}: client {line['client_cpu_secs_mean']:.3f}s, "
            f"server {line['server_cpu_secs']:.3f}s, "
            f"sent {line['bytes_sent_per_client']} B/client, "
            f"sum_ok={line['sum_ok']}, wall {line['wall_secs']:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
