//! The fit stage of a round under threshold homomorphic aggregation: the
//! coordinator adds encrypted updates and relays; it never holds a key that
//! decrypts anything, and only the sum is ever decrypted.
//!
//! 1. KEYGEN: every selected hospital makes this attempt's key share and
//!    envelope key and sends the public halves, signed.
//! 2. FIT: each gets every member's signed advert (so it computes the
//!    collective key itself and checks every signature), trains, encodes
//!    its update (clip, weight, quantize, as under secure aggregation),
//!    encrypts it and sends it with its Shamir shares sealed to each member.
//!    Ciphertexts are added as they arrive and never stored.
//! 3. DECRYPT, twice: every member opens the shares sealed to it; the
//!    members that answered form the decryptor set, and each sends one
//!    smudged decryption share of the sum. Any `threshold` of them decrypt.
//!
//! Every member's secret is in the collective key, so a hospital that never
//! sends its update (and its shares) abandons the attempt, and so does a
//! decryptor that never sends its share (no hospital gives two shares under
//! one key); the round is retried with fresh keys. A hospital that vanishes
//! after sending its update costs nothing: it is simply not a decryptor.
//!
//! **Update proofs** (`[proofs] update = "norm"`): each member encrypts its
//! update on the job's 16-bit grid as signed integers, and sends beside the
//! ciphertext one Pedersen commitment per entry and a Bulletproofs proof
//! that they hold a well-formed update for this job, round and hospital
//! (`cohort_proofs::committed`, as under secure aggregation). The
//! blindings are pairwise between the members (from their envelope keys,
//! `HospitalRound::blindings`) and cancel over all of them, so each
//! member's commitments hide its update while their sum holds the sum. A
//! member whose proof fails is named, sits out the round's later attempts,
//! and the attempt is retried without it. Once decrypted, the sum is
//! checked against the summed commitments: a member that encrypted
//! something other than what it proved makes the check fail, and the sum
//! is not used (the attempt is retried; which member it was stays hidden,
//! as the encryption promises).

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_ledger::Exclusion;
use cohort_privacy::he::{self, EncryptedUpdate, HeConfig};
use cohort_proofs::committed::{self, RistrettoPoint};
use cohort_protocol::v1::{HeAdvert, HeTask, TaskHeader, TaskKind};

use super::secagg::Encoding;
use super::splitfed::SplitTasks;
use super::{Fitted, RunError, Runner, json};
use crate::job::JobSpec;
use crate::registry::{Expect, TaskAnswer, TaskBody};
use crate::store::{Enrollment, JobRow};

/// The aggregate's stand-in name: the strategy sees one update, the mean.
const AGGREGATE: &str = "homomorphic-aggregate";

/// What one message header may carry in key material: the gRPC limit less
/// room for the rest of the header.
const MAX_HEADER_PAYLOAD: usize = cohort_protocol::MAX_MESSAGE_BYTES - (512 << 10);

/// Plaintext bits for a sum of `hospitals` signed 16-bit grid entries
/// (update proofs): room for `|Σ u| ≤ hospitals·2^15` with its sign.
pub(super) fn committed_sum_bits(hospitals: u32) -> u32 {
    cohort_proofs::encoding::ENTRY_BITS + 1 + hospitals.max(1).next_power_of_two().ilog2()
}

