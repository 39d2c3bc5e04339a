//! Fuzz targets: every parser that reads bytes a hospital, a developer, a
//! peer or a disk hands to Cohort, each behind one `fn(&[u8])`.
//!
//! A target must return for every input: an error is fine, a panic, an
//! abort or an allocation sized by the input before it is checked is a
//! bug. The same functions run three ways:
//! - `cohort fuzz TARGET` mutates the seed corpus (`fuzz/corpus/TARGET/`)
//!   with a seeded generator, on stable Rust, for as long as asked;
//! - `tests/hostile_input.rs` does that for a few thousand inputs per target
//!   in every CI run, plus property tests of the round trips;
//! - `fuzz/` wraps each target for coverage-guided `cargo +nightly fuzz`.

use std::path::Path;
use std::sync::OnceLock;

use cohort_coordinator::JobSpec;
use cohort_datasets::fhir::{FhirMapping, read_export};
use cohort_datasets::{
    DataSpec, LocalDataset, RowWeight, SecureStatistics, StatisticsNoise, StatisticsPass,
    read_csv_bytes,
};
use cohort_ledger::{Checkpoint, Entry};
use cohort_privacy::he::{DecryptionShare, EncryptedUpdate, HeParams, PublicKeyShare};
use cohort_privacy::secagg::{Advertisement, Share, decode_reveals, decode_shares};
use prost::Message;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fuzz target: parses `data` and drops whatever comes out.
pub type Target = fn(&[u8]);

