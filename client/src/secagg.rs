//! The hospital's side of secure aggregation (SecAgg+).
//!
//! The coordinator only relays: this side recomputes the session and the
//! neighbour graph from what it was told, checks every neighbour's key
//! advertisement against that neighbour's certificate (issued by the
//! consortium CA), and never sends its update other than masked. The
//! round's secrets live in memory only, for one round attempt.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use cohort_identity::Role;
use cohort_privacy::quantize::{Quantizer, pack};
use cohort_privacy::secagg::{
    Advertisement, ClientId, ClientRound, Params, decode_shares, encode_reveals, encode_shares,
    graph_seed, neighbourhoods,
};
use cohort_protocol::v1::{ResultHeader, SecAggTask, TaskHeader};
use tracing::{info, warn};

use crate::work::{Answer, Worker, parse};

/// Round attempts a client keeps secrets for at once; older ones are
/// forgotten (their attempt was abandoned by the coordinator).
const MAX_OPEN_SESSIONS: usize = 8;

/// The secrets of the round attempts this client is taking part in, by
/// session: SecAgg+ rounds, or homomorphic-aggregation rounds.
pub struct Sessions<R> {
    open: Mutex<VecDeque<([u8; 32], R)>>,
}

impl<R> Default for Sessions<R> {
    fn default() -> Self {
        Self {
            open: Mutex::new(VecDeque::new()),
        }
    }
}

impl<R> Sessions<R> {
    pub(crate) fn insert(&self, session: [u8; 32], round: R) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(s, _)| *s != session);
        if open.len() >= MAX_OPEN_SESSIONS {
            open.pop_front();
        }
        open.push_back((session, round));
    }

    pub(crate) fn with<T>(
        &self,
        session: &[u8; 32],
        f: impl FnOnce(&mut R) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (_, round) = open.iter_mut().find(|(s, _)| s == session).ok_or(
            "no keys for this round attempt (the client restarted since it made them, or the \
             attempt is long over)",
        )?;
        f(round)
    }

    pub(crate) fn remove(&self, session: &[u8; 32]) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(s, _)| s != session);
    }
}

/// What a client derives for itself from a secure-aggregation task.
struct View {
    session: [u8; 32],
    params: Params,
    me: ClientId,
    neighbours: Vec<ClientId>,
}

impl Worker {
    fn view(&self, task: &TaskHeader, secagg: &SecAggTask) -> Result<View, String> {
        let members = &secagg.members;
        let n = members.len();
        let unique: BTreeSet<&String> = members.iter().collect();
        if n < 2 || unique.len() != n {
            return Err(format!(
                "secure aggregation needs at least 2 distinct members, the task lists {n} ({} distinct)",
                unique.len()
            ));
        }
        let me = secagg.my_id;
        if members.get(me as usize).map(String::as_str) != Some(self.name()) {
            return Err(format!(
                "the task gives this client id {me}, which is not `{}` in the member list",
                self.name()
            ));
        }
        let params: Params = parse(&secagg.params_json, "secure-aggregation parameters")?;
        let session = if secagg.statistics_json.is_empty() {
            cohort_protocol::secagg_session(&task.job_id, task.round, secagg.attempt, members)
        } else {
            cohort_protocol::secagg_statistics_session(
                &task.job_id,
                &secagg.statistics_json,
                secagg.attempt,
                members,
            )
        };
        let graph = neighbourhoods(n as u32, secagg.neighbours, &graph_seed(&session));
        let neighbours = graph.get(me as usize).cloned().unwrap_or_default();
        // A threshold at or below half of the share holders would let two
        // disjoint groups rebuild both of a client's secrets.
        // Shares are held by the neighbours and the client itself.
        if neighbours.is_empty() || 2 * params.share_threshold as usize <= neighbours.len() + 1 {
            return Err(format!(
                "refusing secure aggregation with a share threshold of {} for {} neighbours: it must exceed half",
                params.share_threshold,
                neighbours.len()
            ));
        }
        Ok(View {
            session,
            params,
            me,
            neighbours,
        })
    }

    /// Stage 1: this attempt's key pairs; the public halves go out signed.
    pub(crate) fn advertise(
        &self,
        task: &TaskHeader,
        secagg: &SecAggTask,
    ) -> Result<Answer, String> {
        let view = self.view(task, secagg)?;
        let (round, advert) = ClientRound::new(
            &view.session,
            view.params,
            view.me,
            view.neighbours,
            &mut rand::rng(),
        )
        .map_err(|e| e.to_string())?;
        let signature = match self.kit() {
            Some(kit) => kit
                .signing_key
                .sign(
                    cohort_protocol::SECAGG_ADVERT_CONTEXT,
                    &advert.statement(&view.session, view.me),
                )
                .map_err(|e| format!("signing the key advertisement: {e}"))?,
            None => Vec::new(),
        };
        self.sessions().insert(view.session, round);
        Ok(payload_answer(advert.to_bytes(), signature))
    }