impl Runner {
    /// [`Runner::protected_fit`] under homomorphic aggregation. A member
    /// whose update proof fails is added to `barred` (the round's later
    /// attempts leave it out).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn he_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        (round, attempt): (u32, u32),
        splits: &SplitTasks,
        barred: &mut Vec<Exclusion>,
    ) -> Result<Option<Fitted>, RunError> {
        let t = &spec.training;
        let config = &spec.privacy.he;
        let n = selected.len() as u32;
        let stop =
            |e: String| RunError::Failed(format!("round {round}: homomorphic aggregation: {e}"));
        if n < 2 {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {n} hospitals are too few for homomorphic aggregation; retrying"
                ),
            );
            return Ok(None);
        }
        let threshold = config.decryptors(n);
        // Under client-level DP each hospital adds its share of the noise
        // before encrypting, sized for the fewest decryptors.
        let encoding = self.protected_encoding(
            spec,
            enrollment,
            selected,
            global.len(),
            (config.clip, config.bits),
            threshold,
            stop,
        )?;
        let (plaintext_bits, values) = match &encoding {
            // The example count rides inside a quantized update.
            Encoding::Quantized(quantizer) => (quantizer.bits(), global.len() + 1),
            // With update proofs each member encrypts its update on the
            // job's grid, as signed integers.
            Encoding::Committed(_) => (committed_sum_bits(n), global.len()),
        };
        let he_config = HeConfig {
            hospitals: n,
            threshold,
            plaintext_bits,
            values,
        };
        let (quantizer, proofs) = (encoding.quantizer(), encoding.proofs());
        let params = he_config.params().map_err(|e| stop(e.to_string()))?;
        let ciphertext_bytes = EncryptedUpdate::encoded_len(&params);
        let commitment_bytes = if proofs.is_some() {
            global.len() * committed::COMMITMENT_BYTES
        } else {
            0
        };
        // Adverts and sealed shares (one polynomial each per member) travel
        // in message headers; ciphertexts stream.
        if n as usize * he::sealed_share_len(&params) > MAX_HEADER_PAYLOAD {
            return Err(stop(format!(
                "{n} hospitals' key shares do not fit in one {} MiB message",
                MAX_HEADER_PAYLOAD >> 20
            )));
        }
        let session = cohort_protocol::he_session(&job.id, round, attempt, selected);
        let base = HeTask {
            members: selected.to_vec(),
            attempt,
            config_json: json(&he_config)?,
            quantizer_json: quantizer.map(json).transpose()?.unwrap_or_default(),
            ..Default::default()
        };
        let index_of = |client: &str| -> u32 {
            selected
                .iter()
                .position(|c| c == client)
                .map_or(0, |i| i as u32 + 1)
        };
        let task = |kind: TaskKind, index: u32, fill: &dyn Fn(&mut HeTask)| {
            let mut he = HeTask {
                my_index: index,
                ..base.clone()
            };
            fill(&mut he);
            let mut header = TaskHeader {
                kind: kind as i32,
                he: Some(he),
                ..fit.clone()
            };
            if kind != TaskKind::Fit {
                header.parameters_sha256.clear();
            }
            header
        };
        let abandon = |stage: &str, have: usize, need: usize| {
            format!(
                "round {round} attempt {attempt}: homomorphic aggregation: {have} of the required {need} hospitals {stage}; abandoning the attempt (nothing was decrypted), retrying with fresh keys"
            )
        };

        // Stage 1: signed adverts.
        let tasks = selected
            .iter()
            .map(|c| (c.clone(), task(TaskKind::HeKeygen, index_of(c), &|_| {})))
            .collect();
        let mut adverts: BTreeMap<u32, HeAdvert> = BTreeMap::new();
        let answers = self
            .exchange(
                &job.id,
                format!("round {round} key generation"),
                t.round_timeout_secs,
                tasks,
                None,
                Expect::Nothing,
                |client, a| {
                    let TaskAnswer::HeAdvert {
                        advert,
                        signature,
                        certificate_der,
                    } = a
                    else {
                        return Err("answered a key generation task with something else".into());
                    };
                    let index = index_of(client);
                    let parsed =
                        he::Advert::from_bytes(&params, &advert).map_err(|e| e.to_string())?;
                    if parsed.index() != index {
                        return Err(format!(
                            "advert for member {} from member {index}",
                            parsed.index()
                        ));
                    }
                    if !certificate_der.is_empty() {
                        let signer = cohort_identity::Principal::from_certificate(&certificate_der)
                            .map_err(|e| e.to_string())?;
                        signer
                            .signing_key
                            .verify(
                                cohort_protocol::HE_ADVERT_CONTEXT,
                                &parsed.statement(&session),
                                &signature,
                            )
                            .map_err(|e| format!("advert: {e}"))?;
                    }
                    adverts.insert(
                        index,
                        HeAdvert {
                            index,
                            advert,
                            signature,
                            certificate_der,
                        },
                    );
                    Ok(())
                },
            )
            .await;
        if answers.ok.len() < selected.len() {
            self.note(
                &job.id,
                abandon("sent their key shares", answers.ok.len(), selected.len()),
            );
            return Ok(None);
        }

        // The ceremony's public record: who holds keys, how many decrypt,
        // and the seed anyone can rebuild the common polynomial from.
        let ceremony = format!(
            "round {round} attempt {attempt}: homomorphic key ceremony among {n} hospitals, any {threshold} of whom decrypt; public seed of the common random polynomial {}",
            hex::encode(he::crp_seed(&session))
        );
        self.note_event(&job.id, ceremony);

        // Stage 2: training, then the encrypted update and sealed shares.
        let relayed: Vec<HeAdvert> = adverts.into_values().collect();
        let tasks = selected
            .iter()
            .map(|c| {
                let mut header = task(TaskKind::Fit, index_of(c), &|h| h.adverts = relayed.clone());
                header.split = splits.get(c).cloned();
                (c.clone(), header)
            })
            .collect();
        let mut sum: Option<EncryptedUpdate> = None;
        let mut sealed: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        // Under update proofs: the sum of the commitments, and each
        // member's commitments for validators.
        let mut commitment_sum: Vec<RistrettoPoint> = Vec::new();
        let mut proved: Vec<(String, Vec<u8>)> = Vec::new();
        let barred_before = barred.len();
        let answers = self
            .exchange(
                &job.id,
                format!("round {round} encrypted update"),
                t.round_timeout_secs,
                tasks,
                Some(TaskBody::parameters(global)),
                Expect::Bytes((ciphertext_bytes + commitment_bytes) as u64),
                |client, a| {
                    let TaskAnswer::HeFit {
                        ciphertext: body,
                        sealed: shares,
                        proof,
                        train_loss,
                        compute_seconds,
                        mut receipt,
                    } = a
                    else {
                        return Err("answered an encrypted fit task with something else".into());
                    };
                    let (ciphertext, commitments) = body.split_at(ciphertext_bytes.min(body.len()));
                    if let Some(keys) = proofs {
                        let context = cohort_proofs::Context {
                            job_id: job.id.clone(),
                            round,
                            client: client.to_string(),
                        };
                        match keys.check_committed(&context, commitments, &proof) {
                            Ok((record, points)) => {
                                receipt.proof = Some(record);
                                committed::add_into(&mut commitment_sum, &points);
                                proved.push((client.to_string(), commitments.to_vec()));
                            }
                            Err(reason) => {
                                barred.push(Exclusion {
                                    client: client.to_string(),
                                    reason: reason.clone(),
                                });
                                return Err(reason);
                            }
                        }
                    }
                    let update = EncryptedUpdate::from_bytes(&params, ciphertext)
                        .map_err(|e| e.to_string())?;
                    let shares =
                        he::unframe_list(&shares, n as usize).map_err(|e| e.to_string())?;
                    if shares.len() != n as usize {
                        return Err(format!("{} sealed shares for {n} members", shares.len()));
                    }
                    match &mut sum {
                        None => sum = Some(update),
                        Some(s) => s.add_assign(&update).map_err(|e| e.to_string())?,
                    }
                    sealed.insert(index_of(client), shares);
                    Ok((train_loss, compute_seconds, receipt))
                },
            )
            .await;
        for left_out in &barred[barred_before..] {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {} sits out this round's later attempts: {}",
                    left_out.client, left_out.reason
                ),
            );
        }
        let (Some(sum), true) = (sum, answers.ok.len() == selected.len()) else {
            self.note(
                &job.id,
                abandon("sent an encrypted update", answers.ok.len(), selected.len()),
            );
            return Ok(None);
        };
        let fitted = answers.ok;

        // Stage 3a: every member opens the shares sealed to it.
        let shares_for = |recipient: u32| -> Vec<Vec<u8>> {
            sealed
                .values()
                .map(|from_dealer| from_dealer[recipient as usize - 1].clone())
                .collect()
        };
        let tasks = selected
            .iter()
            .map(|c| {
                let index = index_of(c);
                let shares = shares_for(index);
                let header = task(TaskKind::HeDecrypt, index, &|h| {
                    h.sealed_shares = shares.clone()
                });
                (c.clone(), header)
            })
            .collect();
        let answers = self
            .exchange(
                &job.id,
                format!("round {round} key opening"),
                t.round_timeout_secs,
                tasks,
                None,
                Expect::Nothing,
                |_, a| match a {
                    TaskAnswer::HeDecrypt(body) if body.is_empty() => Ok(()),
                    _ => Err("answered a key opening task with something else".into()),
                },
            )
            .await;
        let mut decryptors: Vec<u32> = answers.ok.iter().map(|(c, ())| index_of(c)).collect();
        decryptors.sort_unstable();
        if decryptors.len() < threshold as usize {
            self.note(
                &job.id,
                abandon(
                    "opened their key shares",
                    decryptors.len(),
                    threshold as usize,
                ),
            );
            return Ok(None);
        }

        // Stage 3b: one decryption share from each decryptor, of the sum
        // that follows the task's header.
        let sum_bytes = TaskBody::bytes(sum.to_bytes());
        let tasks = answers
            .ok
            .iter()
            .map(|(c, ())| {
                let header = task(TaskKind::HeDecrypt, index_of(c), &|h| {
                    h.decryptors = decryptors.clone();
                });
                (c.clone(), header)
            })
            .collect();
        let mut shares = Vec::new();
        let answers = self
            .exchange(
                &job.id,
                format!("round {round} decryption"),
                t.round_timeout_secs,
                tasks,
                Some(sum_bytes),
                Expect::Bytes(he::DecryptionShare::encoded_len(&params, decryptors.len()) as u64),
                |client, a| {
                    let TaskAnswer::HeDecrypt(bytes) = a else {
                        return Err("answered a decryption task with something else".into());
                    };
                    let share = he::DecryptionShare::from_bytes(&params, &bytes)
                        .map_err(|e| e.to_string())?;
                    if share.index != index_of(client) || share.decryptors != decryptors {
                        return Err("a decryption share for another member or set".into());
                    }
                    shares.push(share);
                    cohort_protocol::crash::reached("he-decrypt");
                    Ok(())
                },
            )
            .await;
        if answers.ok.len() < decryptors.len() {
            self.note(
                &job.id,
                abandon(
                    "sent their decryption share",
                    answers.ok.len(),
                    decryptors.len(),
                ),
            );
            return Ok(None);
        }
        let decrypted = match he::decrypt(&params, &sum, &shares) {
            Ok(d) => d,
            Err(e) => {
                self.note(
                    &job.id,
                    format!(
                        "round {round} attempt {attempt}: homomorphic aggregation could not decrypt the sum: {e}; retrying"
                    ),
                );
                return Ok(None);
            }
        };
        let keys = match &encoding {
            Encoding::Quantized(quantizer) => {
                return super::fitted_from_sum(&decrypted, quantizer, fitted, AGGREGATE)
                    .map(Some)
                    .map_err(stop);
            }
            Encoding::Committed(keys) => keys,
        };
        let sum = he::plaintext_to_signed(&decrypted, params.plaintext_bits());
        if let Err(e) = committed::check_sum(&commitment_sum, &sum) {
            self.note(
                &job.id,
                format!("round {round} attempt {attempt}: {e}; the sum is not used, retrying"),
            );
            return Ok(None);
        }
        Ok(Some(
            self.fitted_from_committed_sum(
                &job.id,
                round,
                proved,
                &sum,
                keys.grid(),
                fitted,
                AGGREGATE,
                barred.clone(),
            )
            .await?,
        ))
    }
}
