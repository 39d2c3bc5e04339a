#!/usr/bin/env python3
"""TenSEAL CKKS at NVIDIA FLARE's default HE settings: the reference for Cohort's
homomorphic aggregation.

NVFlare's HE filters (nvflare/app_opt/he: HEModelEncryptor,
HEInTimeAccumulateWeightedAggregator, HEModelDecryptor) use a TenSEAL context
that its provisioning (nvflare/lighter/impl/he.py, HEBuilder) makes with these
defaults, which this script uses too:

  Context   CKKS, poly_modulus_degree 8192 (4096 slots per ciphertext),
            coeff_mod_bit_sizes [60, 40, 40], global scale 2^40, symmetric
            encryption, relinearization keys; the clients' context holds the
            secret key, the server's does not (both are made as HEBuilder
            makes them: serialized, then loaded with ts.context_from).

For every parameter count P (--params) and C clients (--clients):

  Data      each client has P float32 values, standard normal, drawn from
            numpy's default_rng(seed) before anything is timed.
  Encrypt   per client, as HEModelEncryptor does for one flattened layer:
            ts.ckks_vector(client_context, values).serialize(). TenSEAL splits
            a vector longer than the slot count into several ciphertexts
            itself (it warns that matmul and a few other operations are then
            disabled; aggregation needs none of them). If the installed
            TenSEAL does not (checked once at start), or with --chunk, the
            values are cut into 4096-value pieces here, one ckks_vector each.
            The serialized bytes are the upload.
  Aggregate the server, as HEInTimeAccumulateWeightedAggregator does with
            weigh_by_local_iter=False: ts.ckks_vector_from(server_context, b)
            for every client, summed with `+`. (FLARE then multiplies the sum
            by 1 / the sum of the clients' step counts, one plaintext
            multiply; that is not measured here.) The serialized sum is the
            download.
  Decrypt   a client, as HEModelDecryptor does: ts.ckks_vector_from(
            client_context, sum_bytes).decrypt(); the result is compared with
            the plaintext sum of the clients' values (in float64).

Reported per parameter count: encrypt_seconds_per_client (mean over clients,
serialization included; serialize_seconds_per_client is that part),
upload_bytes_per_client (mean), aggregation_seconds (deserialize and add all
C uploads; aggregation_deserialize_seconds and aggregation_add_seconds are
the two parts), decrypt_seconds (deserialize and decrypt the sum),
sum_bytes (the serialized sum), max_abs_error, and the TenSEAL version,
threads, CPU model and peak resident memory (max_rss_mb, of the whole run so
far). Wall time, time.perf_counter. One small untimed encryption runs first.

Install (a virtual environment outside the repository; scripts/bench_he_tenseal.sh
does this if it is missing and then runs this script from it):

  python3 -m venv ~/.cache/cohort/tenseal-venv
  ~/.cache/cohort/tenseal-venv/bin/python -m pip install tenseal==0.3.18 numpy==2.4.6

tenseal 0.3.18 is the newest release with a CPython 3.11 x86_64 manylinux
wheel; numpy 2.4.6 is the numpy pip resolves for it.

Usage:
  ~/.cache/cohort/tenseal-venv/bin/python scripts/bench_he_tenseal.py
      [--params P [P ...]] [--clients 10] [--seed 7] [--threads 1] [--chunk]
      [--json]

  --params P...  parameter counts, one measurement each (default 100000 1000000)
  --clients C    clients (default 10)
  --seed S       seed of the clients' values (default 7)
  --threads N    TenSEAL's n_threads for both contexts (default 1; TenSEAL
                 spreads the ciphertexts of one vector over its threads)
  --chunk        encrypt 4096-value pieces, one ckks_vector each, even where
                 TenSEAL would split the whole vector itself
  --json         one JSON object per parameter count on stdout, instead of a table

Progress goes to stderr. TenSEAL prints its "input does not fit in a single
ciphertext" warning to the process's stdout from C++, once per long vector;
this script discards what goes to file descriptor 1 (says once on stderr that
TenSEAL splits) and writes its results to a copy of the original stdout.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

# NVFlare's HEBuilder defaults.
POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = [60, 40, 40]
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="TenSEAL CKKS encrypt / aggregate / decrypt at NVFlare's default HE settings.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--params", type=int, nargs="+", default=[100000, 1000000],
                   help="parameter counts (model sizes), one measurement each")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="TenSEAL context n_threads")
    p.add_argument("--chunk", action="store_true",
                   help=f"encrypt {SLOTS}-value pieces even where TenSEAL would split itself")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per parameter count instead of a table")
    a = p.parse_args(argv)
    if any(n <= 0 for n in a.params):
        p.error("--params must be positive")
    if a.clients <= 0:
        p.error("--clients must be positive")
    if a.threads <= 0:
        p.error("--threads must be positive")
    return a


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def max_rss_mb():
    # ru_maxrss is in KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def make_contexts(ts, threads):
    """The clients' and the server's context, as NVFlare's HEBuilder makes them."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=COEFF_MOD_BIT_SIZES,
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=threads,
    )
    ctx.generate_relin_keys()
    ctx.global_scale = 2 ** SCALE_BITS

    def serialized(is_client):
        return ctx.serialize(save_public_key=is_client, save_secret_key=is_client,
                             save_galois_keys=False, save_relin_keys=True)

    client = ts.context_from(serialized(True), n_threads=threads)
    server = ts.context_from(serialized(False), n_threads=threads)
    if not client.is_private() or server.is_private():
        raise RuntimeError("the client context must hold the secret key and the server's must not")
    return client, server


