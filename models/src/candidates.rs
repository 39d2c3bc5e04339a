//! The candidate models of contribution valuation: a round's starting model
//! plus the example-weighted mean of a coalition's updates, and their
//! validation losses.
//!
//! Permutation Shapley over 10 hospitals scores about 200 coalitions a
//! round, which would cost far more than the round's training if every
//! candidate were built and run through the network on its own. Every
//! candidate is a linear combination of the same `n + 1` vectors (the start
//! and the `n` updates) with coefficients that depend only on the coalition,
//! and the first layer is linear in its weights; so [`coalition_losses`]
//! runs the first layer once per basis vector and mixes those activations
//! (and the parameters of the later layers) with one matrix product per
//! chunk of candidates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};
use cohort_datasets::Examples;

use crate::ModelError;
use crate::ModelSpec;
use crate::net::{self, cpu, rows_tensor, tensor_to_vec};

/// The most parameter values the candidate models of one valuation task may
/// hold together (256 MiB of f32); the coordinator refuses a round that
/// would need more, and a hospital refuses a task that asks for more.
pub const MAX_CANDIDATE_VALUES: usize = 64 << 20;

/// The candidate model of a coalition of valuation players: the round's
/// starting model plus the example-weighted mean of the updates of the
/// players whose bit is set in `coalition` (the start itself for the
/// empty coalition). `players` are `(update, examples)`, bit `i` for
/// player `i`. [`coalition_losses`] scores exactly these models.
pub fn coalition_model(start: &[f32], players: &[(&[f32], u64)], coalition: u64) -> Vec<f32> {
    let weights = coalition_weights(players, coalition);
    let mut sum = vec![0f64; start.len()];
    for ((delta, _), w) in players.iter().zip(&weights) {
        if *w != 0.0 {
            for (s, d) in sum.iter_mut().zip(*delta) {
                *s += w * f64::from(*d);
            }
        }
    }
    start.iter().zip(sum).map(|(m, s)| m + s as f32).collect()
}

/// Each player's weight in a coalition's model: its share of the
/// coalition's examples, 0 outside it (all 0 when the coalition holds no
/// examples).
fn coalition_weights(players: &[(&[f32], u64)], coalition: u64) -> Vec<f64> {
    let total = coalition_examples(players, coalition);
    let mut weights = vec![0.0; players.len()];
    if total > 0 {
        for i in members(coalition, players.len()) {
            weights[i] = players[i].1 as f64 / total as f64;
        }
    }
    weights
}

/// The examples a coalition's members hold together.
fn coalition_examples(players: &[(&[f32], u64)], coalition: u64) -> u64 {
    members(coalition, players.len())
        .map(|i| players[i].1)
        .sum()
}

/// How one chunk of candidates is mixed, decided once for every row chunk:
/// each candidate's example-weighted sum of its members' vectors is built
/// from a coalition of the chunk one member smaller (permutation sampling
/// scores every prefix of its orders) or one member larger (stratified
/// sampling scores every leave-one-out beside the full coalition), so a
/// candidate costs two passes over its activations and parameters, however
/// many members it has. Only a candidate with no such neighbour is summed
/// member by member.
struct MixPlan {
    /// In processing order: the candidate's index in the chunk and how its
    /// sum is built.
    steps: Vec<(usize, Mix)>,
    /// Per candidate: 1 / its examples (0 for none), turning the sum into
    /// the mean update added to the start.
    scales: Vec<f32>,
}

enum Mix {
    /// Every member's weighted vector, from zero.
    Members(Vec<usize>),
    /// Another candidate's sum plus one player's weighted vector.
    Add { from: usize, player: usize },
    /// Another candidate's sum minus one player's weighted vector.
    Remove { from: usize, player: usize },
}

