//! Cost of one SecAgg+ round, simulated in process (each party timed on one
//! thread). Run optimized:
//! `cargo run --release -p cohort-privacy --example secagg_timing -- [clients input_len neighbours [drop%]]`
//! Without arguments it runs the reference configurations.

use cohort_privacy::secagg::{ClientId, DEFAULT_BITS, DEFAULT_THRESHOLD, Simulation};
use std::time::Instant;

fn run(clients: u32, input_len: usize, neighbours: u32, drop_percent: u32) {
    let drops = clients * drop_percent / 100;
    // Spread the dropouts: half after sharing, half after masking.
    let pick = |offset: u32, count: u32| -> Vec<ClientId> {
        (0..count).map(|i| (offset + i * 7) % clients).collect()
    };
    let s = Simulation {
        clients,
        input_len,
        neighbours,
        threshold: DEFAULT_THRESHOLD,
        bits: DEFAULT_BITS,
        drop_after_advertise: vec![],
        drop_after_sharing: pick(1, drops / 2),
        drop_after_masking: pick(4, drops - drops / 2),
        seed: 42,
    };
    let wall = Instant::now();
    let r = s.run();
    let wall = wall.elapsed().as_secs_f64();
    let (params, k) = r.params.clone().expect("valid parameters");
    let ok = matches!(&r.sum, Ok(sum) if *sum == r.expected);
    println!(
        "clients={clients} input_len={input_len} k={k} t={} dropouts={drops}: exact={ok} | \
         client mean {:.3}s max {:.3}s | server {:.3}s | up {:.2} MiB down {:.3} MiB per client | wall {:.1}s",
        params.share_threshold,
        r.client_secs_mean,
        r.client_secs_max,
        r.server_secs,
        r.bytes_up_per_client_mean / 1048576.0,
        r.bytes_down_per_client_mean / 1048576.0,
        wall,
    );
    if let Err(e) = &r.sum {
        println!("  failed: {e}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() >= 3 {
        let clients = args[0].parse().expect("clients");
        let input_len = args[1].parse().expect("input_len");
        let neighbours = args[2].parse().expect("neighbours");
        let drop = args.get(3).map_or(0, |d| d.parse().expect("drop%"));
        run(clients, input_len, neighbours, drop);
        return;
    }
    for (clients, input_len, neighbours, drop) in [
        (10, 100_000, 9, 0),
        (10, 100_000, 9, 20),
        (100, 1_000_000, 99, 0),
        (100, 1_000_000, 20, 0),
        (100, 1_000_000, 20, 10),
    ] {
        run(clients, input_len, neighbours, drop);
    }
}
