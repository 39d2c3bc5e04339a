//! The hospital's side of threshold homomorphic aggregation.
//!
//! The coordinator only relays and adds: this side recomputes the session
//! from what it was told, checks every member's advert against that
//! member's certificate, computes the collective key itself, and sends its
//! update only encrypted under it. Its secrets live in memory, for one
//! round attempt, and it gives at most one decryption share per attempt.

use std::collections::BTreeSet;

use cohort_identity::Role;
use cohort_privacy::he::{self, Advert, EncryptedUpdate, HeConfig, HeParams, HospitalRound};
use cohort_privacy::quantize::Quantizer;
use cohort_proofs::{UpdateProofTask, committed};
use cohort_protocol::v1::{HeTask, ResultHeader, TaskHeader};

use crate::proofs::{Committed, decode_blindings, saturating_i32};
use crate::secagg::payload_answer;
use crate::work::{Answer, Worker, parse};

/// What a client derives for itself from a homomorphic-aggregation task.
struct View {
    session: [u8; 32],
    params: HeParams,
    index: u32,
    attempt: u32,
}

impl Worker {
    fn he_view(&self, task: &TaskHeader, he: &HeTask) -> Result<View, String> {
        let members = &he.members;
        let n = members.len();
        let unique: BTreeSet<&String> = members.iter().collect();
        if n < 2 || unique.len() != n {
            return Err(format!(
                "homomorphic aggregation needs at least 2 distinct members, the task lists {n} \
                 ({} distinct)",
                unique.len()
            ));
        }
        let index = he.my_index;
        if index == 0 || members.get(index as usize - 1).map(String::as_str) != Some(self.name()) {
            return Err(format!(
                "the task gives this client index {index}, which is not `{}` in the member list",
                self.name()
            ));
        }
        let config: HeConfig = parse(&he.config_json, "homomorphic-aggregation parameters")?;
        if config.hospitals as usize != n {
            return Err(format!(
                "the parameters are for {} hospitals, the task lists {n}",
                config.hospitals
            ));
        }
        // HeParams refuses a threshold below 2: no hospital may be able to
        // decrypt alone, whatever the coordinator asks for.
        let params = config.params().map_err(|e| e.to_string())?;
        let session = cohort_protocol::he_session(&task.job_id, task.round, he.attempt, members);
        Ok(View {
            session,
            params,
            index,
            attempt: he.attempt,
        })
    }

    /// Stage 1: this attempt's key share and envelope key; the public
    /// halves go out signed.
    pub(crate) fn he_keygen(&self, task: &TaskHeader, he: &HeTask) -> Result<Answer, String> {
        let view = self.he_view(task, he)?;
        let (round, advert) =
            HospitalRound::new(view.params, view.session, view.index, &mut rand::rng())
                .map_err(|e| e.to_string())?;
        let signature = match self.kit() {
            Some(kit) => kit
                .signing_key
                .sign(
                    cohort_protocol::HE_ADVERT_CONTEXT,
                    &advert.statement(&view.session),
                )
                .map_err(|e| format!("signing the advert: {e}"))?,
            None => Vec::new(),
        };
        self.he_sessions().insert(view.session, round);
        Ok(payload_answer(advert.to_bytes(), signature))
    }

