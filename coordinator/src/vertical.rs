//! Vertical split learning at the coordinator (`[training] mode =
//! "vertical"`): the job checks, the answers of VERTICAL tasks, and the relay
//! that carries one round's activations and gradients between the sites.
//!
//! Sites hold different columns about overlapping patients. The site whose
//! file has the job's label column is the label site: it holds the labels
//! and the top of the network, which never leave it during training. The
//! others (feature sites) hold first-layer blocks. Each batch, every feature
//! site streams its block's pre-activations over `VerticalExchange`; the
//! relay checks them (shape, finite values, order), sums them and passes the
//! sum to the label site, which adds its own block, takes a step of its top
//! part and streams back the gradient at the cut; the relay checks it and
//! passes it to every feature site.
//!
//! What the coordinator sees: blinded ids during the private set
//! intersection (only their count in common), the feature sites' summed
//! activations and the label site's gradients (as in SplitFed), and the parts
//! at the end of each round (stored as the round's model). Never a label or
//! a row.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cohort_models::{VerticalBatch, VerticalLayout};
use cohort_protocol::v1::{
    self, ResultHeader, VerticalDown, VerticalUp, vertical_down, vertical_up,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tonic::Status;

use crate::job::{Aggregation, JobError, JobSpec};
use crate::lock;
use crate::registry::TaskAnswer;
use crate::strategy::StrategySpec;

/// The `[vertical]` table of a job file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerticalSpec {
    /// The max-norm defence against label leakage through the gradients at
    /// the cut (Li et al. 2022), with this noise scale (1 is the paper's);
    /// absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm_defence: Option<f64>,
}

impl JobSpec {
    /// The max-norm defence's noise scale of a vertical job, if it is on.
    pub fn max_norm_defence(&self) -> Option<f64> {
        self.vertical.as_ref().and_then(|v| v.max_norm_defence)
    }
}

/// Largest byte payload a VERTICAL answer may carry (blinded id lists,
/// parts): the protocol's bound on a parameter vector.
pub const MAX_ANSWER_BYTES: u64 = cohort_protocol::MAX_PARAMETERS * 4;

/// Checks what vertical split learning needs of a job file, naming the key
/// at fault. Options that do not apply are refused, not ignored.
pub fn check_job(spec: &JobSpec) -> Result<(), JobError> {
    let invalid = |key: &str, message: &str| JobError::Invalid {
        key: key.to_string(),
        message: message.to_string(),
    };
    if spec.data.id.is_none() {
        return Err(invalid(
            "data.id",
            "a vertical job needs the id column by which the sites' rows are aligned \
             (private set intersection), e.g. id = \"patient_id\"",
        ));
    }
    if !matches!(spec.data.numeric, cohort_datasets::NumericColumns::All)
        || !spec.data.categorical.is_empty()
    {
        return Err(invalid(
            "data.numeric",
            "vertical sites use every column of their file as a numeric feature except the id, \
             the label and data.drop; data.numeric and data.categorical are not supported",
        ));
    }
    if spec.data.validation_fraction <= 0.0 {
        return Err(invalid(
            "data.validation_fraction",
            "the label site reports each round's AUC on held-out shared patients; hold some out \
             (e.g. 0.2)",
        ));
    }
    if let cohort_models::ModelSpec::Mlp { cut: Some(_), .. } = &spec.model {
        return Err(invalid(
            "model.cut",
            "vertical jobs cut inside the first layer (each site holds the rows of its own \
             columns); remove model.cut",
        ));
    }
    let layout = VerticalLayout::new(&spec.model).map_err(|e| JobError::Invalid {
        key: "model".into(),
        message: e.to_string(),
    })?;
    let t = &spec.training;
    if t.min_clients < 2 {
        return Err(invalid(
            "training.min_clients",
            "a vertical job needs at least 2 sites: the label site and a feature site",
        ));
    }
    let batch_bytes = (t.batch_size as usize).saturating_mul(layout.cut_width * 4);
    if batch_bytes > crate::split::MAX_BATCH_BYTES {
        return Err(JobError::Invalid {
            key: "training.batch_size".into(),
            message: format!(
                "a batch of {} rows × {} activations is {batch_bytes} bytes, over the {} a \
                 batch may carry",
                t.batch_size,
                layout.cut_width,
                crate::split::MAX_BATCH_BYTES
            ),
        });
    }
    if spec.privacy.aggregation != Aggregation::Plain {
        return Err(invalid(
            "privacy.aggregation",
            "vertical jobs exchange activations and gradients, not updates to average: secure \
             or homomorphic aggregation has nothing to sum; remove it",
        ));
    }
    if spec.privacy.dp.is_some() {
        return Err(invalid(
            "privacy.dp",
            "vertical jobs have no differential-privacy accounting (the activations sent every \
             batch would need it); use [vertical] max_norm_defence against label leakage",
        ));
    }
    if !spec.proofs.is_off() {
        return Err(invalid(
            "proofs",
            "update proofs are not implemented for vertical jobs (there is no update)",
        ));
    }
    if spec.valuation.is_some() {
        return Err(invalid(
            "valuation",
            "contribution valuation is not implemented for vertical jobs (every site's \
             columns are needed for every prediction)",
        ));
    }
    if !matches!(spec.strategy, StrategySpec::FedAvg {}) {
        return Err(invalid(
            "strategy",
            "vertical jobs have no aggregation step; remove [strategy]",
        ));
    }
    if let Some(scale) = spec.max_norm_defence()
        && !(scale.is_finite() && scale > 0.0)
    {
        return Err(invalid(
            "vertical.max_norm_defence",
            "must be a positive number (1 is the noise scale of Li et al. 2022)",
        ));
    }
    Ok(())
}