impl MixPlan {
    fn new(players: &[(&[f32], u64)], chunk: &[u64]) -> Self {
        let n = players.len();
        let mut order: Vec<usize> = (0..chunk.len()).collect();
        order.sort_by_key(|&k| chunk[k].count_ones());
        let mut done: HashMap<u64, usize, BuildHasherDefault<CoalitionHasher>> =
            HashMap::with_capacity_and_hasher(chunk.len(), Default::default());
        let mut steps = Vec::with_capacity(chunk.len());
        let mut waiting = Vec::new();
        for k in order {
            let coalition = chunk[k];
            let smaller = members(coalition, n)
                .find_map(|i| done.get(&(coalition & !(1 << i))).map(|&from| (i, from)));
            match smaller {
                Some((player, from)) => {
                    steps.push((k, Mix::Add { from, player }));
                    done.insert(coalition, k);
                }
                None if coalition == 0 => {
                    steps.push((k, Mix::Members(Vec::new())));
                    done.insert(coalition, k);
                }
                None => waiting.push(k),
            }
        }
        // The rest, largest first, so that a leave-one-out finds the full
        // coalition (and a smaller one a leave-one-out) already built.
        waiting.sort_by_key(|&k| std::cmp::Reverse(chunk[k].count_ones()));
        for k in waiting {
            let coalition = chunk[k];
            let larger = (0..n)
                .filter(|&i| coalition & (1 << i) == 0)
                .find_map(|i| done.get(&(coalition | (1 << i))).map(|&from| (i, from)));
            steps.push(match larger {
                Some((player, from)) => (k, Mix::Remove { from, player }),
                None => (k, Mix::Members(members(coalition, n).collect())),
            });
            done.insert(coalition, k);
        }
        let scales = chunk
            .iter()
            .map(|&c| match coalition_examples(players, c) {
                0 => 0.0,
                total => (1.0 / total as f64) as f32,
            })
            .collect();
        Self { steps, scales }
    }
}

/// Mean BCE loss on `data` of each coalition's candidate model
/// ([`coalition_model`]), in `coalitions` order: the `loss` that
/// [`crate::evaluate`] reports for each, up to f32 rounding.
///
/// The first layer runs once for the start and once per update; a chunk of
/// candidates then gets its first-layer activations, and its parameters of
/// the later layers, as one product of its `[chunk, n + 1]` coefficient
/// matrix with those, and runs the later layers as batched products.
pub fn coalition_losses(
    spec: &ModelSpec,
    start: &[f32],
    players: &[(&[f32], u64)],
    coalitions: &[u64],
    data: &Examples,
) -> Result<Vec<f64>, ModelError> {
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        // SAFETY: this CPU has AVX, checked just above.
        return unsafe { score_avx(spec, start, players, coalitions, data) };
    }
    score(spec, start, players, coalitions, data)
}

/// [`score`] compiled for AVX: twice the lanes of the x86-64 baseline and
/// the same results (no fused multiply-adds, sums in the same order), so a
/// hospital's losses do not depend on its processor.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn score_avx(
    spec: &ModelSpec,
    start: &[f32],
    players: &[(&[f32], u64)],
    coalitions: &[u64],
    data: &Examples,
) -> Result<Vec<f64>, ModelError> {
    score(spec, start, players, coalitions, data)
}

