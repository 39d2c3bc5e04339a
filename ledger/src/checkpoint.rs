//! The body of a C2SP `tlog-checkpoint` (<https://c2sp.org/tlog-checkpoint>).
//!
//! A checkpoint body is exactly three lines, each ending in `\n`:
//!
//! ```text
//! <origin>
//! <tree size in canonical decimal>
//! <root hash in standard, padded base64>
//! ```
//!
//! # Where signatures go
//!
//! A checkpoint is published as a C2SP signed note (<https://c2sp.org/signed-note>):
//! the body above, then one empty line (`\n`), then one or more signature
//! lines of the form `— <key name> <base64(key ID || signature)>` (an em dash,
//! U+2014). Each signature covers the body bytes exactly as produced by
//! [`Checkpoint::to_body`], including the final newline and excluding the
//! blank separator line. This module deliberately stops at the body: signing
//! and verifying notes (with a member's ECDSA P-256 key) belong in a separate
//! layer that calls [`Checkpoint::to_body`] / [`Checkpoint::parse_body`].
//!
//! # Strictness
//!
//! The C2SP specification allows optional extension lines after the root
//! hash. This parser refuses them: Cohort's checkpoints carry none, and a
//! body that parses is guaranteed to re-encode to the same bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::merkle::{HASH_LEN, Hash};

/// A log's commitment to its tree at one size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The log's identity, e.g. `cohort.example/ledger`; non-empty, one line.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 9162 root hash of the tree of `size` leaves.
    pub root: Hash,
}