/// Reads a VERTICAL answer: its JSON report and its byte payload
/// (`parameter_count` bytes in chunks).
pub(crate) async fn read_answer(
    header: &ResultHeader,
    stream: &mut crate::server::Upload,
) -> Result<TaskAnswer, String> {
    if header.parameter_count > MAX_ANSWER_BYTES {
        return Err(format!(
            "a vertical answer of {} bytes exceeds the limit of {MAX_ANSWER_BYTES}",
            header.parameter_count
        ));
    }
    let mut assembler = cohort_protocol::ByteAssembler::new(header.parameter_count as usize);
    crate::server::read_chunks(stream, |data| {
        assembler
            .push(data)
            .map_err(|e| format!("vertical answer: {e}"))
    })
    .await?;
    let payload = assembler
        .finish()
        .map_err(|e| format!("vertical answer: {e}"))?;
    use sha2::Digest as _;
    Ok(TaskAnswer::Vertical {
        report_json: header.statistics_json.clone(),
        payload_sha256: hex::encode(sha2::Sha256::digest(&payload)),
        signature: header.update_signature.clone(),
        payload,
        num_examples: header.num_examples,
        compute_seconds: if header.compute_seconds.is_finite() && header.compute_seconds >= 0.0 {
            header.compute_seconds
        } else {
            0.0
        },
    })
}

type Down = Result<VerticalDown, Status>;

/// The two ends of one site's stream, held by the relay.
pub struct SiteLink {
    up: mpsc::Receiver<vertical_up::Frame>,
    down: mpsc::Sender<Down>,
}

/// The ends a site's `VerticalExchange` stream claims.
struct Waiting {
    up: mpsc::Sender<vertical_up::Frame>,
    down: mpsc::Receiver<Down>,
}

/// The relays of running vertical rounds, by exchange id: each site's end
/// waits here until the site's stream claims it (once).
#[derive(Default)]
pub struct VerticalRelays {
    open: Mutex<HashMap<String, HashMap<String, Waiting>>>,
}