#[inline(always)]
fn score(
    spec: &ModelSpec,
    start: &[f32],
    players: &[(&[f32], u64)],
    coalitions: &[u64],
    data: &Examples,
) -> Result<Vec<f64>, ModelError> {
    net::check_model_and_data(spec, start, data)?;
    if players.len() > 64 {
        return Err(ModelError::InvalidData(format!(
            "{} valuation players; a coalition names at most 64",
            players.len()
        )));
    }
    if let Some(i) = players.iter().position(|(u, _)| u.len() != start.len()) {
        return Err(ModelError::InvalidData(format!(
            "player {i}'s update has {} values, the model {}",
            players[i].0.len(),
            start.len()
        )));
    }
    // A product with a zero weight still spreads a NaN, so one non-finite
    // value would spoil every candidate, not only its player's coalitions.
    for (i, (update, _)) in players.iter().enumerate() {
        // A pass without an early exit vectorizes; the position is only
        // looked for once something is wrong.
        if !update.iter().fold(true, |ok, v| ok & v.is_finite()) {
            let j = update
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or_default();
            return Err(ModelError::InvalidData(format!(
                "player {i}'s update has a non-finite value at index {j}"
            )));
        }
    }
    let everyone = if players.is_empty() {
        0
    } else {
        u64::MAX >> (64 - players.len())
    };
    if let Some(c) = coalitions.iter().find(|&&c| c & !everyone != 0) {
        return Err(ModelError::InvalidData(format!(
            "coalition {c:#x} names a player beyond the first {}",
            players.len()
        )));
    }
    if coalitions.is_empty() {
        return Ok(Vec::new());
    }

    let device = cpu();
    let shapes = spec.layer_shapes(data.n_features);
    let (fan_in, width) = shapes[0];
    let first_len = fan_in * width + width;
    let basis = players.len() + 1;
    let vectors: Vec<&[f32]> = std::iter::once(start)
        .chain(players.iter().map(|(u, _)| *u))
        .collect();
    // Chunks of rows and of candidates keep every activation and parameter
    // block under a fixed size, whatever the validation split and model.
    const CHUNK_FLOATS: usize = 1 << 22;
    let widest = shapes.iter().map(|&(i, o)| i.max(o)).max().unwrap_or(1);
    let rest_len = start.len() - first_len;
    let rows_per_chunk = (CHUNK_FLOATS / (basis * widest).max(1)).max(1);
    let all_rows: Vec<usize> = (0..data.labels.len()).collect();
    let most_rows = rows_per_chunk.min(all_rows.len());
    let per_chunk = (CHUNK_FLOATS / (most_rows * widest).max(rest_len).max(1)).max(1);
    let plans: Vec<MixPlan> = coalitions
        .chunks(per_chunk)
        .map(|chunk| MixPlan::new(players, chunk))
        .collect();
    let mut totals = vec![0f64; coalitions.len()];
    for row_chunk in all_rows.chunks(rows_per_chunk) {
        let rows = row_chunk.len();
        let span = rows * width;
        let labels: Vec<f32> = row_chunk.iter().map(|&r| data.labels[r]).collect();
        let first = first_layers(data, row_chunk, &vectors, (fan_in, width), &device)?;
        let first_of = |i: usize| &first[i * span..(i + 1) * span];
        for (chunk_index, plan) in plans.iter().enumerate() {
            let c = plan.scales.len();
            let mut h = vec![0f32; c * span];
            let mut params = vec![0f32; c * rest_len];
            for (k, mix) in &plan.steps {
                let (from, terms): (Option<usize>, Vec<(usize, f32)>) = match mix {
                    Mix::Members(all) => (None, all.iter().map(|&i| (i, 1.0)).collect()),
                    Mix::Add { from, player } => (Some(*from), vec![(*player, 1.0)]),
                    Mix::Remove { from, player } => (Some(*from), vec![(*player, -1.0)]),
                };
                if let Some(from) = from {
                    h.copy_within(from * span..(from + 1) * span, *k * span);
                    params.copy_within(from * rest_len..(from + 1) * rest_len, *k * rest_len);
                }
                let h = &mut h[*k * span..(*k + 1) * span];
                let params = &mut params[*k * rest_len..(*k + 1) * rest_len];
                for (i, sign) in terms {
                    let weight = sign * players[i].1 as f32;
                    axpy(weight, first_of(i + 1), h);
                    axpy(weight, &vectors[i + 1][first_len..], params);
                }
            }
            // Then each candidate: the start plus the mean of those updates.
            for (k, &scale) in plan.scales.iter().enumerate() {
                scale_add(scale, first_of(0), &mut h[k * span..(k + 1) * span]);
                scale_add(
                    scale,
                    &start[first_len..],
                    &mut params[k * rest_len..(k + 1) * rest_len],
                );
            }
            let logits = later_layers(&shapes, h, &params, (c, rows), &device)?;
            let first_candidate = chunk_index * per_chunk;
            for (total, logits) in totals[first_candidate..]
                .iter_mut()
                .zip(logits.chunks(rows))
            {
                *total += logits
                    .iter()
                    .zip(&labels)
                    .map(|(&z, &y)| net::bce_scalar(f64::from(z), f64::from(y)))
                    .sum::<f64>();
            }
        }
    }
    let rows = data.labels.len() as f64;
    totals
        .into_iter()
        .enumerate()
        .map(|(candidate, total)| {
            if total.is_finite() {
                Ok(total / rows)
            } else {
                Err(ModelError::Backend(format!(
                    "candidate model {candidate} produced a non-finite loss"
                )))
            }
        })
        .collect()
}