    /// Stage 2: checks every member's advert, trains, encodes the update
    /// (the example count rides inside), encrypts it under the collective
    /// key and deals this hospital's Shamir shares, sealed to each member.
    /// With update proofs the update is encrypted on the job's grid instead,
    /// and its commitments and proof follow the ciphertext.
    pub(crate) fn encrypted_fit(
        &self,
        task: &TaskHeader,
        he: &HeTask,
        train: impl FnOnce() -> Result<crate::work::Trained, String>,
    ) -> Result<Answer, String> {
        let view = self.he_view(task, he)?;
        let wanted: Option<UpdateProofTask> = if task.proofs_json.is_empty() {
            None
        } else {
            Some(parse(&task.proofs_json, "update-proof settings")?)
        };
        let quantizer: Option<Quantizer> = match &wanted {
            Some(_) => None,
            None => Some(parse(&he.quantizer_json, "quantizer")?),
        };
        if let Some(quantizer) = &quantizer
            && quantizer.bits() != view.params.plaintext_bits()
        {
            return Err(format!(
                "the quantizer sums mod 2^{}, the plaintexts are mod 2^{}",
                quantizer.bits(),
                view.params.plaintext_bits()
            ));
        }
        if he.adverts.len() != he.members.len() {
            return Err(format!(
                "{} adverts for {} members: every member's key share is needed",
                he.adverts.len(),
                he.members.len()
            ));
        }
        let adverts = he
            .adverts
            .iter()
            .map(|relayed| {
                let advert = Advert::from_bytes(&view.params, &relayed.advert)
                    .map_err(|e| format!("member {}'s advert: {e}", relayed.index))?;
                if advert.index() != relayed.index {
                    return Err(format!(
                        "member {}'s advert names another index",
                        relayed.index
                    ));
                }
                self.check_he_signature(&view, he, relayed, &advert)?;
                Ok(advert)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let trained = train()?;
        if let Some(wanted) = wanted {
            return self.committed_encrypted_fit(task, &view, &adverts, &trained, &wanted);
        }
        let Some(quantizer) = quantizer else {
            return Err("no quantizer for the update".into());
        };
        // Under client-level DP the noise goes in before encryption, sized
        // for the fewest decryptors.
        let encoded = self.encode_for_sum(
            task,
            &trained,
            &quantizer,
            view.params.threshold(),
            view.params.hospitals(),
        )?;
        self.keep_contribution(task, he.attempt, &encoded, quantizer.bits());
        let (update, sealed) = self.he_sessions().with(&view.session, |round| {
            round
                .encrypt_and_deal(&adverts, &encoded, &mut rand::rng())
                .map_err(|e| e.to_string())
        })?;
        let ciphertext = update.to_bytes();
        Ok(Answer {
            header: ResultHeader {
                // The weight travels inside the encrypted vector.
                num_examples: 0,
                parameter_count: ciphertext.len() as u64,
                train_loss: trained.loss,
                dataset_sha256: trained.commitment,
                dp_epsilon: trained.dp_epsilon.unwrap_or(0.0),
                secagg_payload: he::frame_list(&sealed),
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: ciphertext,
        })
    }

    /// [`encrypted_fit`](Self::encrypted_fit) with update proofs: the
    /// update on the job's grid, encrypted as signed integers; one Pedersen
    /// commitment per entry, blinded with this member's pairwise blindings
    /// (which cancel over all members); a proof that the commitments hold a
    /// well-formed update. The coordinator checks the proof, and that the
    /// decrypted sum is the sum of the commitments. Under `--misbehave`
    /// the drill encrypts its tampered update (`boost`: beside the honest
    /// update's commitments and proof, which the sum check catches).
    fn committed_encrypted_fit(
        &self,
        task: &TaskHeader,
        view: &View,
        adverts: &[Advert],
        trained: &crate::work::Trained,
        wanted: &UpdateProofTask,
    ) -> Result<Answer, String> {
        let bits = view.params.plaintext_bits();
        let update = self.grid_update(trained, wanted, "homomorphic aggregation")?;
        let sent: Vec<i32> = update.sent.iter().copied().map(saturating_i32).collect();
        let values = he::signed_to_plaintext(&sent, bits);
        self.keep_contribution(task, view.attempt, &values, bits);
        let (encrypted, sealed, blindings) = self.he_sessions().with(&view.session, |round| {
            let (encrypted, sealed) = round
                .encrypt_and_deal(adverts, &values, &mut rand::rng())
                .map_err(|e| e.to_string())?;
            let blindings = round
                .blindings(update.proved.len())
                .map_err(|e| e.to_string())?;
            Ok((encrypted, sealed, blindings))
        })?;
        let bytes: Vec<[u8; 32]> = blindings.iter().map(|r| r.to_bytes()).collect();
        let blindings = decode_blindings(&bytes)?;
        let Committed { commitments, proof } =
            self.commit_and_prove(task, wanted, &update.proved, &blindings)?;
        let mut body = encrypted.to_bytes();
        body.extend_from_slice(&committed::commitments_to_bytes(&commitments));
        Ok(Answer {
            header: ResultHeader {
                // Committed updates are averaged uniformly: the count stays home.
                num_examples: 0,
                parameter_count: body.len() as u64,
                train_loss: trained.loss,
                dataset_sha256: trained.commitment.clone(),
                dp_epsilon: trained.dp_epsilon.unwrap_or(0.0),
                secagg_payload: he::frame_list(&sealed),
                update_proof: proof,
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: body,
        })
    }

    /// Under mutual TLS a member's advert counts only with its signature,
    /// made with the signing key its certificate binds, for this session
    /// and index; the certificate must name the member at that index.
    fn check_he_signature(
        &self,
        view: &View,
        he: &HeTask,
        relayed: &cohort_protocol::v1::HeAdvert,
        advert: &Advert,
    ) -> Result<(), String> {
        let Some(kit) = self.kit() else {
            return Ok(());
        };
        let expected = he
            .members
            .get((relayed.index as usize).wrapping_sub(1))
            .ok_or_else(|| format!("advert from unknown index {}", relayed.index))?;
        let signer = kit
            .verify_member(&relayed.certificate_der)
            .map_err(|e| format!("member `{expected}`'s certificate: {e}"))?;
        if signer.role != Role::Hospital || &signer.name != expected {
            return Err(format!(
                "the advert for `{expected}` comes with the certificate of {signer}"
            ));
        }
        signer
            .signing_key
            .verify(
                cohort_protocol::HE_ADVERT_CONTEXT,
                &advert.statement(&view.session),
                &relayed.signature,
            )
            .map_err(|e| format!("member `{expected}`'s advert: {e}"))
    }

    /// Stage 3: without decryptors, opens the shares sealed to this
    /// hospital; with them, sends its one decryption share of the sum and
    /// forgets the attempt.
    pub(crate) fn he_decrypt(
        &self,
        task: &TaskHeader,
        he: &HeTask,
        sum: &[u8],
    ) -> Result<Answer, String> {
        let view = self.he_view(task, he)?;
        if he.decryptors.is_empty() {
            let secrets = self.he_sessions().with(&view.session, |round| {
                round
                    .open_shares(&he.sealed_shares)
                    .map_err(|e| e.to_string())?;
                Ok(round.secret_material())
            })?;
            self.keep_key_material(task, he.attempt, &secrets);
            return Ok(payload_answer(Vec::new(), Vec::new()));
        }
        if !he.decryptors.contains(&view.index) {
            return Err(format!(
                "asked for a decryption share for a set without this hospital ({})",
                view.index
            ));
        }
        let sum = EncryptedUpdate::from_bytes(&view.params, sum).map_err(|e| e.to_string())?;
        let share = self.he_sessions().with(&view.session, |round| {
            round
                .decryption_share(&he.decryptors, &sum, &mut rand::rng())
                .map_err(|e| e.to_string())
        });
        self.he_sessions().remove(&view.session);
        let share = share?;
        Ok(Answer {
            header: ResultHeader {
                parameter_count: share.len() as u64,
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: share,
        })
    }

    /// With `--keep-contributions`, the hospital also keeps its own secret
    /// key material of the attempt, next to the update it contributed: it
    /// never leaves this machine, and lets an auditor (or a test) check
    /// that none of it reached the coordinator.
    fn keep_key_material(&self, task: &TaskHeader, attempt: u32, secrets: &[Vec<u8>]) {
        if !self.options().keep_contributions {
            return;
        }
        let Some(dir) = self.records_dir() else {
            return;
        };
        let dir = dir.join("key-material");
        let path = dir.join(format!(
            "{}-round{:05}-attempt{attempt}.he",
            task.job_id, task.round
        ));
        if let Err(e) = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, he::frame_list(secrets)))
        {
            tracing::warn!(path = %path.display(), "could not keep the key material: {e}");
        }
    }
}