impl VerticalRelays {
    /// Opens an exchange between `sites`; the relay's ends of their links.
    pub fn open(&self, sites: &[String]) -> (String, HashMap<String, SiteLink>) {
        let exchange_id = uuid::Uuid::new_v4().simple().to_string();
        let mut waiting = HashMap::new();
        let mut links = HashMap::new();
        for site in sites {
            // A couple of frames in flight: a stalled site stalls the batch,
            // which every site waits on anyway.
            let (up_tx, up_rx) = mpsc::channel(4);
            let (down_tx, down_rx) = mpsc::channel(4);
            waiting.insert(
                site.clone(),
                Waiting {
                    up: up_tx,
                    down: down_rx,
                },
            );
            links.insert(
                site.clone(),
                SiteLink {
                    up: up_rx,
                    down: down_tx,
                },
            );
        }
        lock(&self.open).insert(exchange_id.clone(), waiting);
        (exchange_id, links)
    }

    fn claim(&self, exchange_id: &str, client: &str) -> Result<Waiting, String> {
        let mut open = lock(&self.open);
        let sites = open
            .get_mut(exchange_id)
            .ok_or_else(|| format!("no open vertical exchange {exchange_id}"))?;
        sites.remove(client).ok_or_else(|| {
            format!("vertical exchange {exchange_id} has no unclaimed seat for {client}")
        })
    }

    /// Forgets the exchange (its unclaimed seats).
    pub fn close(&self, exchange_id: &str) {
        lock(&self.open).remove(exchange_id);
    }
}

/// Serves one `VerticalExchange` stream: the opening frame names the
/// exchange; the site's frames go to the relay, the relay's come back.
pub(crate) async fn serve_exchange(
    registry: std::sync::Arc<crate::registry::Registry>,
    caller: &crate::security::Caller,
    mut stream: tonic::Streaming<VerticalUp>,
) -> Result<tonic::Response<crate::server::VerticalDownStream>, Status> {
    let open = match stream.message().await? {
        Some(VerticalUp {
            frame: Some(vertical_up::Frame::Open(open)),
        }) => open,
        _ => {
            return Err(Status::invalid_argument(
                "the first frame of a vertical exchange must open it",
            ));
        }
    };
    let client = crate::server::session_client(&registry, caller, &open.session_id)?;
    let Waiting { up, down } = registry
        .vertical
        .claim(&open.exchange_id, &client)
        .map_err(Status::failed_precondition)?;
    tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(VerticalUp {
                    frame: Some(vertical_up::Frame::Open(_)),
                })) => {
                    tracing::warn!(client, "a vertical exchange was opened twice");
                    break;
                }
                Ok(Some(VerticalUp { frame: Some(frame) })) => {
                    if up.send(frame).await.is_err() {
                        break;
                    }
                }
                Ok(Some(VerticalUp { frame: None })) | Ok(None) => break,
                Err(status) => {
                    tracing::warn!(client, "vertical exchange broke: {}", status.message());
                    break;
                }
            }
        }
    });
    Ok(tonic::Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(down),
    )))
}

/// What one round's relay moves between whom.
pub struct RelayPlan {
    pub label_site: String,
    pub feature_sites: Vec<String>,
    pub cut_width: usize,
    pub schedule: Vec<VerticalBatch>,
    /// How long the relay waits for any one frame.
    pub frame_timeout: Duration,
}

/// What a relay moved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayStats {
    pub batches: u64,
    /// Activations received from the feature sites.
    pub activation_bytes: u64,
    /// Gradients received from the label site (and passed on to each
    /// feature site).
    pub gradient_bytes: u64,
}

/// Why a relay stopped: the site at fault (if one is) and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayFailure {
    pub site: String,
    pub reason: String,
}

impl std::fmt::Display for RelayFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.site, self.reason)
    }
}

/// Runs one round's exchange to its end; on any bad or missing frame, every
/// site's stream ends with the reason and nothing more is relayed.
pub async fn relay(
    plan: RelayPlan,
    mut links: HashMap<String, SiteLink>,
) -> Result<RelayStats, RelayFailure> {
    let result = relay_batches(&plan, &mut links).await;
    if let Err(failure) = &result {
        for link in links.values() {
            // A site that stopped reading does not hold the others up.
            let _ = link.down.try_send(Err(Status::aborted(format!(
                "vertical exchange stopped: {failure}"
            ))));
        }
    }
    result
}