/// The first layer (before its activation) of every basis vector on the
/// given rows: `[basis, rows, width]`. Small problems run as plain loops,
/// where burn's per-call cost would be most of the time; large ones as a
/// batched product.
#[inline(always)]
fn first_layers(
    data: &Examples,
    rows: &[usize],
    vectors: &[&[f32]],
    (fan_in, width): (usize, usize),
    device: &burn::tensor::Device,
) -> Result<Vec<f32>, ModelError> {
    let basis = vectors.len();
    let weights = fan_in * width;
    if rows.len() * weights * basis <= SMALL_PRODUCT {
        let mut x = Vec::with_capacity(rows.len() * fan_in);
        for &r in rows {
            x.extend_from_slice(&data.features[r * fan_in..(r + 1) * fan_in]);
        }
        let mut out = Vec::with_capacity(basis * rows.len() * width);
        for v in vectors {
            dense(&x, &v[..weights + width], (fan_in, width), false, &mut out);
        }
        return Ok(out);
    }
    let mut w = Vec::with_capacity(basis * weights);
    let mut b = Vec::with_capacity(basis * width);
    for v in vectors {
        w.extend_from_slice(&v[..weights]);
        b.extend_from_slice(&v[weights..weights + width]);
    }
    let w = Tensor::<3>::from_data(TensorData::new(w, [basis, fan_in, width]), device);
    let b = Tensor::<3>::from_data(TensorData::new(b, [basis, 1, width]), device);
    let x = rows_tensor(data, rows, device)
        .unsqueeze_dim::<3>(0)
        .expand([basis, rows.len(), fan_in]);
    tensor_to_vec(x.matmul(w) + b.expand([basis, rows.len(), width]))
}

/// Coalitions are looked up once per member while mixing; SipHash would
/// cost more than the arithmetic. A multiplicative hash spreads the bits of
/// a coalition over the top bits the map's groups use.
#[derive(Default)]
struct CoalitionHasher(u64);

impl Hasher for CoalitionHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, coalition: u64) {
        self.0 = coalition.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The players of a coalition, by bit.
fn members(coalition: u64, players: usize) -> impl Iterator<Item = usize> {
    (0..players.min(64)).filter(move |&i| coalition & (1 << i) != 0)
}

/// `y = x + a * y`.
#[inline(always)]
fn scale_add(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = x + a * *y;
    }
}

/// Below this many multiply-adds a layer runs as plain loops: burn's cost
/// per call would be most of the time.
const SMALL_PRODUCT: usize = 1 << 22;

/// Appends `x @ w + b` for every row of `x` (`[rows, fan_in]`) to `out`;
/// `layer` is the flat `[fan_in, fan_out]` weight then the bias. With
/// `relu_inputs`, the inputs are the previous layer's pre-activations.
#[inline(always)]
fn dense(x: &[f32], layer: &[f32], shape: (usize, usize), relu_inputs: bool, out: &mut Vec<f32>) {
    dense_with(x, layer, shape, relu_inputs, true, out);
}

