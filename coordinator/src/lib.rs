//! The Cohort coordinator: accepts jobs from model developers and runs them
//! as rounds of federated learning across the hospitals' clients.
//!
//! - [`job`]: the job file (parsing, validation);
//! - [`strategy`]: aggregation policies (FedAvg, FedProx, FedAdam, FedYogi);
//! - [`registry`]: live client sessions and task queues;
//! - [`runner`]: the job/round state machine;
//! - [`store`]: SQLite + object store persistence;
//! - [`server`]: the gRPC services.

pub mod job;
pub mod registry;
pub mod runner;
pub mod server;
pub mod store;
pub mod strategy;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cohort_protocol::MAX_MESSAGE_BYTES;
use cohort_protocol::v1::developer_service_server::DeveloperServiceServer;
use cohort_protocol::v1::hospital_service_server::HospitalServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

pub use job::{JobError, JobSpec};
pub use store::{JobState, StoreError};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    /// `None`: `DATA_DIR/objects` on the local disk.
    pub object_store_url: Option<String>,
    /// How long a client's `PullTask` is held open when there is no work.
    pub poll_timeout: Duration,
}

impl CoordinatorConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            object_store_url: None,
            poll_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub struct Coordinator {
    services: Arc<server::Services>,
}

impl Coordinator {
    pub fn open(config: &CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let store = Arc::new(store::Store::open(
            &config.data_dir,
            config.object_store_url.as_deref(),
        )?);
        let registry = Arc::new(registry::Registry::new(config.poll_timeout));
        let runner = Arc::new(runner::Runner {
            store: store.clone(),
            registry: registry.clone(),
        });
        Ok(Self {
            services: Arc::new(server::Services {
                store,
                registry,
                runner,
            }),
        })
    }

    /// Resumes every unfinished job, then serves gRPC on `listener` until
    /// `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        for job in self.services.store.jobs()? {
            if !job.state.is_finished() {
                info!(
                    job = job.id,
                    rounds = job.rounds_completed,
                    "resuming unfinished job"
                );
                let runner = self.services.runner.clone();
                tokio::spawn(async move { runner.run_job(&job.id).await });
            }
        }
        let hospitals = HospitalServiceServer::from_arc(self.services.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let developers = DeveloperServiceServer::from_arc(self.services.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(hospitals)
            .add_service(developers)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}
