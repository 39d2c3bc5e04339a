//! Private set intersection of patient ids across sites: ECDH-PSI on ristretto255.
//!
//! Every site `i` holds a secret scalar `kᵢ` ([`PsiKey`]). An id `x` is hashed to the group,
//! `H(x) = from_uniform_bytes(SHA-512(salt ‖ x))`, and each site's list goes round the ring of
//! sites, every site raising it to its own key ([`PsiKey::blind`]): after all `n` sites,
//! `H(x)^{k₁…kₙ}` is the same point for the same id wherever it started, and under the
//! decisional Diffie–Hellman assumption it says nothing about `x` to anyone missing a key.
//!
//! Who learns what, with the coordinator relaying every list:
//! - before the last key, the lists the coordinator sees carry different sets of keys, so
//!   they cannot be compared with each other; each site's list is shuffled by the site
//!   before it leaves, so positions say nothing either;
//! - the coordinator compares the fully blinded lists ([`intersect`]): it learns how many ids
//!   the sites share (and how many each subset of sites shares), never an id;
//! - each site learns which of its own rows are in the intersection, in one common order
//!   (sorted by blinded value, a pseudo-random order no site chose), and nothing about the
//!   other sites' ids outside it.
//!
//! The salt (the job's id) keeps blinded values of one job useless in another. The work is
//! one scalar multiplication per id per site, spread over threads with rayon.

use std::collections::{HashMap, HashSet};

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rand::RngCore;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use sha2::{Digest, Sha512};

/// A blinded id: a compressed ristretto255 point.
pub type Blinded = [u8; 32];

/// What can go wrong in a private set intersection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PsiError {
    /// The same id appears twice in one site's list.
    #[error("id {id:?} appears more than once (rows {first} and {second})")]
    DuplicateId {
        id: String,
        first: usize,
        second: usize,
    },
    /// An id cell is empty.
    #[error("row {0} has no id")]
    MissingId(usize),
    /// A value received for blinding is not a valid group element.
    #[error("value {0} of the list is not a ristretto255 point")]
    NotAPoint(usize),
    /// The sites share no id at all.
    #[error("the sites have no id in common: nothing to train on")]
    EmptyIntersection,
    /// The lists to intersect are not what the protocol produces.
    #[error("{0}")]
    Malformed(String),
}

/// A site's secret exponent for one intersection.
pub struct PsiKey(Scalar);

impl PsiKey {
    /// A fresh key from the operating system's randomness.
    pub fn random() -> Self {
        let mut wide = [0u8; 64];
        rand::rng().fill_bytes(&mut wide);
        Self(Scalar::from_bytes_mod_order_wide(&wide))
    }

    /// Raises every point of `list` to this key, in order, on rayon's threads.
    pub fn blind(&self, list: &[Blinded]) -> Result<Vec<Blinded>, PsiError> {
        list.par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let point = CompressedRistretto(*bytes)
                    .decompress()
                    .ok_or(PsiError::NotAPoint(i))?;
                Ok((point * self.0).compress().to_bytes())
            })
            .collect()
    }

    /// Hashes `ids` to the group and blinds them with this key: the list a site sends first.
    pub fn blind_ids(&self, salt: &[u8], ids: &[String]) -> Vec<Blinded> {
        ids.par_iter()
            .map(|id| (hash_to_group(salt, id) * self.0).compress().to_bytes())
            .collect()
    }
}

/// `H(x)`: SHA-512 of the length-prefixed salt and the id, mapped to ristretto255 by the
/// Elligator-based `from_uniform_bytes` (RFC 9496 §4.3.4).
pub fn hash_to_group(salt: &[u8], id: &str) -> RistrettoPoint {
    let mut h = Sha512::new();
    h.update(b"cohort/psi/v1\0");
    h.update((salt.len() as u64).to_le_bytes());
    h.update(salt);
    h.update(id.as_bytes());
    let mut digest = [0u8; 64];
    digest.copy_from_slice(&h.finalize());
    RistrettoPoint::from_uniform_bytes(&digest)
}