/// Every target by name, in the order `cohort fuzz --help` lists them.
pub const TARGETS: &[(&str, Target)] = &[
    ("job_file", job_file),
    ("csv_table", csv_table),
    ("fhir_mapping", fhir_mapping),
    ("fhir_export", fhir_export),
    ("parameters", parameters),
    ("protocol_messages", protocol_messages),
    ("ledger_entry", ledger_entry),
    ("checkpoint", checkpoint),
    ("secagg_messages", secagg_messages),
    ("he_messages", he_messages),
    ("proof_bytes", proof_bytes),
    ("startup_kit", startup_kit),
    ("setup_ceremony", setup_ceremony),
    ("secure_statistics", secure_statistics),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// A job file as `cohort job submit` and the coordinator read it.
pub fn job_file(data: &[u8]) {
    let _ = JobSpec::from_toml(&String::from_utf8_lossy(data));
}

/// A hospital's CSV file, read and resolved against the demo job's
/// `[data]` section as a client prepares it.
pub fn csv_table(data: &[u8]) {
    static SPEC: OnceLock<Option<DataSpec>> = OnceLock::new();
    let Ok(table) = read_csv_bytes(data) else {
        return;
    };
    let _ = table.quality();
    let spec = SPEC.get_or_init(|| JobSpec::from_toml(crate::DEMO_JOB).ok().map(|j| j.data));
    if let Some(spec) = spec {
        let _ = LocalDataset::from_table(&table, spec);
    }
}

/// A hospital's FHIR mapping file (`--fhir-mapping`).
pub fn fhir_mapping(data: &[u8]) {
    let _ = FhirMapping::from_toml(&String::from_utf8_lossy(data), "fuzz");
}

/// The mapping [`fhir_export`] reads its input with: every kind of column
/// (a Patient path, an age, each aggregate, codes with and without system).
const FHIR_FUZZ_MAPPING: &str = r#"
id = "patient_id"
[[column]]
name = "sex"
resource = "Patient"
path = "gender"
[[column]]
name = "age"
resource = "Patient"
path = "birthDate"
age_at = "2024-01-01"
[[column]]
name = "cancer"
resource = "Condition"
code = ["http://snomed.info/sct|254837009", "C50"]
aggregate = "exists"
[[column]]
name = "weight"
resource = "Observation"
code = "http://loinc.org|29463-7"
value = "valueQuantity.value"
[[column]]
name = "first_weight"
resource = "Observation"
code = "29463-7"
value = "valueQuantity.value"
aggregate = "earliest"
[[column]]
name = "mean_hba1c"
resource = "Observation"
code = "http://loinc.org|4548-4"
value = "valueQuantity.value"
aggregate = "mean"
[[column]]
name = "visits"
resource = "Encounter"
aggregate = "count"
"#;

/// A FHIR Bulk Data export: the input is one NDJSON file, read with a
/// mapping that uses every kind of column.
pub fn fhir_export(data: &[u8]) {
    static MAPPING: OnceLock<Option<FhirMapping>> = OnceLock::new();
    let Some(mapping) =
        MAPPING.get_or_init(|| FhirMapping::from_toml(FHIR_FUZZ_MAPPING, "fuzz").ok())
    else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(dir.path().join("export.ndjson"), data).is_ok() {
        let _ = read_export(dir.path(), mapping);
    }
}

/// A model or update body (little-endian f32).
pub fn parameters(data: &[u8]) {
    let _ = cohort_models::parameters_from_bytes(data);
}

/// Every protobuf message the coordinator decodes from a hospital, a
/// developer or a validator, and those a hospital decodes from the
/// coordinator.
pub fn protocol_messages(data: &[u8]) {
    use cohort_protocol::v1::*;
    let _ = RegisterRequest::decode(data);
    let _ = PullTaskRequest::decode(data);
    let _ = ResultFrame::decode(data);
    let _ = ResultHeader::decode(data);
    let _ = SplitUp::decode(data);
    let _ = VerticalUp::decode(data);
    let _ = GetProvingKeyRequest::decode(data);
    let _ = AdmitUploadRequest::decode(data);
    let _ = SubmitJobRequest::decode(data);
    let _ = GetJobRequest::decode(data);
    let _ = GetModelRequest::decode(data);
    let _ = SubmitAttestationRequest::decode(data);
    let _ = TaskFrame::decode(data);
    let _ = TaskHeader::decode(data);
    let _ = SplitDown::decode(data);
    let _ = VerticalDown::decode(data);
    let _ = JobStatus::decode(data);
    let _ = LedgerFrame::decode(data);
    let _ = ModelFrame::decode(data);
}

/// Preprocessing statistics under secure aggregation, both ends: a pass
/// description as a hospital receives it (JSON) applied to a small table,
/// and the summed vectors the coordinator reads: the table's own terms
/// times 1–4 hospitals, with the input's bytes as (index, delta) edits, so
/// that sums near honest ones reach every pass.
pub fn secure_statistics(data: &[u8]) {
    static DATASET: OnceLock<Option<LocalDataset>> = OnceLock::new();
    let Some(dataset) = DATASET.get_or_init(|| {
        let spec: DataSpec = toml::from_str(
            "label = \"y\"\npositive = \"1\"\nnumeric = [\"a\", \"b\"]\n[categorical]\nc = [\"x\", \"z\"]\n",
        )
        .ok()?;
        let table = read_csv_bytes(b"a,b,c,y\n1.5,-2,x,1\n300,,z,0\n0.001,7,,1\n-44,1e-9,x,0\n").ok()?;
        LocalDataset::from_table(&table, &spec).ok()
    }) else {
        return;
    };
    if let Ok(pass) = serde_json::from_slice::<StatisticsPass>(data) {
        let _ = dataset.statistics_terms(&pass);
    }
    let copies = u64::from(data.first().copied().unwrap_or(0) % 4 + 1);
    let mut edits = data.get(1..).unwrap_or_default().chunks_exact(4);
    // Odd first bytes read the sums as noisy (a job under DP).
    let noisy = data.first().copied().unwrap_or(0) % 2 == 1;
    let mut state = match noisy {
        false => SecureStatistics::new(dataset.schema()),
        true => SecureStatistics::with_noise(
            dataset.schema(),
            StatisticsNoise {
                noise_multiplier: f64::from(data.get(1).copied().unwrap_or(1)) / 16.0,
                hospitals: usize::from(copies as u8),
                weight: RowWeight::Row,
            },
        ),
    };
    loop {
        let terms = match noisy {
            false => dataset.statistics_terms(state.pass()),
            true => dataset
                .dp_statistics_terms(state.pass(), RowWeight::Row)
                .map(|t| t.into_iter().map(|v| v as u64).collect()),
        };
        let Ok(terms) = terms else {
            return;
        };
        let mut sum: Vec<u64> = terms.iter().map(|t| t.wrapping_mul(copies)).collect();
        for edit in edits.by_ref().take(2) {
            let index = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % sum.len().max(1);
            let delta = i64::from(i16::from_le_bytes([edit[2], edit[3]]));
            if let Some(value) = sum.get_mut(index) {
                *value = value.wrapping_add(delta as u64);
            }
        }
        if !matches!(state.absorb(&sum), Ok(None)) {
            return;
        }
    }
}

/// A stored ledger leaf, as `cohort audit` and the dashboard read them;
/// the same bytes as the openings of an entry's sealed parts (stored beside
/// it, sent after it), opened against a sealed round.
pub fn ledger_entry(data: &[u8]) {
    static SEALED: OnceLock<Option<cohort_ledger::Record>> = OnceLock::new();
    let _ = Entry::from_leaf(data);
    let Ok(openings) = serde_json::from_slice::<Vec<cohort_ledger::Opening>>(data) else {
        return;
    };
    let sealed = SEALED.get_or_init(|| {
        let receipt = |client: &str| cohort_ledger::UpdateRecord {
            client: client.into(),
            task_id: "t".into(),
            num_examples: 1,
            parameter_count: 1,
            update_sha256: String::new(),
            signature: String::new(),
            dataset_sha256: String::new(),
            dp_epsilon: Some("1".into()),
            proof: None,
        };
        cohort_ledger::Record::RoundCompleted {
            job_id: "j".into(),
            round: 1,
            model_sha256: String::new(),
            model_signature_sha256: String::new(),
            updates: vec![receipt("a"), receipt("b")],
            sealed_updates: Vec::new(),
            aggregate_sha256: None,
            accuracy: None,
            auc: None,
            excluded: Vec::new(),
            kept_top_sha256: None,
        }
        .seal()
        .ok()
        .map(|(record, _)| record)
    });
    if let Some(record) = sealed {
        let _ = record.clone().unseal(&openings);
    }
}

/// A checkpoint body and a signed checkpoint note, as an auditor or a
/// witness reads them.
pub fn checkpoint(data: &[u8]) {
    static KEY: OnceLock<Option<cohort_identity::MessageSigningKey>> = OnceLock::new();
    let text = String::from_utf8_lossy(data);
    let _ = Checkpoint::parse_body(&text);
    let Some(key) = KEY.get_or_init(|| cohort_identity::MessageSigningKey::generate().ok()) else {
        return;
    };
    let _ = cohort_ledger::verify_checkpoint(&text, "cohort-fuzz", &key.verifying_key());
}

/// Secure-aggregation messages relayed between hospitals (sealed key
/// shares, reveals, key advertisements, Shamir shares) and packed
/// quantized updates, whose bit width the first byte picks.
pub fn secagg_messages(data: &[u8]) {
    let _ = decode_shares(data);
    let _ = decode_reveals(data);
    let _ = Advertisement::from_bytes(data);
    let _ = Share::from_bytes(data);
    if let Some((&bits, rest)) = data.split_first() {
        let bits = u32::from(bits);
        let values = rest.len() / cohort_privacy::quantize::bytes_per_value(bits).max(1);
        let _ = cohort_privacy::quantize::unpack(rest, bits, values);
    }
}

/// Threshold-HE messages: encrypted updates, decryption shares, public key
/// shares, framed lists.
pub fn he_messages(data: &[u8]) {
    static PARAMS: OnceLock<Option<HeParams>> = OnceLock::new();
    let _ = cohort_privacy::he::unframe_list(data, 64);
    if let Some(params) = PARAMS.get_or_init(|| HeParams::new(3, 2, 16, 8).ok()) {
        let _ = EncryptedUpdate::from_bytes(params, data);
        let _ = DecryptionShare::from_bytes(params, data);
        let _ = PublicKeyShare::from_bytes(params, data);
    }
}

/// Update proofs as a validator and a hospital read them: a Groth16
/// proof and proving/verifying keys, and a Bulletproofs proof over
/// commitments (with the commitments themselves) as the coordinator checks
/// one against the masked input that arrived.
pub fn proof_bytes(data: &[u8]) {
    let _ = cohort_proofs::parse_proof(data);
    let _ = cohort_proofs::VerifyingKey::from_bytes(data);
    let _ = cohort_proofs::ProvingKey::from_bytes(data);
    let _ = cohort_proofs::committed::commitments_from_bytes(data);
    let (context, commitments) = committed_fixture();
    let _ = cohort_proofs::committed::verify(&context, COMMITTED_BOUND, &commitments, data);
}

const COMMITTED_BOUND: u64 = 10;
const COMMITTED_ENTRIES: [i32; 3] = [3, -4, 5];

/// The statement the committed-proof bytes are checked against.
fn committed_fixture() -> (
    cohort_proofs::Context,
    Vec<cohort_proofs::committed::CompressedRistretto>,
) {
    let context = cohort_proofs::Context {
        job_id: "fuzz".into(),
        round: 1,
        client: "hospital".into(),
    };
    let commitments = cohort_proofs::committed::commit_unblinded(&COMMITTED_ENTRIES);
    (context, commitments)
}

/// A valid committed proof for [`committed_fixture`], as a seed.
fn committed_proof_seed() -> Option<Vec<u8>> {
    let (context, _) = committed_fixture();
    let unblinded = vec![cohort_proofs::committed::Scalar::zero(); COMMITTED_ENTRIES.len()];
    cohort_proofs::committed::prove(&context, COMMITTED_BOUND, &COMMITTED_ENTRIES, &unblinded)
        .ok()
        .map(|update| update.proof)
}

/// A Groth16 setup ceremony file as `cohort setup` and the coordinator
/// read it (validators pass it from hand to hand): parsed, and checked
/// when it parses.
pub fn setup_ceremony(data: &[u8]) {
    let _ = cohort_proofs::ceremony::entries_of(data);
    if let Ok(ceremony) = cohort_proofs::ceremony::Ceremony::from_bytes(data) {
        let _ = ceremony.verify();
    }
}

/// A finished ceremony over one entry (signatures left empty: the
/// target checks the mathematics, the coordinator the signatures).
fn ceremony_seed() -> Option<Vec<u8>> {
    let mut ceremony = cohort_proofs::ceremony::Ceremony::new(1).ok()?;
    ceremony
        .contribute("validator", b"", |_| Ok(Vec::new()))
        .ok()?;
    ceremony.seal_powers().ok()?;
    ceremony
        .contribute("validator", b"", |_| Ok(Vec::new()))
        .ok()?;
    Some(ceremony.to_bytes())
}

/// The files of a startup kit, in the order [`startup_kit`] reads them
/// from its input.
const KIT_FILES: [&str; 4] = [
    cohort_identity::kit::CERT_FILE,
    cohort_identity::kit::KEY_FILE,
    cohort_identity::ca::CA_CERT_FILE,
    cohort_identity::kit::SIGNING_KEY_FILE,
];

/// What separates the kit's files in a `startup_kit` input.
const KIT_SEPARATOR: &[u8] = b"\n--cohort-kit-file--\n";

/// A startup kit as a member loads it (`Kit::load`): the input's parts,
/// split at [`KIT_SEPARATOR`], become its certificate, TLS key, CA
/// certificate and signing key, the keys readable by their owner only, as
/// `cohort ca issue` writes them.
pub fn startup_kit(data: &[u8]) {
    let _ = load_kit(data);
}

/// [`startup_kit`]'s work, with the outcome (`None`: the temporary files
/// could not be written).
fn load_kit(data: &[u8]) -> Option<Result<cohort_identity::Kit, cohort_identity::IdentityError>> {
    let dir = tempfile::tempdir().ok()?;
    let mut rest = data;
    for file in KIT_FILES {
        let (part, after) = match rest
            .windows(KIT_SEPARATOR.len())
            .position(|w| w == KIT_SEPARATOR)
        {
            Some(i) => (&rest[..i], &rest[i + KIT_SEPARATOR.len()..]),
            None => (rest, &rest[rest.len()..]),
        };
        write_owner_only(&dir.path().join(file), part).ok()?;
        rest = after;
    }
    Some(cohort_identity::Kit::load(dir.path()))
}

fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// A real hospital kit from a new consortium CA, in `startup_kit`'s input
/// format.
fn kit_seed() -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let mut ca =
        cohort_identity::CertificateAuthority::init("fuzz-consortium", &dir.path().join("ca"))
            .ok()?;
    let request =
        cohort_identity::IssueRequest::for_days(cohort_identity::Role::Hospital, "hospital-a", 30);
    let kit = dir.path().join("hospital-a");
    ca.issue(&request, &kit).ok()?;
    let parts = KIT_FILES
        .iter()
        .map(|f| std::fs::read(kit.join(f)))
        .collect::<std::io::Result<Vec<_>>>()
        .ok()?;
    Some(parts.join(KIT_SEPARATOR))
}

