//! The Cohort wire protocol (`cohort.v1`): generated tonic/prost code plus
//! the few helpers every peer needs to move large parameter vectors.
//!
//! Models and updates can be far larger than gRPC's 4 MiB default message
//! limit (the protocol is tested with 10^7 parameters), so they never travel
//! in one message: a header states the parameter count and digest, then
//! [`CHUNK_BYTES`]-sized chunks follow. [`ParameterAssembler`] rebuilds the
//! vector on the receiving side and refuses anything that does not match
//! the header, so a peer cannot make the other side allocate without bound.

// Generated code: a result frame's header is much larger than a chunk, and
// boxing it would change prost's generated API for little gain.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("cohort.v1");
}

pub mod crash;
pub mod transport;

pub use transport::{EndpointError, Security, endpoint, endpoints};

use thiserror::Error;

/// Signature context of a hospital's FIT answer.
pub const UPDATE_SIGNATURE_CONTEXT: &str = "cohort/update/v1";

/// Signature context of a hospital's secure-aggregation key advertisement
/// (over `cohort_privacy::secagg::Advertisement::statement`).
pub const SECAGG_ADVERT_CONTEXT: &str = "cohort/secagg-advert/v1";

/// Signature context of a hospital's homomorphic-aggregation advert (over
/// `cohort_privacy::he::Advert::statement`).
pub const HE_ADVERT_CONTEXT: &str = "cohort/he-advert/v1";

/// The statement a hospital signs for an update: which job, round and task
/// it answers, its FedAvg weight, the SHA-256 of its bytes, and the
/// commitment to the data it was trained on. Both sides
/// build it from their own view, so a signature made for one task or
/// update never verifies for another.
pub fn update_statement(
    job_id: &str,
    round: u32,
    task_id: &str,
    num_examples: u64,
    parameter_count: u64,
    update_sha256: &str,
    dataset_sha256: &str,
) -> Vec<u8> {
    format!(
        "job {job_id}\nround {round}\ntask {task_id}\nexamples {num_examples}\n\
         parameters {parameter_count}\nsha256 {update_sha256}\ndataset {dataset_sha256}\n"
    )
    .into_bytes()
}

/// The session a secure-aggregation round attempt is bound to: every key
/// agreement, mask and encrypted share of the attempt is derived from it,
/// and so is the neighbour graph, so both sides compute it from their own
/// view and nothing made for one attempt is usable in another.
pub fn secagg_session(job_id: &str, round: u32, attempt: u32, members: &[String]) -> [u8; 32] {
    session(b"cohort/secagg/v1\0", job_id, round, attempt, members)
}

/// The session of one secure-aggregation pass of preprocessing statistics
/// (`pass_json`: the pass every hospital was asked for, so that a hospital
/// told of another pass makes other keys and masks).
pub fn secagg_statistics_session(
    job_id: &str,
    pass_json: &str,
    attempt: u32,
    members: &[String],
) -> [u8; 32] {
    use sha2::Digest as _;
    let mut domain = b"cohort/secagg-statistics/v1\0".to_vec();
    domain.extend(sha2::Sha256::digest(pass_json.as_bytes()));
    session(&domain, job_id, 0, attempt, members)
}

/// The session a homomorphic-aggregation round attempt is bound to: its
/// common random polynomial, every signed advert and sealed share.
pub fn he_session(job_id: &str, round: u32, attempt: u32, members: &[String]) -> [u8; 32] {
    session(b"cohort/he/v1\0", job_id, round, attempt, members)
}

