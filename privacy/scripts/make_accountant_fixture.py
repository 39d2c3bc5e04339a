#!/usr/bin/env python3
"""Reference epsilons for cohort-privacy's accountants, computed with Google's
`dp_accounting` (pip install dp_accounting==0.6.0).

Writes privacy/tests/fixtures/dp_accounting.json. Run from the repository root:

    python3 privacy/scripts/make_accountant_fixture.py

Every case is a list of Poisson-subsampled Gaussian segments (q, sigma, steps),
composed as ComposedDpEvent([SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(sigma)), steps), ...]) and evaluated with
  * RdpAccountant() (default orders, ADD_OR_REMOVE_ONE): epsilon and optimal
    order at delta, plus delta and optimal order at `epsilon_for_delta`;
  * PLDAccountant() (value_discretization_interval=1e-4, ADD_OR_REMOVE_ONE):
    epsilon at delta, plus delta at `epsilon_for_delta`.
"""

import itertools
import json
import math
import os
import time

import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

DELTA = 1e-5
EPS_FOR_DELTA = 1.0
QS = [0.001, 0.01, 0.05]
SIGMAS = [0.5, 1.0, 2.0]
STEPS = [1, 100, 1000, 10000]
HETEROGENEOUS = [
    [(0.01, 1.0, 500), (0.05, 0.8, 200)],
    [(0.001, 0.5, 1000), (0.02, 2.0, 300)],
    [(0.05, 1.5, 100), (0.01, 0.7, 2000), (0.1, 3.0, 50)],
]


def event_for(segments):
  events = [
      dp_event.SelfComposedDpEvent(
          dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)),
          steps)
      for q, sigma, steps in segments
  ]
  return events[0] if len(events) == 1 else dp_event.ComposedDpEvent(events)


def finite(x):
  x = float(x)
  return x if math.isfinite(x) else None


def run_case(segments):
  event = event_for(segments)

  rdp = rdp_privacy_accountant.RdpAccountant()
  rdp.compose(event)
  rdp_eps, rdp_order = rdp.get_epsilon_and_optimal_order(DELTA)
  rdp_delta, rdp_delta_order = rdp.get_delta_and_optimal_order(EPS_FOR_DELTA)

  t0 = time.perf_counter()
  pld = pld_privacy_accountant.PLDAccountant()
  pld.compose(event)
  pld_eps = pld.get_epsilon(DELTA)
  pld_delta = pld.get_delta(EPS_FOR_DELTA)
  pld_seconds = time.perf_counter() - t0

  return {
      'segments': [
          {'sampling_rate': q, 'noise_multiplier': s, 'steps': t}
          for q, s, t in segments
      ],
      # Composed RDP at each default order; null where dp_accounting gave inf
      # (its fractional-order series gives up after 1000 terms and drops the
      # order, e.g. q=0.05, sigma=0.5 at orders 1.1..1.5).
      'rdp_values': [finite(r) for r in rdp.rdp],
      'rdp_epsilon': finite(rdp_eps),
      'rdp_order': float(rdp_order),
      'rdp_delta_for_epsilon': finite(rdp_delta),
      'rdp_delta_order': float(rdp_delta_order),
      'pld_epsilon': finite(pld_eps),
      'pld_delta_for_epsilon': finite(pld_delta),
      'pld_seconds': round(pld_seconds, 3),
  }


def main():
  cases = []
  grid = [[(q, s, t)] for q, s, t in itertools.product(QS, SIGMAS, STEPS)]
  for segments in grid + HETEROGENEOUS:
    case = run_case(segments)
    print(json.dumps({k: v for k, v in case.items() if k != 'rdp_values'}),
          flush=True)
    cases.append(case)

  out = {
      'generator': 'privacy/scripts/make_accountant_fixture.py',
      'dp_accounting_version': getattr(dp_accounting, '__version__', None)
      or __import__('importlib.metadata').metadata.version('dp_accounting'),
      'delta': DELTA,
      'epsilon_for_delta': EPS_FOR_DELTA,
      'neighboring_relation': 'ADD_OR_REMOVE_ONE',
      'pld_value_discretization_interval': 1e-4,
      'rdp_orders': [float(o) for o in rdp_privacy_accountant.DEFAULT_RDP_ORDERS],
      'cases': cases,
  }
  here = os.path.dirname(os.path.abspath(__file__))
  path = os.path.join(here, '..', 'tests', 'fixtures', 'dp_accounting.json')
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)
    f.write('\n')
  print('wrote', os.path.normpath(path))


if __name__ == '__main__':
  main()