/// A target's seeds: the files of `corpus/TARGET/` (sorted by name), then
/// inputs built here for the binary formats whose valid lengths and
/// framing a byte-level mutator would rarely hit by chance.
pub fn seeds(corpus: &Path, target: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let dir = corpus.join(target);
    let mut files = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut seeds = files
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<Vec<_>>>()?;
    seeds.extend(built_seeds(target));
    Ok(seeds)
}

fn built_seeds(target: &str) -> Vec<Vec<u8>> {
    use cohort_protocol::v1::*;
    let filled = |n: usize| (0..n).map(|i| (i * 37 % 251) as u8).collect::<Vec<u8>>();
    match target {
        "parameters" => vec![cohort_models::parameters_to_bytes(&[0.5, -1.0, 3.25, 1e-8])],
        "protocol_messages" => vec![
            TaskHeader {
                task_id: "task-1".into(),
                job_id: "job-1".into(),
                round: 3,
                model_spec_json: r#"{"kind":"mlp","hidden":[16]}"#.into(),
                valuation_coalitions: vec![0, 1, 3, 7],
                valuation_player_examples: vec![45, 40, 51],
                ..Default::default()
            }
            .encode_to_vec(),
            ResultHeader {
                task_id: "task-1".into(),
                metrics_json: r#"{"loss":0.3,"examples":11}"#.into(),
                candidate_losses: vec![0.7, 0.5, 0.4, 0.3],
                num_examples: 11,
                ..Default::default()
            }
            .encode_to_vec(),
            SubmitJobRequest {
                job_toml: crate::DEMO_JOB.into(),
            }
            .encode_to_vec(),
        ],
        "secagg_messages" => vec![
            filled(Advertisement::BYTES),
            filled(Share::BYTES),
            filled(4 + 2 * cohort_privacy::secagg::SHARE_CIPHERTEXT_BYTES),
            [&[32u8][..], &filled(64)].concat(),
        ],
        "he_messages" => match HeParams::new(3, 2, 16, 8) {
            Ok(params) => vec![
                filled(EncryptedUpdate::encoded_len(&params)),
                filled(DecryptionShare::encoded_len(&params, 2)),
                cohort_privacy::he::frame_list(&[filled(40), filled(3)]),
            ],
            Err(_) => Vec::new(),
        },
        "proof_bytes" => [filled(cohort_proofs::PROOF_BYTES)]
            .into_iter()
            .chain(committed_proof_seed())
            .collect(),
        "secure_statistics" => vec![
            br#"{"pass":"counts"}"#.to_vec(),
            br#"{"pass":"location","scales":[512.0,8.0],"fraction_bits":52}"#.to_vec(),
            br#"{"pass":"spread","means":[64.0,1.5],"spreads":[300.0,6.0],"windows":[[0.0,4.0],[-1.0,2.0]],"fraction_bits":40}"#.to_vec(),
            vec![1, 7, 0, 1, 0, 200, 1, 255, 255],
        ],
        "startup_kit" => kit_seed().into_iter().collect(),
        "setup_ceremony" => ceremony_seed().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Seeded byte-level mutations of a corpus (bit flips, boundary values,
/// numbers that overflow, insertions, deletions, duplications, splices,
/// truncations): what `cohort fuzz` and the CI test feed the targets.
pub struct Mutator {
    seeds: Vec<Vec<u8>>,
    rng: ChaCha8Rng,
}

/// Byte strings that tend to sit on parsers' boundaries.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"1e309",
    b"-0.0",
    b"nan",
    b"inf",
    b"\"",
    b"[[",
    b"{",
    b"\\u0000",
    b"\xff\xff\xff\xff",
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
];

impl Mutator {
    pub fn new(seeds: Vec<Vec<u8>>, seed: u64) -> Self {
        Self {
            seeds,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    /// A seed with one to four mutations applied.
    pub fn next_input(&mut self) -> Vec<u8> {
        let mut input = if self.seeds.is_empty() {
            Vec::new()
        } else {
            self.seeds[self.rng.random_range(0..self.seeds.len())].clone()
        };
        for _ in 0..self.rng.random_range(1..=4) {
            self.mutate(&mut input);
        }
        input
    }

    fn mutate(&mut self, input: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let at = |rng: &mut ChaCha8Rng, len: usize| rng.random_range(0..=len);
        match rng.random_range(0..9) {
            0 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                input[i] = [0, 0xff, 0x7f, 0x80, b'0', b'"'][rng.random_range(0..6)];
            }
            2 => {
                let i = at(rng, input.len());
                let token = INTERESTING[rng.random_range(0..INTERESTING.len())];
                input.splice(i..i, token.iter().copied());
            }
            3 => {
                let i = at(rng, input.len());
                let mut noise = vec![0u8; rng.random_range(1..=16)];
                rng.fill_bytes(&mut noise);
                input.splice(i..i, noise);
            }
            4 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                let end = (i + rng.random_range(1..=64)).min(input.len());
                input.drain(i..end);
            }
            5 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                let end = (i + rng.random_range(1..=64)).min(input.len());
                let copy = input[i..end].to_vec();
                let j = at(rng, input.len());
                input.splice(j..j, copy);
            }
            6 if !self.seeds.is_empty() => {
                let other = &self.seeds[rng.random_range(0..self.seeds.len())];
                let from = at(rng, other.len());
                let cut = at(rng, input.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 => {
                let cut = at(rng, input.len());
                input.truncate(cut);
            }
            _ => {
                // A run of digits turned into a number no field can hold.
                if let Some(i) = input.iter().position(|b| b.is_ascii_digit()) {
                    let end = input[i..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(input.len(), |n| i + n);
                    input.splice(i..end, b"99999999999999999999999".iter().copied());
                }
            }
        }
    }
}

/// What a `cohort fuzz` run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FuzzReport {
    pub target: String,
    pub seeds: usize,
    pub inputs: u64,
    pub seconds: f64,
    /// Inputs that panicked, saved under the artifacts directory.
    pub crashes: Vec<std::path::PathBuf>,
}

impl FuzzReport {
    /// The report as `cohort fuzz` prints it without `--json`.
    pub fn text(&self) -> String {
        let mut text = format!(
            "{}: {} inputs ({} seeds) in {:.1} s, {} crashing\n",
            self.target,
            self.inputs,
            self.seeds,
            self.seconds,
            self.crashes.len()
        );
        for path in &self.crashes {
            text += &format!("  {}\n", path.display());
        }
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    #[error("no fuzz target `{0}`; the targets are: {1}")]
    UnknownTarget(String, String),
    #[error("reading the seed corpus {0}: {1}")]
    Corpus(std::path::PathBuf, std::io::Error),
    #[error("saving a crashing input to {0}: {1}")]
    Artifact(std::path::PathBuf, std::io::Error),
}

/// Runs `target` on its seeds, then on seeded mutations of them until
/// `inputs` inputs or `seconds` have passed, printing a status line every
/// few seconds; each input that panics is saved as
/// `ARTIFACTS/crash-TARGET-N` (and the run goes on).
pub fn run(
    name: &str,
    corpus: &Path,
    artifacts: &Path,
    (inputs, seconds, seed): (u64, f64, u64),
) -> Result<FuzzReport, FuzzError> {
    let target = target(name).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        FuzzError::UnknownTarget(name.to_string(), names.join(", "))
    })?;
    let seeds = seeds(corpus, name).map_err(|e| FuzzError::Corpus(corpus.join(name), e))?;
    let seed_count = seeds.len();
    let mut mutator = Mutator::new(seeds, seed);
    let started = std::time::Instant::now();
    let mut last_status = started;
    let mut crashes = Vec::new();
    let mut done = 0u64;
    while done < inputs && started.elapsed().as_secs_f64() < seconds {
        let input = match mutator.seeds().get(done as usize) {
            Some(seed) => seed.clone(),
            None => mutator.next_input(),
        };
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            std::fs::create_dir_all(artifacts)
                .map_err(|e| FuzzError::Artifact(artifacts.to_path_buf(), e))?;
            let path = artifacts.join(format!("crash-{name}-{done}"));
            std::fs::write(&path, &input).map_err(|e| FuzzError::Artifact(path.clone(), e))?;
            crashes.push(path);
        }
        done += 1;
        if last_status.elapsed().as_secs() >= 5 {
            last_status = std::time::Instant::now();
            eprintln!(
                "{name}: {done} inputs in {:.0} s, {} crashing",
                started.elapsed().as_secs_f64(),
                crashes.len()
            );
        }
    }
    Ok(FuzzReport {
        target: name.to_string(),
        seeds: seed_count,
        inputs: done,
        seconds: started.elapsed().as_secs_f64(),
        crashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kit_seed_is_a_kit_and_a_damaged_one_is_refused() {
        let seed = kit_seed().expect("a kit from a new CA");
        let kit = load_kit(&seed).expect("written").expect("the seed loads");
        assert_eq!(kit.principal.name, "hospital-a");
        let cut = &seed[..seed.len() / 2];
        assert!(load_kit(cut).expect("written").is_err());
    }
}