def tenseal_splits(ts, np, ctx):
    """Whether ts.ckks_vector takes a vector longer than the slot count (and
    splits it over several ciphertexts) in the installed TenSEAL."""
    x = np.arange(SLOTS + 1, dtype=np.float64) / SLOTS
    try:
        v = ts.ckks_vector(ctx, x)
        back = np.asarray(v.decrypt())
    except Exception as e:  # noqa: BLE001 - any refusal means "does not split"
        log(f"  this TenSEAL does not encrypt more than {SLOTS} values in one "
            f"ckks_vector ({e}); chunking into {SLOTS}-value pieces")
        return False
    if back.shape != x.shape or np.abs(back - x).max() > 1e-3:
        raise RuntimeError("TenSEAL split a long vector but decrypting it gave other values")
    return True


def measure(ts, np, a, params, client_ctx, server_ctx, splits):
    """One parameter count: encrypt at every client, aggregate, decrypt."""
    # The pieces one client encrypts: the whole flattened vector if TenSEAL
    # splits it itself, else SLOTS-value pieces.
    step = params if splits else SLOTS
    rng = np.random.default_rng(a.seed)
    data = [rng.standard_normal(params, dtype=np.float32) for _ in range(a.clients)]
    expected = np.zeros(params, dtype=np.float64)
    for x in data:
        expected += x.astype(np.float64)

    # --- clients: encrypt and serialize (the upload) ------------------------
    uploads, enc_seconds, ser_seconds = [], [], []
    for c, x in enumerate(data):
        t0 = time.perf_counter()
        encrypted = [ts.ckks_vector(client_ctx, x[i:i + step]) for i in range(0, params, step)]
        t1 = time.perf_counter()
        blobs = [v.serialize() for v in encrypted]
        t2 = time.perf_counter()
        del encrypted
        enc_seconds.append(t2 - t0)
        ser_seconds.append(t2 - t1)
        uploads.append(blobs)
        log(f"  client {c + 1}/{a.clients}: encrypted in {t2 - t0:.3f} s "
            f"({sum(map(len, blobs)):,} bytes)")
    ciphertexts = -(-params // SLOTS)
    upload_bytes = [sum(map(len, blobs)) for blobs in uploads]

    # --- server: deserialize every upload and add ---------------------------
    deser = add = 0.0
    total = None
    for blobs in uploads:
        t0 = time.perf_counter()
        vecs = [ts.ckks_vector_from(server_ctx, b) for b in blobs]
        t1 = time.perf_counter()
        total = vecs if total is None else [s + v for s, v in zip(total, vecs)]
        t2 = time.perf_counter()
        deser += t1 - t0
        add += t2 - t1
    del uploads
    sum_blobs = [v.serialize() for v in total]
    del total
    sum_bytes = sum(map(len, sum_blobs))
    log(f"  server: aggregated {a.clients} uploads in {deser + add:.3f} s "
        f"(deserialize {deser:.3f} s, add {add:.3f} s); sum {sum_bytes:,} bytes")

    # --- a client: deserialize and decrypt the sum ---------------------------
    t0 = time.perf_counter()
    parts = [ts.ckks_vector_from(client_ctx, b).decrypt() for b in sum_blobs]
    decrypt_seconds = time.perf_counter() - t0
    result = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    if result.shape != expected.shape:
        raise RuntimeError(f"decrypted {result.shape[0]} values, expected {params}")
    max_abs_error = float(np.abs(result - expected).max())
    log(f"  decrypted in {decrypt_seconds:.3f} s; max abs error {max_abs_error:.3e}")

    return {
        "framework": "tenseal",
        "tenseal_version": ts.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "scheme": "CKKS",
        "poly_modulus_degree": POLY_MODULUS_DEGREE,
        "coeff_mod_bit_sizes": COEFF_MOD_BIT_SIZES,
        "scale_bits": SCALE_BITS,
        "encryption_type": "symmetric",
        "slots": SLOTS,
        "packing": "tenseal-split" if splits else f"explicit-{SLOTS}",
        "params": params,
        "clients": a.clients,
        "ciphertexts_per_client": ciphertexts,
        "seed": a.seed,
        "threads": a.threads,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "encrypt_seconds_per_client": round(sum(enc_seconds) / len(enc_seconds), 6),
        "encrypt_seconds_min": round(min(enc_seconds), 6),
        "encrypt_seconds_max": round(max(enc_seconds), 6),
        "serialize_seconds_per_client": round(sum(ser_seconds) / len(ser_seconds), 6),
        "upload_bytes_per_client": round(sum(upload_bytes) / len(upload_bytes)),
        "upload_bytes_per_param": round(sum(upload_bytes) / len(upload_bytes) / params, 3),
        "aggregation_seconds": round(deser + add, 6),
        "aggregation_deserialize_seconds": round(deser, 6),
        "aggregation_add_seconds": round(add, 6),
        "decrypt_seconds": round(decrypt_seconds, 6),
        "sum_bytes": sum_bytes,
        "max_abs_error": max_abs_error,
        "max_rss_mb": max_rss_mb(),
    }


def print_table(out, recs):
    r0 = recs[0]
    print(f"TenSEAL {r0['tenseal_version']} CKKS (N={r0['poly_modulus_degree']}, "
          f"q={r0['coeff_mod_bit_sizes']}, scale 2^{r0['scale_bits']}, {r0['packing']}), "
          f"{r0['clients']} clients, {r0['threads']} thread(s), {r0['cpu_model']}", file=out)
    head = ["params", "ciphertexts", "encrypt s/client", "upload MB/client",
            "aggregate s", "decrypt s", "sum MB", "max abs error"]
    print("| " + " | ".join(head) + " |", file=out)
    print("| " + " | ".join(["---:"] * len(head)) + " |", file=out)
    for r in recs:
        print(f"| {r['params']:,} | {r['ciphertexts_per_client']} | "
              f"{r['encrypt_seconds_per_client']:.3f} | {r['upload_bytes_per_client'] / 1e6:.2f} | "
              f"{r['aggregation_seconds']:.3f} | {r['decrypt_seconds']:.3f} | "
              f"{r['sum_bytes'] / 1e6:.2f} | {r['max_abs_error']:.2e} |", file=out)
    out.flush()


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)

    # TenSEAL's C++ code writes its long-vector warning to file descriptor 1
    # at every encryption: results go to a copy of the original stdout and
    # fd 1 goes to /dev/null.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)

    try:
        import numpy as np
        import tenseal as ts
    except ImportError as e:
        print(f"error: {e}; run this from the virtual environment that "
              "scripts/bench_he_tenseal.sh creates (tenseal and numpy, pinned there)",
              file=sys.stderr)
        return 2

    log(f"TenSEAL {ts.__version__}, {a.threads} thread(s), {cpu_model()}")
    client_ctx, server_ctx = make_contexts(ts, a.threads)
    splits = tenseal_splits(ts, np, client_ctx)  # also the untimed warm-up
    if splits:
        log(f"  TenSEAL splits vectors longer than {SLOTS} values over several "
            "ciphertexts itself (its warning about disabled matmul is discarded)")
    if a.chunk:
        splits = False

    recs = []
    for params in a.params:
        log(f"params={params:,} clients={a.clients}")
        rec = measure(ts, np, a, params, client_ctx, server_ctx, splits)
        recs.append(rec)
        if a.json:
            print(json.dumps(rec), file=out, flush=True)
    if not a.json:
        print_table(out, recs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
