"""A Flower ServerApp running FedAvg over every connected SuperNode and
recording each round's wall time, from sending the fit messages to
aggregating the evaluations, as `cohort bench rounds` times a round."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.started = {}
        self.round_s = []

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        result = super().aggregate_evaluate(server_round, replies)
        self.round_s.append(time.perf_counter() - self.started[server_round])
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    clients = int(context.run_config["clients"])
    params = int(context.run_config["params"])
    rounds = int(context.run_config["rounds"])
    strategy = TimedFedAvg(
        min_train_nodes=clients,
        min_evaluate_nodes=clients,
        min_available_nodes=clients,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(params, dtype=np.float32)]),
        num_rounds=rounds,
    )
    with open(str(context.run_config["out"]), "w") as f:
        json.dump(
            {"clients": clients, "parameters": params, "round_s": strategy.round_s}, f
        )