/// Whether this CPU runs the AVX kernel of [`dense`].
fn has_avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`dense`], with the AVX kernel where `use_avx` asks for it and the CPU
/// has it.
#[inline(always)]
fn dense_with(
    x: &[f32],
    layer: &[f32],
    (fan_in, fan_out): (usize, usize),
    relu_inputs: bool,
    use_avx: bool,
    out: &mut Vec<f32>,
) {
    let (w, b) = layer.split_at(fan_in * fan_out);
    #[cfg(target_arch = "x86_64")]
    let avx = use_avx && has_avx();
    #[cfg(not(target_arch = "x86_64"))]
    let _ = use_avx;
    // Per row: each input that is on, with where its weights start. About
    // half of a hidden layer's units are off, at random, so they are
    // dropped without a branch to mispredict.
    let mut inputs = vec![(0f32, 0usize); fan_in];
    for row in x.chunks_exact(fan_in) {
        let mut on = 0;
        for (i, &x) in row.iter().enumerate() {
            let x = if relu_inputs { x.max(0.0) } else { x };
            inputs[on] = (x, i * fan_out);
            on += usize::from(!relu_inputs || x != 0.0);
        }
        let active = &inputs[..on];
        let start = out.len();
        out.extend_from_slice(b);
        let h = &mut out[start..];
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if avx {
            // SAFETY: this CPU has AVX, checked above.
            done = unsafe { dense_row_avx(active, w, h) };
        }
        for &(x, at) in active {
            axpy(x, &w[at + done..at + fan_out], &mut h[done..]);
        }
    }
}

/// One row of [`dense`] (its `active` inputs), its outputs in blocks of
/// eight, each summed in a register in input order with separate multiplies
/// and adds: the same sums as the plain loop. Returns how many outputs it
/// summed (fewer than eight are left).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dense_row_avx(active: &[(f32, usize)], w: &[f32], h: &mut [f32]) -> usize {
    let fan_out = h.len();
    let mut at = 0;
    while fan_out - at >= 32 {
        sum_blocks_avx::<4>(active, w, h, at);
        at += 32;
    }
    if fan_out - at >= 16 {
        sum_blocks_avx::<2>(active, w, h, at);
        at += 16;
    }
    if fan_out - at >= 8 {
        sum_blocks_avx::<1>(active, w, h, at);
        at += 8;
    }
    at
}

/// Outputs `at..at + 8K` of [`dense_row_avx`], in `K` registers, so each
/// input is broadcast once for all of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
fn sum_blocks_avx<const K: usize>(active: &[(f32, usize)], w: &[f32], h: &mut [f32], at: usize) {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let out = &mut h[at..at + 8 * K];
    let mut sums = [_mm256_setzero_ps(); K];
    for (k, sum) in sums.iter_mut().enumerate() {
        // SAFETY: `out` holds 8K f32.
        *sum = unsafe { _mm256_loadu_ps(out.as_ptr().add(8 * k)) };
    }
    for &(x, start) in active {
        let x = _mm256_set1_ps(x);
        let w = &w[start + at..start + at + 8 * K];
        for (k, sum) in sums.iter_mut().enumerate() {
            // SAFETY: `w` holds 8K f32.
            let w = unsafe { _mm256_loadu_ps(w.as_ptr().add(8 * k)) };
            *sum = _mm256_add_ps(*sum, _mm256_mul_ps(x, w));
        }
    }
    for (k, sum) in sums.iter().enumerate() {
        // SAFETY: `out` holds 8K f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), *sum) };
    }
}

