#!/usr/bin/env python3
"""Opacus's DP-SGD training throughput on the CPU, for comparison with Cohort's.

The counterpart of `cohort bench dp-sgd`: the same flags, the same model, the
same synthetic data and the same DP-SGD step, so one JSON line from each side
can be put next to the other (scripts/bench_dp_sgd.sh does that).

  Model   an MLP: features -> [Linear -> ReLU] per hidden width -> Linear -> 1
          logit, binary cross-entropy with logits, mean over the batch.
  Data    rows x features standard normal features; w_true ~ N(0, I) and
          noise ~ N(0, 1) per row, label = 1 if x . w_true + noise > 0 else 0.
          Everything from torch.manual_seed(seed), generated before timing.
  DP-SGD  Opacus's defaults: PrivacyEngine.make_private on a
          DataLoader(TensorDataset, batch_size=batch) with poisson_sampling=True
          (Opacus sets q = 1 / len(loader) = 1 / ceil(rows / batch), which is
          batch / rows up to the rounding), flat per-sample clipping to
          max_grad_norm, Gaussian noise of std noise_multiplier * max_grad_norm
          on the clipped sum, divided by the expected batch size
          (int(rows * q)), then plain SGD (no momentum) at learning_rate.
  Timing  warmup steps untimed, then steps timed optimizer steps over the
          Poisson data loader (a new iterator whenever one runs out), data
          loading included; wall time (perf_counter), process CPU time
          (process_time, all threads) and the samples actually drawn.

Usage:
  python3 scripts/bench_dp_sgd_opacus.py [--features 30] [--hidden 64,64]
      [--batch 256] [--rows 60000] [--steps 300] [--warmup 20]
      [--max-grad-norm 1.0] [--noise-multiplier 1.0] [--learning-rate 0.05]
      [--seed 7] [--threads N] [--grad-sample-mode hooks|ew|functorch|ghost]
      [--secure-mode] [--json]

With --json it prints one JSON line. first_loss / last_loss are the mean
training loss over the first 10 steps run (warm-up included) and the last 10
timed steps. loader_seconds is the part of `seconds` spent drawing batches
from the Poisson data loader; max_rss_mb is the process's peak resident memory.

It needs torch and opacus: scripts/bench_dp_sgd.sh makes a virtual
environment with the pinned versions and runs this script from it.
"""

import argparse
import json
import resource
import sys
import time