/// A site's ids, checked (no empty cell, no duplicate) and shuffled for sending: the
/// shuffled ids and, for each, its row in the site's file.
pub fn prepare_ids(ids: &[Option<String>]) -> Result<(Vec<String>, Vec<usize>), PsiError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        let id = id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(PsiError::MissingId(row))?;
        if let Some(first) = seen.insert(id, row) {
            return Err(PsiError::DuplicateId {
                id: id.to_string(),
                first,
                second: row,
            });
        }
    }
    let mut rows: Vec<usize> = (0..ids.len()).collect();
    rows.shuffle(&mut rand::rng());
    let shuffled = rows
        .iter()
        .map(|&r| {
            ids[r]
                .as_deref()
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    Ok((shuffled, rows))
}

/// Intersects fully blinded lists, one per site: for each site, the positions (in its list)
/// of the shared ids, all sites in the same order (ascending blinded value).
pub fn intersect(lists: &[Vec<Blinded>]) -> Result<Vec<Vec<usize>>, PsiError> {
    if lists.len() < 2 {
        return Err(PsiError::Malformed(format!(
            "an intersection needs at least 2 sites, got {}",
            lists.len()
        )));
    }
    let mut common: HashSet<Blinded> = lists[0].iter().copied().collect();
    if common.len() != lists[0].len() {
        return Err(PsiError::Malformed("site 0 sent a repeated value".into()));
    }
    for (i, list) in lists.iter().enumerate().skip(1) {
        let set: HashSet<Blinded> = list.iter().copied().collect();
        if set.len() != list.len() {
            return Err(PsiError::Malformed(format!(
                "site {i} sent a repeated value"
            )));
        }
        common.retain(|v| set.contains(v));
    }
    if common.is_empty() {
        return Err(PsiError::EmptyIntersection);
    }
    let mut order: Vec<Blinded> = common.into_iter().collect();
    order.sort_unstable();
    Ok(lists
        .iter()
        .map(|list| {
            let position: HashMap<&Blinded, usize> =
                list.iter().enumerate().map(|(i, v)| (v, i)).collect();
            order.iter().map(|v| position[v]).collect()
        })
        .collect())
}

/// The whole protocol between `sites` in one process (tests, benchmarks, and the shape of
/// the relayed version): for each site, its rows of the intersection in the common order.
///
/// Round `s` (1 ≤ s < n) hands site `j` the list that started at site `j − s`, already
/// blinded by sites `j − s … j − 1`, exactly as the coordinator relays it.
pub fn run_in_process(
    salt: &[u8],
    sites: &[Vec<Option<String>>],
) -> Result<Vec<Vec<usize>>, PsiError> {
    let n = sites.len();
    let keys: Vec<PsiKey> = (0..n).map(|_| PsiKey::random()).collect();
    let mut rows_of = Vec::with_capacity(n);
    let mut lists = Vec::with_capacity(n);
    for (site, ids) in sites.iter().enumerate() {
        let (shuffled, rows) = prepare_ids(ids)?;
        lists.push(keys[site].blind_ids(salt, &shuffled));
        rows_of.push(rows);
    }
    for step in 1..n {
        for (origin, list) in lists.iter_mut().enumerate() {
            let holder = (origin + step) % n;
            *list = keys[holder].blind(list)?;
        }
    }
    let positions = intersect(&lists)?;
    Ok(positions
        .into_iter()
        .zip(rows_of)
        .map(|(pos, rows)| pos.into_iter().map(|p| rows[p]).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Vec<Option<String>> {
        range.map(|i| Some(format!("patient-{i}"))).collect()
    }

    #[test]
    fn finds_exactly_the_intersection_in_one_order() {
        let a = ids(0..60);
        let b = ids(20..90);
        let mut c = ids(10..50);
        c.reverse();
        let rows = run_in_process(b"job-1", &[a.clone(), b.clone(), c.clone()]).unwrap();
        let expected: HashSet<String> = (20..50).map(|i| format!("patient-{i}")).collect();
        assert_eq!(rows[0].len(), expected.len());
        let named = |site: &[Option<String>], r: &[usize]| -> Vec<String> {
            r.iter().map(|&i| site[i].clone().unwrap()).collect()
        };
        let (na, nb, nc) = (
            named(&a, &rows[0]),
            named(&b, &rows[1]),
            named(&c, &rows[2]),
        );
        assert_eq!(na, nb, "every site lists the shared ids in the same order");
        assert_eq!(na, nc);
        assert_eq!(na.iter().cloned().collect::<HashSet<_>>(), expected);
    }

    #[test]
    fn partial_blinding_is_not_comparable_across_sites() {
        let (k1, k2) = (PsiKey::random(), PsiKey::random());
        let id = vec!["patient-7".to_string()];
        let once_1 = k1.blind_ids(b"s", &id);
        let once_2 = k2.blind_ids(b"s", &id);
        assert_ne!(once_1, once_2);
        assert_eq!(k2.blind(&once_1).unwrap(), k1.blind(&once_2).unwrap());
        // Another salt, another job: nothing carries over.
        assert_ne!(k1.blind_ids(b"t", &id), once_1);
    }

    #[test]
    fn bad_input_is_named() {
        let dup = vec![Some("a".into()), Some("b".into()), Some("a".into())];
        assert_eq!(
            prepare_ids(&dup).unwrap_err(),
            PsiError::DuplicateId {
                id: "a".into(),
                first: 0,
                second: 2
            }
        );
        assert_eq!(
            prepare_ids(&[Some("a".into()), None]).unwrap_err(),
            PsiError::MissingId(1)
        );
        assert_eq!(
            run_in_process(b"s", &[ids(0..5), ids(5..9)]).unwrap_err(),
            PsiError::EmptyIntersection
        );
        assert_eq!(
            PsiKey::random().blind(&[[0xff; 32]]).unwrap_err(),
            PsiError::NotAPoint(0)
        );
    }
}
