#!/usr/bin/env python3
"""Executes notebooks on a fresh kernel each (nbclient), from the
notebooks/ directory, without writing outputs back; fails on the first
error or on a notebook over its time limit. CI runs it on notebooks/*.ipynb.

    python scripts/run_notebooks.py [--limit SECONDS] notebooks/*.ipynb
"""

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--limit", type=float, default=180.0, help="seconds each notebook may take (default 180)")
    args = parser.parse_args()
    failed = 0
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        client = NotebookClient(
            notebook,
            timeout=int(args.limit),
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        started = time.monotonic()
        try:
            client.execute()
        except CellExecutionError as e:
            print(f"FAILED {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        except Exception as e:  # a timeout or a dead kernel
            print(f"FAILED {path}: {type(e).__name__}: {e}", file=sys.stderr)
            failed += 1
            continue
        seconds = time.monotonic() - started
        if seconds > args.limit:
            print(f"FAILED {path}: took {seconds:.0f} s, limit {args.limit:.0f} s", file=sys.stderr)
            failed += 1
            continue
        print(f"ok {path} ({seconds:.1f} s)")
    print(f"notebooks: {len(args.notebooks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
