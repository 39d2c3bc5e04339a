"""A Flower ClientApp that does as little as a round allows: it adds a
small step to the model it receives and reports a loss, so the measured
round time is Flower's own cost (Cohort's clients train a real MLP on WDBC
in the same benchmark, so the comparison favours Flower)."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    updated = [a + np.float32(1e-3) for a in arrays]
    content = RecordDict(
        {
            "arrays": ArrayRecord(updated),
            "metrics": MetricRecord({"train_loss": 0.0, "num-examples": 100}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    content = RecordDict(
        {"metrics": MetricRecord({"eval_loss": 0.0, "num-examples": 100})}
    )
    return Message(content=content, reply_to=msg)