fn session(domain: &[u8], job_id: &str, round: u32, attempt: u32, members: &[String]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(domain);
    for part in [
        job_id.as_bytes(),
        &round.to_le_bytes(),
        &attempt.to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update((members.len() as u64).to_le_bytes());
    for m in members {
        h.update((m.len() as u64).to_le_bytes());
        h.update(m.as_bytes());
    }
    h.finalize().into()
}

/// Bumped on any incompatible change to the messages' meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// Size of the chunks both sides send (256 KiB = 65,536 f32 values). tonic
/// copies each message it encodes, so every download in flight holds about
/// a chunk or two of the coordinator's memory: at 50 hospitals × 10^6
/// parameters, 256 KiB chunks peaked at 127–133 MiB where 1 MiB ones
/// peaked at 160–174 MiB, rounds unchanged (docs/BENCHMARKS.md).
pub const CHUNK_BYTES: usize = 1 << 18;

/// Largest chunk either side accepts: what earlier versions sent.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Largest single gRPC message either side accepts: a chunk plus generous
/// room for headers (JSON specs, statistics).
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Largest parameter vector a peer will agree to receive (about 1 GiB of f32).
pub const MAX_PARAMETERS: u64 = 1 << 28;

#[derive(Debug, Error, PartialEq)]
pub enum ProtocolError {
    #[error("parameter count {count} exceeds the limit of {MAX_PARAMETERS}")]
    TooManyParameters { count: u64 },
    #[error("chunk of {len} bytes is not a whole number of f32 values")]
    RaggedChunk { len: usize },
    #[error("received more than the {expected} values (or bytes) announced")]
    Overflow { expected: u64 },
    #[error("received {received} values (or bytes), {expected} were announced")]
    Incomplete { expected: u64, received: u64 },
    #[error("frame out of order: {0}")]
    OutOfOrder(&'static str),
}

/// Splits a parameter vector into little-endian chunks of at most
/// [`CHUNK_BYTES`].
pub fn parameter_chunks(params: &[f32]) -> impl Iterator<Item = v1::Chunk> + '_ {
    params.chunks(CHUNK_BYTES / 4).map(|values| {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        v1::Chunk { data: data.into() }
    })
}

/// Splits an encoded body into chunks of at most [`CHUNK_BYTES`] that share
/// its memory: a body sent to many hospitals is encoded once.
pub fn byte_chunks(body: &bytes::Bytes) -> impl Iterator<Item = v1::Chunk> + '_ {
    (0..body.len()).step_by(CHUNK_BYTES).map(|start| v1::Chunk {
        data: body.slice(start..(start + CHUNK_BYTES).min(body.len())),
    })
}

/// Rebuilds a parameter vector from chunks, checking it against the count
/// the header announced.
#[derive(Debug)]
pub struct ParameterAssembler {
    expected: u64,
    values: Vec<f32>,
}

impl ParameterAssembler {
    pub fn new(expected: u64) -> Result<Self, ProtocolError> {
        if expected > MAX_PARAMETERS {
            return Err(ProtocolError::TooManyParameters { count: expected });
        }
        // The capacity is bounded by MAX_PARAMETERS above.
        Ok(Self {
            expected,
            values: Vec::with_capacity(expected as usize),
        })
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if !chunk.len().is_multiple_of(4) {
            return Err(ProtocolError::RaggedChunk { len: chunk.len() });
        }
        if (self.values.len() + chunk.len() / 4) as u64 > self.expected {
            return Err(ProtocolError::Overflow {
                expected: self.expected,
            });
        }
        self.values.extend(
            chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<f32>, ProtocolError> {
        if self.values.len() as u64 != self.expected {
            return Err(ProtocolError::Incomplete {
                expected: self.expected,
                received: self.values.len() as u64,
            });
        }
        Ok(self.values)
    }
}

/// Rebuilds an opaque byte payload (a masked update) from chunks, refusing
/// more or fewer bytes than announced.
#[derive(Debug)]
pub struct ByteAssembler {
    expected: usize,
    bytes: Vec<u8>,
}

impl ByteAssembler {
    /// `expected` must already be bounded by the caller (it is derived from
    /// a parameter count checked against [`MAX_PARAMETERS`]).
    pub fn new(expected: usize) -> Self {
        Self {
            expected,
            bytes: Vec::with_capacity(expected),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        if self.bytes.len() + chunk.len() > self.expected {
            return Err(ProtocolError::Overflow {
                expected: self.expected as u64,
            });
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<Vec<u8>, ProtocolError> {
        if self.bytes.len() != self.expected {
            return Err(ProtocolError::Incomplete {
                expected: self.expected as u64,
                received: self.bytes.len() as u64,
            });
        }
        Ok(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_across_chunk_boundaries() {
        let params: Vec<f32> = (0..(CHUNK_BYTES / 4 * 2 + 3))
            .map(|i| i as f32 * 0.5)
            .collect();
        let chunks: Vec<_> = parameter_chunks(&params).collect();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        let mut assembler = ParameterAssembler::new(params.len() as u64).unwrap();
        for c in &chunks {
            assembler.push(&c.data).unwrap();
        }
        assert_eq!(assembler.finish().unwrap(), params);
    }

    #[test]
    fn assembler_rejects_mismatched_streams() {
        let mut a = ParameterAssembler::new(2).unwrap();
        assert_eq!(a.push(&[0; 3]), Err(ProtocolError::RaggedChunk { len: 3 }));
        assert_eq!(
            a.push(&[0; 12]),
            Err(ProtocolError::Overflow { expected: 2 })
        );
        a.push(&[0; 4]).unwrap();
        assert_eq!(
            a.finish(),
            Err(ProtocolError::Incomplete {
                expected: 2,
                received: 1
            })
        );
        assert!(matches!(
            ParameterAssembler::new(MAX_PARAMETERS + 1),
            Err(ProtocolError::TooManyParameters { .. })
        ));
    }
}
