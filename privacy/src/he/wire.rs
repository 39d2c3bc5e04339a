//! Byte layout of the HE messages: a party index, a list of party indices,
//! and polynomials in NTT form, one little-endian `u64` per coefficient and
//! modulus (62 of its bits used; packing them saves 3% of the bytes and
//! costs most of the time of reading an upload):
//!
//! `"CHE1" | index u32 | k u32 | k × u32 | m u32 | m × (len u32 | bytes)`
//!
//! all integers little-endian. Decoding checks every length and that every
//! coefficient is below its modulus, so a malformed upload is an error
//! naming the problem, never a panic or a wrong sum.

use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};

use super::HeError;
use super::params::{DEGREE, HeParams, math};

const MAGIC: &[u8; 4] = b"CHE1";

pub(super) fn encode(index: u32, parties: &[u32], polys: &[Poly]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(parties.len() as u32).to_le_bytes());
    for p in parties {
        out.extend_from_slice(&p.to_le_bytes());
    }
    out.extend_from_slice(&(polys.len() as u32).to_le_bytes());
    for poly in polys {
        let bytes = poly_bytes(poly);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Length of [`encode`]'s output for `parties` indices and `polys`
/// polynomials.
pub(super) fn encoded_len(params: &HeParams, parties: usize, polys: usize) -> usize {
    4 + 4 + 4 + 4 * parties + 4 + polys * (4 + DEGREE * params.primes().len() * 8)
}

fn poly_bytes(poly: &Poly) -> Vec<u8> {
    let mut ntt = poly.clone();
    ntt.change_representation(Representation::Ntt);
    let coefficients = ntt.coefficients();
    let mut out = Vec::with_capacity(coefficients.len() * 8);
    for c in coefficients.iter() {
        out.extend_from_slice(&c.to_le_bytes());
    }
    out
}

/// `(index, parties, polys)`, with exactly `expected` polynomials when
/// `expected > 0`.
pub(super) fn decode(
    params: &HeParams,
    bytes: &[u8],
    expected: usize,
) -> Result<(u32, Vec<u32>, Vec<Poly>), HeError> {
    let mut reader = Reader { bytes, at: 0 };
    if reader.take(4)? != MAGIC {
        return Err(HeError::Malformed("not a Cohort HE message".into()));
    }
    let index = reader.u32()?;
    let count = reader.u32()? as usize;
    if count > params.hospitals() as usize {
        return Err(HeError::Malformed(format!("{count} party indices")));
    }
    let parties = (0..count)
        .map(|_| reader.u32())
        .collect::<Result<Vec<_>, _>>()?;
    let polys = reader.u32()? as usize;
    if expected > 0 && polys != expected {
        return Err(HeError::Malformed(format!(
            "{polys} polynomials where {expected} belong"
        )));
    }
    let moduli = params.primes();
    let poly_len = DEGREE * moduli.len() * 8;
    let mut out = Vec::with_capacity(polys.min(bytes.len() / poly_len));
    for _ in 0..polys {
        let len = reader.u32()? as usize;
        if len != poly_len {
            return Err(HeError::Malformed(format!(
                "a polynomial of {len} bytes where {poly_len} belong"
            )));
        }
        let raw = reader.take(poly_len)?;
        let mut coefficients = Vec::with_capacity(DEGREE * moduli.len());
        for (row, &q) in raw.chunks_exact(DEGREE * 8).zip(&moduli) {
            for word in row.chunks_exact(8) {
                let mut le = [0u8; 8];
                le.copy_from_slice(word);
                let c = u64::from_le_bytes(le);
                if c >= q {
                    return Err(HeError::Malformed(
                        "a coefficient outside its modulus".into(),
                    ));
                }
                coefficients.push(c);
            }
        }
        out.push(
            Poly::try_convert_from(coefficients, &params.ctx, false, Representation::Ntt)
                .map_err(math)?,
        );
    }
    if reader.at != bytes.len() {
        return Err(HeError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - reader.at
        )));
    }
    Ok((index, parties, out))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| HeError::Malformed(format!("truncated at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, HeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// A list of byte strings as one: `count u32 | count × (len u32 | bytes)`.
pub fn frame_list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (items.len() as u32).to_le_bytes().to_vec();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// Inverse of [`frame_list`], at most `max` items.
pub fn unframe_list(bytes: &[u8], max: usize) -> Result<Vec<Vec<u8>>, HeError> {
    let mut reader = Reader { bytes, at: 0 };
    let count = reader.u32()? as usize;
    if count > max {
        return Err(HeError::Malformed(format!(
            "{count} items where at most {max} belong"
        )));
    }
    let items = (0..count)
        .map(|_| {
            let len = reader.u32()? as usize;
            Ok(reader.take(len)?.to_vec())
        })
        .collect::<Result<Vec<_>, HeError>>()?;
    if reader.at != bytes.len() {
        return Err(HeError::Malformed("trailing bytes after a list".into()));
    }
    Ok(items)
}