async fn receive(
    links: &mut HashMap<String, SiteLink>,
    site: &str,
    timeout: Duration,
    index: usize,
) -> Result<vertical_up::Frame, RelayFailure> {
    let fail = |reason: String| RelayFailure {
        site: site.to_string(),
        reason,
    };
    let link = links
        .get_mut(site)
        .ok_or_else(|| fail("is not part of the exchange".into()))?;
    match tokio::time::timeout(timeout, link.up.recv()).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(fail(format!("closed its exchange before batch {index}"))),
        Err(_) => Err(fail(format!(
            "sent nothing for batch {index} within {} s",
            timeout.as_secs()
        ))),
    }
}

async fn send(
    links: &HashMap<String, SiteLink>,
    site: &str,
    frame: vertical_down::Frame,
) -> Result<(), RelayFailure> {
    let link = links.get(site).ok_or_else(|| RelayFailure {
        site: site.to_string(),
        reason: "is not part of the exchange".into(),
    })?;
    link.down
        .send(Ok(VerticalDown { frame: Some(frame) }))
        .await
        .map_err(|_| RelayFailure {
            site: site.to_string(),
            reason: "closed its exchange".into(),
        })
}

/// Checks one batch of values from `site`: its index, row count, length and
/// that every value is finite. `expect_values` false: it must be empty.
fn check_batch(
    batch: &v1::VerticalBatch,
    index: usize,
    rows: usize,
    width: usize,
    expect_values: bool,
) -> Result<Vec<f32>, String> {
    if batch.index as usize != index {
        return Err(format!(
            "batch {} arrived where batch {index} was due",
            batch.index
        ));
    }
    if batch.rows as usize != rows {
        return Err(format!(
            "batch {index} has {} rows, the schedule has {rows}",
            batch.rows
        ));
    }
    let values = cohort_models::parameters_from_bytes(&batch.values)
        .map_err(|e| format!("batch {index}: {e}"))?;
    let expected = if expect_values { rows * width } else { 0 };
    if values.len() != expected {
        return Err(format!(
            "batch {index} carries {} values, {rows} rows × {width} = {expected} expected",
            values.len()
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "batch {index}: the value of row {} is not finite",
            i / width.max(1)
        ));
    }
    Ok(values)
}

