//! In-process run of the whole protocol, for tests and benchmarks.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{
    Advertisement, ClientId, ClientRound, Params, SecAggError, ServerRound, decode_reveals,
    decode_shares, encode_reveals, encode_shares, graph_seed, neighbourhoods,
};
use crate::quantize::{add_mod, pack, unpack};

/// One simulated round: `clients` clients with random inputs in
/// `Z_{2^bits}^input_len`, some of which drop out after a given stage.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub clients: u32,
    pub input_len: usize,
    /// Requested neighbours per client (k); see [`super::effective_degree`].
    pub neighbours: u32,
    /// Share threshold fraction, in `(1/2, 1]`.
    pub threshold: f64,
    pub bits: u32,
    /// Advertised, then vanished before sending shares.
    pub drop_after_advertise: Vec<ClientId>,
    /// Sent shares, then vanished before sending a masked input.
    pub drop_after_sharing: Vec<ClientId>,
    /// Sent a masked input, then vanished before unmasking.
    pub drop_after_masking: Vec<ClientId>,
    pub seed: u64,
}

/// What a [`Simulation`] produced and what it cost.
#[derive(Debug)]
pub struct SimulationReport {
    /// What the server computed.
    pub sum: Result<Vec<u64>, SecAggError>,
    /// Plain sum of the survivors' (`U3`'s) inputs, computed from the
    /// client side.
    pub expected: Vec<u64>,
    /// Mean and max of each client's own CPU time (thread CPU clock),
    /// summed over its stages. The mean is over the clients that completed
    /// every stage (all clients if none did).
    pub client_secs_mean: f64,
    pub client_secs_max: f64,
    /// The server's own CPU time, all stages and `finish`.
    pub server_secs: f64,
    /// Wire bytes sent / received per client (mean over the clients that
    /// completed every stage, like the CPU time): advertisement, share batches,
    /// packed masked vector, reveals up; neighbours' advertisements (4-byte
    /// id each), forwarded shares and the survivor list (4 bytes per id)
    /// down.
    pub bytes_up_per_client_mean: f64,
    pub bytes_down_per_client_mean: f64,
    /// Clients that refused or failed a stage, with why.
    pub client_errors: Vec<(ClientId, SecAggError)>,
    /// The parameters and neighbour degree used (`None` if rejected).
    pub params: Option<(Params, u32)>,
}

/// CPU time of the calling thread. Every party runs on this one thread,
/// one after another, so a party's CPU time is its own, and other work on a
/// busy machine does not inflate it the way wall time would.
#[cfg(unix)]
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return wall_now();
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn cpu_now() -> Duration {
    wall_now()
}

/// Wall time since the first call, where no thread CPU clock exists.
fn wall_now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = cpu_now();
    let out = f();
    *acc += cpu_now().saturating_sub(start);
    out
}