/// Why a checkpoint body was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    #[error("checkpoint body does not end with a newline")]
    MissingFinalNewline,
    #[error("checkpoint body has {got} lines, but exactly 3 are required (origin, size, root)")]
    WrongLineCount { got: usize },
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    #[error("checkpoint origin contains the control character U+{code:04X}")]
    OriginControlCharacter { code: u32 },
    #[error("checkpoint tree size {line:?} is not a canonical decimal number")]
    NonCanonicalSize { line: String },
    #[error("checkpoint tree size {line:?} does not fit in 64 bits")]
    SizeOverflow { line: String },
    #[error("checkpoint root hash {line:?} is not canonical padded standard base64")]
    BadBase64 { line: String },
    #[error("checkpoint root hash decodes to {got} bytes, but {HASH_LEN} are required")]
    WrongHashLength { got: usize },
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() {
        return Err(CheckpointError::EmptyOrigin);
    }
    if let Some(c) = origin.chars().find(|c| c.is_control()) {
        return Err(CheckpointError::OriginControlCharacter { code: c as u32 });
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint; refuses an origin that could not be written as one line.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        check_origin(&origin)?;
        Ok(Self { origin, size, root })
    }

    /// The three-line body, each line ending in `\n`: the bytes a signature covers.
    ///
    /// Fails only when `origin` (a public field) is empty or holds a control
    /// character such as a newline, which would make the body unparseable.
    pub fn to_body(&self) -> Result<String, CheckpointError> {
        check_origin(&self.origin)?;
        Ok(format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        ))
    }

    /// Parses a body strictly: exactly three `\n`-terminated lines, a
    /// non-empty origin without control characters, a decimal size without
    /// sign, spaces or leading zeros, and a 32-byte root in canonical padded
    /// standard base64.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let Some(text) = body.strip_suffix('\n') else {
            return Err(CheckpointError::MissingFinalNewline);
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size_line, root_line] = lines[..] else {
            return Err(CheckpointError::WrongLineCount { got: lines.len() });
        };

        check_origin(origin)?;

        let canonical = !size_line.is_empty()
            && size_line.bytes().all(|b| b.is_ascii_digit())
            && (size_line == "0" || !size_line.starts_with('0'));
        if !canonical {
            return Err(CheckpointError::NonCanonicalSize {
                line: size_line.to_owned(),
            });
        }
        let size: u64 = size_line
            .parse()
            .map_err(|_| CheckpointError::SizeOverflow {
                line: size_line.to_owned(),
            })?;

        let bad_base64 = || CheckpointError::BadBase64 {
            line: root_line.to_owned(),
        };
        let bytes = STANDARD.decode(root_line).map_err(|_| bad_base64())?;
        // The engine already insists on padding and zero trailing bits; the
        // round trip makes canonical form an explicit requirement.
        if STANDARD.encode(&bytes) != root_line {
            return Err(bad_base64());
        }
        let root: Hash = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::WrongHashLength { got: bytes.len() })?;

        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MerkleLog, empty_root};

    const ROOT_B64: &str = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=";

    fn root8() -> Hash {
        let mut log = MerkleLog::new();
        for data in [
            &b""[..],
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ] {
            log.append(data);
        }
        log.current_root()
    }

    #[test]
    fn body_round_trips() {
        let cp = Checkpoint::new("cohort.example/ledger", 8, root8()).unwrap();
        let body = cp.to_body().unwrap();
        assert_eq!(body, format!("cohort.example/ledger\n8\n{ROOT_B64}\n"));
        assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
    }

    #[test]
    fn empty_tree_and_max_size_round_trip() {
        for size in [0, u64::MAX] {
            let cp = Checkpoint::new("o", size, empty_root()).unwrap();
            let body = cp.to_body().unwrap();
            assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
        }
        assert_eq!(
            Checkpoint::new("o", 0, empty_root())
                .unwrap()
                .to_body()
                .unwrap(),
            "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
        );
    }

    #[test]
    fn line_structure_is_strict() {
        use CheckpointError::*;
        let ok = format!("o\n8\n{ROOT_B64}\n");
        assert!(Checkpoint::parse_body(&ok).is_ok());
        let cases: Vec<(String, CheckpointError)> = vec![
            (format!("o\n8\n{ROOT_B64}"), MissingFinalNewline),
            (format!("o\n8\n{ROOT_B64}\n\n"), WrongLineCount { got: 4 }),
            (
                format!("o\n8\n{ROOT_B64}\next\n"),
                WrongLineCount { got: 4 },
            ),
            ("o\n8\n".to_owned(), WrongLineCount { got: 2 }),
            ("\n".to_owned(), WrongLineCount { got: 1 }),
            (String::new(), MissingFinalNewline),
            (format!("\n8\n{ROOT_B64}\n"), EmptyOrigin),
            (
                format!("o\r\n8\n{ROOT_B64}\n"),
                OriginControlCharacter { code: 0x0d },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(Checkpoint::parse_body(&body), Err(want), "{body:?}");
        }
    }

    #[test]
    fn size_must_be_canonical_decimal() {
        for bad in ["", "08", "00", "+8", "-8", " 8", "8 ", "0x8", "８", "1e3"] {
            let body = format!("o\n{bad}\n{ROOT_B64}\n");
            assert_eq!(
                Checkpoint::parse_body(&body),
                Err(CheckpointError::NonCanonicalSize {
                    line: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        let body = format!("o\n18446744073709551616\n{ROOT_B64}\n");
        assert!(matches!(
            Checkpoint::parse_body(&body),
            Err(CheckpointError::SizeOverflow { .. })
        ));
    }

    #[test]
    fn root_must_be_canonical_base64_of_32_bytes() {
        let unpadded = ROOT_B64.trim_end_matches('=');
        let url_safe = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=";
        // Same bytes as ROOT_B64 but with non-zero trailing bits in the last symbol.
        let trailing_bits = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=";
        for bad in [
            unpadded,
            url_safe,
            trailing_bits,
            "not base64!",
            " ",
            "====",
        ] {
            let body = format!("o\n8\n{bad}\n");
            assert_eq!(
                Checkpoint::parse_body(&body),
                Err(CheckpointError::BadBase64 {
                    line: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        for (b64, len) in [("", 0), ("AAAA", 3), (&*STANDARD.encode([7u8; 33]), 33)] {
            let body = format!("o\n8\n{b64}\n");
            assert_eq!(
                Checkpoint::parse_body(&body),
                Err(CheckpointError::WrongHashLength { got: len }),
                "{b64:?}"
            );
        }
    }

    #[test]
    fn origin_that_would_break_the_body_is_refused() {
        assert_eq!(
            Checkpoint::new("", 1, empty_root()),
            Err(CheckpointError::EmptyOrigin)
        );
        assert_eq!(
            Checkpoint::new("a\nb", 1, empty_root()),
            Err(CheckpointError::OriginControlCharacter { code: 0x0a })
        );
        let sneaky = Checkpoint {
            origin: "a\n5".into(),
            size: 1,
            root: empty_root(),
        };
        assert!(sneaky.to_body().is_err());
    }
}
