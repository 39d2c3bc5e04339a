//! A read-only handle on a coordinator's state for the web dashboard
//! (issue 20): the same job statuses the developer API sends, the ledger,
//! and the stored model signatures. It holds no lock of its own and stays
//! usable after the gRPC server stops, as long as the process lives.

use std::sync::Arc;

use cohort_protocol::v1::JobStatus;

use crate::server::Services;
use crate::store::{JobRow, LedgerContents, StoreError};

#[derive(Clone)]
pub struct CoordinatorView {
    services: Arc<Services>,
}

impl CoordinatorView {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        self.services.store.jobs()
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        self.services.store.job(id)
    }

    /// What `GetJob` answers for `job`.
    pub fn status(&self, job: &JobRow) -> Result<JobStatus, StoreError> {
        self.services.job_status(job)
    }

    /// [`CoordinatorView::status`] without the rounds, whose update
    /// receipts make a long job's status hundreds of megabytes: what a
    /// list of jobs shows.
    pub fn status_without_rounds(&self, job: &JobRow) -> Result<JobStatus, StoreError> {
        self.services.job_status_without_rounds(job)
    }

    /// The ledger's entries and its latest signed checkpoint.
    pub fn ledger(&self) -> Result<LedgerContents, StoreError> {
        self.services.store.ledger()
    }

    /// [`crate::store::Store::ledger_stamp`].
    pub fn ledger_stamp(&self) -> Result<(u64, Option<String>), StoreError> {
        self.services.store.ledger_stamp()
    }

    /// A round's model as `GetModel` streams it: card JSON, safetensors
    /// bytes, and the signature bundle (`None` for models stored before
    /// signing existed).
    pub async fn model(
        &self,
        job_id: &str,
        round: u32,
    ) -> Result<(bytes::Bytes, bytes::Bytes, Option<bytes::Bytes>), StoreError> {
        let store = &self.services.store;
        let card = store
            .get_object(&crate::runner::card_key(job_id, round))
            .await?;
        let body = store
            .get_object(&crate::runner::model_key(job_id, round))
            .await?;
        let signature = store
            .get_object(&crate::runner::signature_key(job_id, round))
            .await
            .ok();
        Ok((card, body, signature))
    }
}