MODES = ("hooks", "ew", "functorch", "ghost")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Opacus DP-SGD training throughput (CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--hidden", default="64,64", help="hidden widths, comma separated")
    p.add_argument("--batch", type=int, default=256, help="expected (Poisson) batch size")
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--learning-rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--grad-sample-mode", default="hooks", choices=MODES,
                   help="how Opacus computes per-sample gradients (hooks is its default)")
    p.add_argument("--secure-mode", action="store_true",
                   help="Opacus secure_mode (needs torchcsprng)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
    try:
        a.hidden_list = [int(h) for h in a.hidden.split(",") if h.strip()]
    except ValueError:
        p.error(f"--hidden takes comma-separated integers, not {a.hidden!r}")
    if any(h <= 0 for h in a.hidden_list) or a.features <= 0:
        p.error("--features and the --hidden widths must be positive")
    if a.batch <= 0 or a.rows < a.batch:
        p.error("need 0 < --batch <= --rows")
    if a.steps <= 0 or a.warmup < 0:
        p.error("need --steps > 0 and --warmup >= 0")
    if a.threads is not None and a.threads <= 0:
        p.error("--threads must be positive")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)

    try:
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
        import opacus
        from opacus import PrivacyEngine
    except ImportError as e:
        print(f"error: {e}; run this from the virtual environment that "
              "scripts/bench_dp_sgd.sh creates (torch and opacus, pinned there)",
              file=sys.stderr)
        return 2
    if a.secure_mode:
        try:
            import torchcsprng  # noqa: F401
        except ImportError:
            print("error: --secure-mode needs the torchcsprng package, which is "
                  "not installed (it has no build for this torch on PyPI); "
                  "run without --secure-mode", file=sys.stderr)
            return 2

    if a.threads is not None:
        torch.set_num_threads(a.threads)

    # --- data and model, before any timing --------------------------------
    torch.manual_seed(a.seed)
    x = torch.randn(a.rows, a.features)
    w_true = torch.randn(a.features)
    # Labels and logits are kept 1-D, shape (batch,): Opacus's ghost clipping
    # multiplies its (batch,) clipping factors into the per-sample losses, and
    # a (batch, 1) loss would broadcast that to (batch, batch) without a word.
    y = ((x @ w_true + torch.randn(a.rows)) > 0).float()

    layers, width = [], a.features
    for h in a.hidden_list:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    model = nn.Sequential(*layers)
    parameters = sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.SGD(model.parameters(), lr=a.learning_rate, momentum=0.0)
    criterion = nn.BCEWithLogitsLoss(reduction="mean")
    loader = DataLoader(TensorDataset(x, y), batch_size=a.batch)

    engine = PrivacyEngine(secure_mode=a.secure_mode)
    made = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=a.noise_multiplier,
        max_grad_norm=a.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=a.grad_sample_mode,
    )
    if a.grad_sample_mode == "ghost":
        model, optimizer, criterion, loader = made
    else:
        model, optimizer, loader = made
    sample_rate = 1.0 / len(loader)
    expected_batch_size = optimizer.expected_batch_size

    # --- the loop -----------------------------------------------------------
    losses = []
    it = iter(loader)

    def draw():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    def step(xb, yb):
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb).squeeze(-1), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    model.train()
    for _ in range(a.warmup):
        step(*draw())

    samples = 0
    loader_seconds = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        l0 = time.perf_counter()
        xb, yb = draw()
        loader_seconds += time.perf_counter() - l0
        samples += xb.shape[0]
        step(xb, yb)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - cpu0

    first = losses[: min(10, len(losses))]
    last = losses[-min(10, a.steps):]
    rec = {
        "framework": "opacus",
        "opacus_version": opacus.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "grad_sample_mode": a.grad_sample_mode,
        "features": a.features,
        "hidden": a.hidden_list,
        "parameters": parameters,
        "batch": a.batch,
        "rows": a.rows,
        "steps": a.steps,
        "warmup": a.warmup,
        "samples": samples,
        "seconds": round(seconds, 6),
        "cpu_seconds": round(cpu_seconds, 6),
        "samples_per_second": round(samples / seconds, 3),
        "loader_seconds": round(loader_seconds, 6),
        "max_grad_norm": a.max_grad_norm,
        "noise_multiplier": a.noise_multiplier,
        "learning_rate": a.learning_rate,
        "seed": a.seed,
        "sample_rate": sample_rate,
        "expected_batch_size": expected_batch_size,
        "secure_mode": a.secure_mode,
        "first_loss": round(sum(first) / len(first), 6),
        "last_loss": round(sum(last) / len(last), 6),
        # ru_maxrss is in KiB on Linux
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if a.json:
        print(json.dumps(rec), flush=True)
    else:
        shape = "-".join(str(n) for n in [a.features, *a.hidden_list, 1])
        print(
            f"opacus {rec['opacus_version']} (torch {rec['torch_version']}, "
            f"{rec['torch_threads']} threads, {a.grad_sample_mode}): MLP {shape} "
            f"({parameters:,} parameters), {a.steps} steps, {samples:,} samples in "
            f"{seconds:.3f} s (CPU {cpu_seconds:.3f} s, loader {loader_seconds:.3f} s): "
            f"{samples / seconds:,.0f} samples/s; loss {rec['first_loss']:.4f} -> "
            f"{rec['last_loss']:.4f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
