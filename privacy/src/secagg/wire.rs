//! Byte encodings of the stage messages. Every encoding starts with a
//! version byte; integers are little endian; decoders reject truncation,
//! trailing bytes, unknown versions or kinds, and implausible counts with
//! an error naming the field, and never panic.
//!
//! * shares batch: `version ‖ count (u32) ‖ count × (from u32 ‖ to u32 ‖
//!   len u32 ‖ ciphertext)`, where every ciphertext is
//!   [`SHARE_CIPHERTEXT_BYTES`] long;
//! * reveals: `version ‖ count (u32) ‖ count × (kind u8 ‖ of u32 ‖ share)`,
//!   kind 1 = self-mask seed, 2 = mask key, share = holder u32 ‖ 64 bytes.

use super::{EncryptedShares, Reveal, SecAggError, Share};
use ring::aead::NONCE_LEN;

pub(crate) const VERSION: u8 = 1;

/// Length of one encrypted pair of shares: nonce ‖ two share values ‖ tag.
pub const SHARE_CIPHERTEXT_BYTES: usize =
    NONCE_LEN + 2 * Share::VALUE_BYTES + super::crypto::TAG_LEN;

const KIND_SELF_MASK_SEED: u8 = 1;
const KIND_MASK_KEY: u8 = 2;

pub(crate) fn check_version(what: &str, v: u8) -> Result<(), SecAggError> {
    if v == VERSION {
        Ok(())
    } else {
        Err(SecAggError::Malformed(format!(
            "{what}: unsupported version {v} (expected {VERSION})"
        )))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            bytes,
            pos: 0,
            what,
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], SecAggError> {
        if self.remaining() < n {
            return Err(SecAggError::Malformed(format!(
                "{}: truncated at byte {} reading {field} (need {n} bytes, {} left)",
                self.what,
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, SecAggError> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, SecAggError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a count of entries of at least `min_entry` bytes each,
    /// rejecting counts the remaining bytes cannot hold.
    fn count(&mut self, min_entry: usize) -> Result<usize, SecAggError> {
        let count = self.u32("entry count")? as usize;
        if count.saturating_mul(min_entry) > self.remaining() {
            return Err(SecAggError::Malformed(format!(
                "{}: declares {count} entries but only {} bytes follow",
                self.what,
                self.remaining()
            )));
        }
        Ok(count)
    }

    fn finish(self) -> Result<(), SecAggError> {
        if self.remaining() != 0 {
            return Err(SecAggError::Malformed(format!(
                "{}: {} trailing bytes after the last entry",
                self.what,
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// A batch of [`EncryptedShares`] on the wire (one client's stage-2 output,
/// or what the server forwards to one client).
pub fn encode_shares(batch: &[EncryptedShares]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(5 + batch.iter().map(|e| 12 + e.ciphertext.len()).sum::<usize>());
    out.push(VERSION);
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for e in batch {
        out.extend_from_slice(&e.from.to_le_bytes());
        out.extend_from_slice(&e.to.to_le_bytes());
        out.extend_from_slice(&(e.ciphertext.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.ciphertext);
    }
    out
}

/// Inverse of [`encode_shares`].
pub fn decode_shares(b: &[u8]) -> Result<Vec<EncryptedShares>, SecAggError> {
    let mut r = Reader::new(b, "shares batch");
    check_version("shares batch", r.u8("version")?)?;
    let count = r.count(12 + SHARE_CIPHERTEXT_BYTES)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let from = r.u32("from")?;
        let to = r.u32("to")?;
        let len = r.u32("ciphertext length")? as usize;
        if len != SHARE_CIPHERTEXT_BYTES {
            return Err(SecAggError::Malformed(format!(
                "shares batch: entry {i} ({from} → {to}) has a {len}-byte ciphertext, expected {SHARE_CIPHERTEXT_BYTES}"
            )));
        }
        let ciphertext = r.take(len, "ciphertext")?.to_vec();
        out.push(EncryptedShares {
            from,
            to,
            ciphertext,
        });
    }
    r.finish()?;
    Ok(out)
}

/// Stage-4 reveals on the wire.
pub fn encode_reveals(reveals: &[Reveal]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + reveals.len() * (5 + Share::BYTES));
    out.push(VERSION);
    out.extend_from_slice(&(reveals.len() as u32).to_le_bytes());
    for r in reveals {
        let kind = match r {
            Reveal::SelfMaskSeed { .. } => KIND_SELF_MASK_SEED,
            Reveal::MaskKey { .. } => KIND_MASK_KEY,
        };
        out.push(kind);
        out.extend_from_slice(&r.of().to_le_bytes());
        out.extend_from_slice(&r.share().to_bytes());
    }
    out
}

/// Inverse of [`encode_reveals`].
pub fn decode_reveals(b: &[u8]) -> Result<Vec<Reveal>, SecAggError> {
    let mut r = Reader::new(b, "reveals");
    check_version("reveals", r.u8("version")?)?;
    let count = r.count(5 + Share::BYTES)?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let kind = r.u8("kind")?;
        let of = r.u32("of")?;
        let share = Share::from_bytes(r.take(Share::BYTES, "share")?).map_err(|e| {
            SecAggError::Malformed(format!("reveals: entry {i} (of client {of}): {e}"))
        })?;
        out.push(match kind {
            KIND_SELF_MASK_SEED => Reveal::SelfMaskSeed { of, share },
            KIND_MASK_KEY => Reveal::MaskKey { of, share },
            other => {
                return Err(SecAggError::Malformed(format!(
                    "reveals: entry {i} has unknown kind {other} (expected 1 = self-mask seed or 2 = mask key)"
                )));
            }
        });
    }
    r.finish()?;
    Ok(out)
}