    /// Stage 2: checks the neighbours' signed keys and shares this
    /// client's secrets with them, encrypted to each.
    pub(crate) fn share_keys(
        &self,
        task: &TaskHeader,
        secagg: &SecAggTask,
    ) -> Result<Answer, String> {
        let view = self.view(task, secagg)?;
        let mut adverts = BTreeMap::new();
        for relayed in &secagg.adverts {
            let ad = Advertisement::from_bytes(&relayed.advertisement)
                .map_err(|e| format!("neighbour {}'s key advertisement: {e}", relayed.id))?;
            self.check_advert_signature(&view, secagg, relayed, &ad)?;
            adverts.insert(relayed.id, ad);
        }
        let batch = self.sessions().with(&view.session, |round| {
            round
                .share_keys(&adverts, &mut rand::rng())
                .map_err(|e| e.to_string())
        })?;
        Ok(payload_answer(encode_shares(&batch), Vec::new()))
    }

    /// Under mutual TLS a neighbour's keys count only with its signature,
    /// made with the signing key its certificate binds, for this session
    /// and id; the certificate must name the member at that id.
    fn check_advert_signature(
        &self,
        view: &View,
        secagg: &SecAggTask,
        relayed: &cohort_protocol::v1::SecAggAdvert,
        ad: &Advertisement,
    ) -> Result<(), String> {
        let Some(kit) = self.kit() else {
            return Ok(());
        };
        let expected = secagg
            .members
            .get(relayed.id as usize)
            .ok_or_else(|| format!("key advertisement from unknown id {}", relayed.id))?;
        let signer = kit
            .verify_member(&relayed.certificate_der)
            .map_err(|e| format!("neighbour `{expected}`'s certificate: {e}"))?;
        if signer.role != Role::Hospital || &signer.name != expected {
            return Err(format!(
                "the key advertisement for `{expected}` comes with the certificate of {signer}"
            ));
        }
        signer
            .signing_key
            .verify(
                cohort_protocol::SECAGG_ADVERT_CONTEXT,
                &ad.statement(&view.session, relayed.id),
                &relayed.signature,
            )
            .map_err(|e| format!("neighbour `{expected}`'s key advertisement: {e}"))
    }