async fn relay_batches(
    plan: &RelayPlan,
    links: &mut HashMap<String, SiteLink>,
) -> Result<RelayStats, RelayFailure> {
    let width = plan.cut_width;
    let mut stats = RelayStats::default();
    for (index, batch) in plan.schedule.iter().enumerate() {
        let mut sum = vec![0.0f32; batch.rows * width];
        for site in &plan.feature_sites {
            let frame = receive(links, site, plan.frame_timeout, index).await?;
            let fail = |reason: String| RelayFailure {
                site: site.clone(),
                reason,
            };
            let vertical_up::Frame::Activations(up) = frame else {
                return Err(fail(format!(
                    "sent something other than activations for batch {index}"
                )));
            };
            let values = check_batch(&up, index, batch.rows, width, true).map_err(fail)?;
            stats.activation_bytes += up.values.len() as u64;
            for (acc, v) in sum.iter_mut().zip(values) {
                *acc += v;
            }
        }
        send(
            links,
            &plan.label_site,
            vertical_down::Frame::Activations(v1::VerticalBatch {
                index: index as u32,
                rows: batch.rows as u32,
                values: cohort_models::parameters_to_bytes(&sum),
                loss: 0.0,
            }),
        )
        .await?;
        let frame = receive(links, &plan.label_site, plan.frame_timeout, index).await?;
        let fail = |reason: String| RelayFailure {
            site: plan.label_site.clone(),
            reason,
        };
        let vertical_up::Frame::Gradients(down) = frame else {
            return Err(fail(format!(
                "sent something other than gradients for batch {index}"
            )));
        };
        check_batch(&down, index, batch.rows, width, batch.train).map_err(fail)?;
        if batch.train && !down.loss.is_finite() {
            return Err(fail(format!("batch {index}: the loss is not finite")));
        }
        stats.gradient_bytes += down.values.len() as u64;
        for site in &plan.feature_sites {
            send(links, site, vertical_down::Frame::Gradients(down.clone())).await?;
        }
        stats.batches += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: Vec<VerticalBatch>) -> RelayPlan {
        RelayPlan {
            label_site: "label".into(),
            feature_sites: vec!["a".into(), "b".into()],
            cut_width: 2,
            schedule,
            frame_timeout: Duration::from_secs(5),
        }
    }

    fn batch(index: u32, values: &[f32]) -> v1::VerticalBatch {
        v1::VerticalBatch {
            index,
            rows: (values.len() / 2) as u32,
            values: cohort_models::parameters_to_bytes(values),
            loss: 0.5,
        }
    }

    #[tokio::test]
    async fn the_relay_sums_activations_and_passes_gradients_back() {
        let relays = VerticalRelays::default();
        let sites = ["label".to_string(), "a".into(), "b".into()];
        let (id, links) = relays.open(&sites);
        let mut ups = HashMap::new();
        let mut ends = HashMap::new();
        for s in &sites {
            let Waiting { up, down } = relays.claim(&id, s).unwrap();
            ups.insert(s.clone(), up);
            ends.insert(s.clone(), down);
        }
        assert!(relays.claim(&id, "a").is_err(), "a seat is claimed once");
        let schedule = vec![
            VerticalBatch {
                rows: 1,
                train: true,
            },
            VerticalBatch {
                rows: 1,
                train: false,
            },
        ];
        let handle = tokio::spawn(relay(plan(schedule), links));
        let up = |s: &str, f| {
            let tx = ups[s].clone();
            async move { tx.send(f).await.unwrap() }
        };
        up("a", vertical_up::Frame::Activations(batch(0, &[1.0, 2.0]))).await;
        up("b", vertical_up::Frame::Activations(batch(0, &[0.5, 0.5]))).await;
        let got = ends
            .get_mut("label")
            .unwrap()
            .recv()
            .await
            .unwrap()
            .unwrap();
        let Some(vertical_down::Frame::Activations(sum)) = got.frame else {
            panic!("{got:?}")
        };
        assert_eq!(
            cohort_models::parameters_from_bytes(&sum.values).unwrap(),
            vec![1.5, 2.5]
        );
        up(
            "label",
            vertical_up::Frame::Gradients(batch(0, &[0.1, -0.1])),
        )
        .await;
        for s in ["a", "b"] {
            let got = ends.get_mut(s).unwrap().recv().await.unwrap().unwrap();
            assert!(matches!(
                got.frame,
                Some(vertical_down::Frame::Gradients(_))
            ));
        }
        up("a", vertical_up::Frame::Activations(batch(1, &[1.0, 2.0]))).await;
        // A NaN from site b stops the exchange, naming b, for everyone.
        up(
            "b",
            vertical_up::Frame::Activations(batch(1, &[f32::NAN, 0.0])),
        )
        .await;
        let failure = handle.await.unwrap().unwrap_err();
        assert_eq!(failure.site, "b");
        assert!(failure.reason.contains("not finite"), "{failure}");
        let got = ends.get_mut("label").unwrap().recv().await.unwrap();
        assert!(got.unwrap_err().message().contains("not finite"));
    }

    #[test]
    fn batches_of_the_wrong_shape_are_named() {
        let ok = batch(3, &[0.0; 8]);
        assert!(check_batch(&ok, 3, 4, 2, true).is_ok());
        let err = check_batch(&ok, 2, 4, 2, true).unwrap_err();
        assert!(err.contains("where batch 2 was due"), "{err}");
        let err = check_batch(&ok, 3, 5, 2, true).unwrap_err();
        assert!(err.contains("the schedule has 5"), "{err}");
        let short = v1::VerticalBatch {
            values: cohort_models::parameters_to_bytes(&[0.0; 7]),
            ..ok.clone()
        };
        let err = check_batch(&short, 3, 4, 2, true).unwrap_err();
        assert!(err.contains("carries 7 values"), "{err}");
        let err = check_batch(&ok, 3, 4, 2, false).unwrap_err();
        assert!(err.contains("0 expected"), "{err}");
    }
}