/// `y += a * x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The logits `[c × rows]` of `c` candidates from their first layer's
/// output `h` (`[c, rows, width]`, before the activation) and their
/// parameters of the later layers (`params`, `[c, rest]`). Hidden layers
/// run as batched products when they are large, as loops when they are
/// small; the single-logit output layer as dot products.
#[inline(always)]
fn later_layers(
    shapes: &[(usize, usize)],
    mut h: Vec<f32>,
    params: &[f32],
    (c, rows): (usize, usize),
    device: &burn::tensor::Device,
) -> Result<Vec<f32>, ModelError> {
    let Some((&(last_in, _), hidden)) = shapes[1..].split_last() else {
        return Ok(h);
    };
    let rest = params.len() / c.max(1);
    let mut width = shapes[0].1;
    let mut offset = 0;
    if !hidden.is_empty()
        && c * rows * hidden.iter().map(|&(i, o)| i * o).sum::<usize>() <= SMALL_PRODUCT
    {
        for &(fan_in, fan_out) in hidden {
            let mut next = Vec::with_capacity(c * rows * fan_out);
            for (h, p) in h.chunks(rows * fan_in).zip(params.chunks(rest)) {
                let layer = &p[offset..offset + fan_in * fan_out + fan_out];
                dense(h, layer, (fan_in, fan_out), true, &mut next);
            }
            offset += fan_in * fan_out + fan_out;
            h = next;
            width = fan_out;
        }
    } else if !hidden.is_empty() {
        let mut t = Tensor::<3>::from_data(TensorData::new(h, [c, rows, width]), device);
        for &(fan_in, fan_out) in hidden {
            let mut w = Vec::with_capacity(c * fan_in * fan_out);
            let mut b = Vec::with_capacity(c * fan_out);
            for p in params.chunks(rest) {
                w.extend_from_slice(&p[offset..offset + fan_in * fan_out]);
                b.extend_from_slice(
                    &p[offset + fan_in * fan_out..offset + fan_in * fan_out + fan_out],
                );
            }
            offset += fan_in * fan_out + fan_out;
            let w = Tensor::<3>::from_data(TensorData::new(w, [c, fan_in, fan_out]), device);
            let b = Tensor::<3>::from_data(TensorData::new(b, [c, 1, fan_out]), device);
            t = relu(t).matmul(w) + b.expand([c, rows, fan_out]);
            width = fan_out;
        }
        h = tensor_to_vec(t)?;
    }
    debug_assert_eq!(width, last_in);
    let mut logits = Vec::with_capacity(c * rows);
    for (h, p) in h.chunks(rows * width).zip(params.chunks(rest)) {
        let (w, b) = (&p[offset..offset + width], p[offset + width]);
        for row in h.chunks(width) {
            logits.push(relu_dot(row, w) + b);
        }
    }
    Ok(logits)
}

/// `Σ max(a, 0) · w`, in eight independent sums so that it vectorizes.
#[inline(always)]
fn relu_dot(a: &[f32], w: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() - a.len() % 8);
    let (w8, w_tail) = w.split_at(a8.len());
    for (a, w) in a8.chunks_exact(8).zip(w8.chunks_exact(8)) {
        for i in 0..8 {
            lanes[i] += a[i].max(0.0) * w[i];
        }
    }
    let tail: f32 = a_tail
        .iter()
        .zip(w_tail)
        .map(|(&a, &w)| a.max(0.0) * w)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The AVX kernel must give a hospital the same losses on any CPU: the
    /// same sums, bit for bit, as the plain loop, for widths with and
    /// without a remainder of eight and for ReLU inputs (half of them off).
    #[test]
    fn avx_dense_equals_the_plain_loop_bit_for_bit() {
        if !has_avx() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (fan_in, fan_out) in [(30, 32), (32, 16), (16, 8), (7, 45), (64, 3)] {
            for relu_inputs in [false, true] {
                let x: Vec<f32> = (0..11 * fan_in)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let layer: Vec<f32> = (0..fan_in * fan_out + fan_out)
                    .map(|_| rng.random_range(-0.5..0.5))
                    .collect();
                let (mut plain, mut avx) = (Vec::new(), Vec::new());
                dense_with(
                    &x,
                    &layer,
                    (fan_in, fan_out),
                    relu_inputs,
                    false,
                    &mut plain,
                );
                dense_with(&x, &layer, (fan_in, fan_out), relu_inputs, true, &mut avx);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&plain),
                    bits(&avx),
                    "{fan_in} x {fan_out}, relu {relu_inputs}"
                );
            }
        }
    }
}