    /// Stage 3: trains (`train`: whole-model or split training), encodes
    /// the update (the example count rides inside) and sends it masked.
    pub(crate) fn masked_fit(
        &self,
        task: &TaskHeader,
        secagg: &SecAggTask,
        train: impl FnOnce() -> Result<crate::work::Trained, String>,
    ) -> Result<Answer, String> {
        let view = self.view(task, secagg)?;
        if !task.proofs_json.is_empty() {
            let wanted: cohort_proofs::UpdateProofTask =
                parse(&task.proofs_json, "update-proof settings")?;
            let received = decode_shares(&secagg.shares).map_err(|e| e.to_string())?;
            let trained = train()?;
            let blindings = self.sessions().with(&view.session, |round| {
                round
                    .blindings(wanted.parameter_count as usize, &received)
                    .map_err(|e| e.to_string())
            })?;
            let blindings = blindings.iter().map(|r| r.to_bytes()).collect::<Vec<_>>();
            return self.committed(task, &trained, &blindings, &wanted);
        }
        let quantizer: Quantizer = parse(&secagg.quantizer_json, "quantizer")?;
        if quantizer.bits() != view.params.bits {
            return Err(format!(
                "the quantizer sums mod 2^{}, the masks mod 2^{}",
                quantizer.bits(),
                view.params.bits
            ));
        }
        let received = decode_shares(&secagg.shares).map_err(|e| e.to_string())?;
        let trained = train()?;
        let encoded = self.encode_for_sum(
            task,
            &trained,
            &quantizer,
            view.params.min_survivors,
            secagg.members.len() as u32,
        )?;
        self.keep_contribution(task, secagg.attempt, &encoded, view.params.bits);
        let masked = self.sessions().with(&view.session, |round| {
            round.mask(&encoded, &received).map_err(|e| e.to_string())
        })?;
        Ok(Answer {
            header: ResultHeader {
                // The weight travels inside the masked vector.
                num_examples: 0,
                parameter_count: masked.len() as u64,
                train_loss: trained.loss,
                dataset_sha256: trained.commitment,
                dp_epsilon: trained.dp_epsilon.unwrap_or(0.0),
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: pack(&masked, view.params.bits),
        })
    }

    /// Stage 3 of a statistics session: this hospital's term of the
    /// pass's sum (counts and fixed-point sums over its rows), masked.
    pub(crate) fn masked_statistics(
        &self,
        task: &TaskHeader,
        secagg: &SecAggTask,
    ) -> Result<Answer, String> {
        let view = self.view(task, secagg)?;
        if view.params.bits != cohort_datasets::SUM_BITS {
            return Err(format!(
                "statistics are summed mod 2^{}, the masks are mod 2^{}",
                cohort_datasets::SUM_BITS,
                view.params.bits
            ));
        }
        let pass: cohort_datasets::StatisticsPass =
            parse(&secagg.statistics_json, "statistics pass")?;
        let received = decode_shares(&secagg.shares).map_err(|e| e.to_string())?;
        let terms = self.statistics_for_sum(task, &secagg.statistics_json)?;
        let masked = self.sessions().with(&view.session, |round| {
            round.mask(&terms, &received).map_err(|e| e.to_string())
        })?;
        info!(
            client = self.name(),
            job = task.job_id,
            pass = pass.name(),
            "preprocessing statistics sent masked"
        );
        Ok(Answer {
            header: ResultHeader {
                parameter_count: masked.len() as u64,
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: pack(&masked, view.params.bits),
        })
    }

    /// Stage 4: reveals what the coordinator needs to remove the masks,
    /// once, then forgets the attempt's secrets.
    pub(crate) fn unmask(&self, task: &TaskHeader, secagg: &SecAggTask) -> Result<Answer, String> {
        let view = self.view(task, secagg)?;
        let survivors: BTreeSet<ClientId> = secagg.survivors.iter().copied().collect();
        let reveals = self.sessions().with(&view.session, |round| {
            round.unmask(&survivors).map_err(|e| e.to_string())
        });
        self.sessions().remove(&view.session);
        Ok(payload_answer(encode_reveals(&reveals?), Vec::new()))
    }

    /// The trained update as a term of a sum that only reaches the
    /// coordinator whole (secure or homomorphic aggregation): clipped,
    /// weighted (uniformly under client-level DP) and quantized, with the
    /// example count inside, and under client-level DP this hospital's
    /// share of the noise, sized for `min_survivors` of `members`.
    pub(crate) fn encode_for_sum(
        &self,
        task: &TaskHeader,
        trained: &crate::work::Trained,
        quantizer: &Quantizer,
        min_survivors: u32,
        members: u32,
    ) -> Result<Vec<u64>, String> {
        let examples = if trained.client_level.is_some() {
            1
        } else {
            trained.examples
        };
        let mut encoded = quantizer
            .encode_update(&trained.delta, examples, &mut rand::rng())
            .map_err(|e| e.to_string())?;
        if let Some(sigma) = trained.client_level {
            let noise = cohort_privacy::distributed::DistributedNoise::new(
                quantizer,
                trained.delta.len(),
                sigma,
                min_survivors,
                members,
            )
            .map_err(|e| format!("distributed DP: {e}"))?;
            noise
                .add_to(&mut encoded.values, quantizer.bits())
                .map_err(|e| format!("distributed DP: {e}"))?;
        }
        if encoded.clipped {
            info!(
                client = self.name(),
                job = task.job_id,
                round = task.round,
                clip = quantizer.clip(),
                "update clipped to the job's L2 bound before encoding"
            );
        }
        Ok(encoded.values)
    }

    /// With `--keep-contributions`, the hospital keeps its own copy of the
    /// encoded update it contributed (before masking), in its data dir: the
    /// coordinator never sees it, but the hospital can show what it sent.
    pub(crate) fn keep_contribution(
        &self,
        task: &TaskHeader,
        attempt: u32,
        values: &[u64],
        bits: u32,
    ) {
        if !self.options().keep_contributions {
            return;
        }
        let Some(dir) = self.records_dir() else {
            return;
        };
        let dir = dir.join("contributions");
        let path = dir.join(format!(
            "{}-round{:05}-attempt{}.bits{bits}",
            task.job_id, task.round, attempt
        ));
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, pack(values, bits)))
        {
            warn!(path = %path.display(), "could not keep the contribution: {e}");
        }
    }
}

pub(crate) fn payload_answer(payload: Vec<u8>, signature: Vec<u8>) -> Answer {
    Answer {
        header: ResultHeader {
            secagg_payload: payload,
            secagg_signature: signature,
            ..Default::default()
        },
        parameters: Vec::new(),
        masked: Vec::new(),
    }
}