impl Simulation {
    /// Runs the round. Never panics on protocol failures: they end up in
    /// `sum` (server side) or `client_errors`.
    pub fn run(&self) -> SimulationReport {
        let n = self.clients as usize;
        let mut report = SimulationReport {
            sum: Err(SecAggError::TooFewSurvivors { have: 0, need: 1 }),
            expected: Vec::new(),
            client_secs_mean: 0.0,
            client_secs_max: 0.0,
            server_secs: 0.0,
            bytes_up_per_client_mean: 0.0,
            bytes_down_per_client_mean: 0.0,
            client_errors: Vec::new(),
            params: None,
        };
        let (params, k) = match Params::from_fractions(
            self.clients,
            self.neighbours,
            self.threshold,
            self.bits,
        ) {
            Ok(p) => p,
            Err(e) => {
                report.sum = Err(e);
                return report;
            }
        };
        report.params = Some((params.clone(), k));
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let session = format!("cohort-simulation/{}", self.seed).into_bytes();
        let graph = neighbourhoods(self.clients, k, &graph_seed(&session));
        let input_seeds: Vec<u64> = (0..n).map(|_| rng.next_u64()).collect();
        let mask = params.mask();
        let bits = params.bits;

        let mut server_time = Duration::ZERO;
        let mut client_time = vec![Duration::ZERO; n];
        let mut up = vec![0usize; n];
        let mut down = vec![0usize; n];
        let mut completed = vec![false; n];
        let dropped = |list: &[ClientId], u: usize| list.contains(&(u as ClientId));

        let mut server = timed(&mut server_time, || {
            ServerRound::new(&session, params.clone(), graph.clone(), self.input_len)
        });
        let mut clients: Vec<Option<ClientRound>> = Vec::with_capacity(n);

        // Stage 1: advertise.
        for (u, nbrs) in graph.iter().enumerate() {
            let made = timed(&mut client_time[u], || {
                ClientRound::new(
                    &session,
                    params.clone(),
                    u as ClientId,
                    nbrs.clone(),
                    &mut rng,
                )
                .map(|(c, ad)| (c, ad.to_bytes()))
            });
            match made {
                Ok((client, bytes)) => {
                    up[u] += bytes.len();
                    let accepted = timed(&mut server_time, || {
                        Advertisement::from_bytes(&bytes)
                            .and_then(|ad| server.advertised(u as ClientId, ad))
                    });
                    clients.push(accepted.is_ok().then_some(client));
                }
                Err(e) => {
                    report.client_errors.push((u as ClientId, e));
                    clients.push(None);
                }
            }
        }

        // Stage 2: share keys.
        for u in 0..n {
            if dropped(&self.drop_after_advertise, u) {
                clients[u] = None;
            }
            let Some(client) = clients[u].as_mut() else {
                continue;
            };
            let adverts = timed(&mut server_time, || server.adverts_for(u as ClientId));
            down[u] += adverts.len() * (4 + Advertisement::BYTES);
            let sent = timed(&mut client_time[u], || {
                client
                    .share_keys(&adverts, &mut rng)
                    .map(|b| encode_shares(&b))
            });
            match sent {
                Ok(bytes) => {
                    up[u] += bytes.len();
                    let accepted = timed(&mut server_time, || {
                        decode_shares(&bytes).and_then(|b| server.shares_sent(u as ClientId, b))
                    });
                    if accepted.is_err() {
                        clients[u] = None;
                    }
                }
                Err(e) => {
                    report.client_errors.push((u as ClientId, e));
                    clients[u] = None;
                }
            }
        }

        // Stage 3: masked input.
        let mut expected = vec![0u64; self.input_len];
        for u in 0..n {
            if dropped(&self.drop_after_sharing, u) {
                clients[u] = None;
            }
            let Some(client) = clients[u].as_mut() else {
                continue;
            };
            let forwarded = timed(&mut server_time, || {
                encode_shares(&server.shares_for(u as ClientId))
            });
            down[u] += forwarded.len();
            let mut input_rng = ChaCha20Rng::seed_from_u64(input_seeds[u]);
            let input: Vec<u64> = (0..self.input_len)
                .map(|_| input_rng.next_u64() & mask)
                .collect();
            let masked = timed(&mut client_time[u], || {
                decode_shares(&forwarded)
                    .and_then(|received| client.mask(&input, &received))
                    .map(|y| pack(&y, bits))
            });
            match masked {
                Ok(bytes) => {
                    up[u] += bytes.len();
                    let accepted = timed(&mut server_time, || {
                        unpack(&bytes, bits, self.input_len)
                            .map_err(|e| SecAggError::Malformed(e.to_string()))
                            .and_then(|y| server.masked_input(u as ClientId, y))
                    });
                    match accepted {
                        Ok(()) => add_mod(&mut expected, &input, bits),
                        Err(_) => clients[u] = None,
                    }
                }
                Err(e) => {
                    report.client_errors.push((u as ClientId, e));
                    clients[u] = None;
                }
            }
        }
        report.expected = expected;

        // Stage 4: unmask.
        let survivors: BTreeSet<ClientId> = timed(&mut server_time, || server.survivors());
        for u in 0..n {
            if dropped(&self.drop_after_masking, u) {
                clients[u] = None;
            }
            let Some(client) = clients[u].as_mut() else {
                continue;
            };
            down[u] += 4 * survivors.len();
            let revealed = timed(&mut client_time[u], || {
                client.unmask(&survivors).map(|r| encode_reveals(&r))
            });
            match revealed {
                Ok(bytes) => {
                    up[u] += bytes.len();
                    let accepted = timed(&mut server_time, || {
                        decode_reveals(&bytes).and_then(|r| server.reveal(u as ClientId, r))
                    });
                    completed[u] = accepted.is_ok();
                }
                Err(e) => report.client_errors.push((u as ClientId, e)),
            }
        }
        drop(clients);
        report.sum = timed(&mut server_time, || server.finish());

        let secs: BTreeMap<usize, f64> = client_time
            .iter()
            .enumerate()
            .map(|(u, d)| (u, d.as_secs_f64()))
            .collect();
        let done: Vec<f64> = (0..n).filter(|&u| completed[u]).map(|u| secs[&u]).collect();
        let pool: Vec<f64> = if done.is_empty() {
            secs.values().copied().collect()
        } else {
            done
        };
        report.client_secs_mean = pool.iter().sum::<f64>() / pool.len().max(1) as f64;
        report.client_secs_max = secs.values().copied().fold(0.0, f64::max);
        report.server_secs = server_time.as_secs_f64();
        // Like CPU time, bytes are averaged over the clients that completed
        // the round (all clients if none did).
        let counted: Vec<usize> = if (0..n).any(|u| completed[u]) {
            (0..n).filter(|&u| completed[u]).collect()
        } else {
            (0..n).collect()
        };
        let mean = |v: &[usize]| {
            counted.iter().map(|&u| v[u]).sum::<usize>() as f64 / counted.len().max(1) as f64
        };
        report.bytes_up_per_client_mean = mean(&up);
        report.bytes_down_per_client_mean = mean(&down);
        report
    }
}
