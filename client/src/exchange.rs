//! The blocking side of a bidirectional gRPC stream, for the split-learning
//! exchanges (`SplitExchange`, `VerticalExchange`): training runs on a
//! thread of its own and steps the stream one frame at a time.
//!
//! That thread is an [`ExchangeThread`]: it holds its own connection to the
//! coordinator, driven by a single-threaded runtime that only it runs. A
//! batch's round trip is a chain of small frames, one per batch, each
//! waiting for the last; on the session's shared runtime every frame woke
//! another thread twice (to write it, and to hand back the answer), which
//! cost more than the batch's arithmetic. Here the training thread writes
//! its frame to the socket and reads the answer itself.
//!
//! The call goes out with the first frame the side needs an answer to: the
//! opening frame and a hospital's first batch travel together, instead of
//! the batch waiting a round trip for the coordinator to accept the stream.

use std::future::Future;
use std::pin::Pin;

use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Work for the exchange thread: it gets the thread's runtime (to block on)
/// and a client on the thread's own connection.
type Job = Box<dyn FnOnce(&Runtime, HospitalServiceClient<Channel>) + Send>;

/// A thread with its own connection to the coordinator, for the exchanges
/// of one session. Between jobs it keeps the connection served (HTTP/2
/// pings), so the coordinator's keepalive does not close it. It ends when
/// this handle is dropped and its current job, if any, is done.
pub(crate) struct ExchangeThread {
    jobs: mpsc::UnboundedSender<Job>,
}

impl ExchangeThread {
    /// Starts the thread; the connection opens with the first exchange.
    pub(crate) fn start(endpoint: &Endpoint, client: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the exchange thread's runtime: {e}"))?;
        // The channel's background tasks belong to the runtime it is made in.
        let grpc = {
            let _entered = runtime.enter();
            crate::hospital_client(endpoint.connect_lazy())
        };
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name(format!("{client}-exchange"))
            .spawn(move || {
                while let Some(job) = runtime.block_on(queue.recv()) {
                    job(&runtime, grpc.clone());
                }
            })
            .map_err(|e| format!("cannot start the exchange thread: {e}"))?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the thread and waits for its result. A job that
    /// panics is an error here and leaves the thread serving the next one.
    pub(crate) async fn run<T, F>(&self, job: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Runtime, HospitalServiceClient<Channel>) -> T + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |runtime, grpc| {
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(runtime, grpc)))
                    .map_err(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("no message");
                        format!("it panicked: {message}")
                    });
            let _ = done.send(outcome);
        });
        self.jobs
            .send(job)
            .map_err(|_| "the exchange thread has stopped".to_string())?;
        result
            .await
            .map_err(|_| "the exchange thread stopped during the exchange".to_string())?
    }
}

type Opening<Down> = Pin<
    Box<dyn Future<Output = Result<tonic::Response<tonic::Streaming<Down>>, tonic::Status>> + Send>,
>;

/// The coordinator's side of the stream: not yet asked for, or open.
enum Downstream<Down> {
    Opening(Opening<Down>),
    Open(Box<tonic::Streaming<Down>>),
}

pub(crate) struct BlockingExchange<'a, Up, Down> {
    runtime: &'a Runtime,
    up: mpsc::Sender<Up>,
    down: Downstream<Down>,
    /// The exchange's name in errors (`"split exchange"`).
    what: &'static str,
}

impl<'a, Up: Send + 'static, Down> BlockingExchange<'a, Up, Down> {
    /// Queues `open` (the frame that names the session and exchange); the
    /// call `call` makes is sent with the first frame that needs an answer.
    /// `depth` frames may wait unsent.
    pub(crate) fn open<F, Fut>(
        runtime: &'a Runtime,
        what: &'static str,
        depth: usize,
        open: Up,
        call: F,
    ) -> Result<Self, String>
    where
        F: FnOnce(ReceiverStream<Up>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Down>>, tonic::Status>>
            + Send
            + 'static,
    {
        let (up, rx) = mpsc::channel(depth.max(2));
        up.try_send(open)
            .map_err(|_| format!("{what} closed before it opened"))?;
        Ok(Self {
            runtime,
            up,
            down: Downstream::Opening(Box::pin(call(ReceiverStream::new(rx)))),
            what,
        })
    }

    /// The coordinator's stream, opening it (sending what is queued) if
    /// that has not happened yet.
    fn stream(&mut self) -> Result<&mut tonic::Streaming<Down>, String> {
        if let Downstream::Opening(opening) = &mut self.down {
            let response = self
                .runtime
                .block_on(opening)
                .map_err(|s| format!("opening the {} failed: {}", self.what, s.message()))?;
            self.down = Downstream::Open(Box::new(response.into_inner()));
        }
        match &mut self.down {
            Downstream::Open(stream) => Ok(stream.as_mut()),
            Downstream::Opening(_) => Err(format!("the {} did not open", self.what)),
        }
    }

    pub(crate) fn send(&mut self, frame: Up) -> Result<(), String> {
        let closed = |what| format!("the coordinator closed the {what}");
        match self.up.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed(self.what)),
            // The queue is full: make sure the call is out (it drains the
            // queue), then wait for room.
            Err(mpsc::error::TrySendError::Full(frame)) => {
                self.stream()?;
                self.up.blocking_send(frame).map_err(|_| closed(self.what))
            }
        }
    }

    /// The coordinator's next frame; its end of the stream is an error.
    pub(crate) fn receive(&mut self) -> Result<Down, String> {
        let what = self.what;
        let runtime = self.runtime;
        let stream = self.stream()?;
        runtime
            .block_on(stream.message())
            .map_err(|s| format!("{what}: {}", s.message()))?
            .ok_or_else(|| format!("the coordinator ended the {what} early"))
    }

    /// Ends this side and waits for the coordinator to end its own, so that
    /// the last frame is delivered before the stream goes (dropping the
    /// response early could reset the stream with the frame still queued).
    pub(crate) fn finish(mut self) -> Result<(), String> {
        self.stream()?;
        let Self {
            runtime,
            up,
            down,
            what,
        } = self;
        drop(up);
        let Downstream::Open(mut down) = down else {
            return Err(format!("the {what} did not open"));
        };
        match runtime.block_on(down.message()) {
            Ok(Some(_)) => Err("the coordinator sent more than the schedule".into()),
            Ok(None) => Ok(()),
            Err(s) => Err(format!("{what}: {}", s.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_is_an_error_and_the_thread_serves_the_next() {
        // The connection is lazy: these jobs never use it.
        let endpoint = Endpoint::from_static("http://127.0.0.1:9");
        let thread = ExchangeThread::start(&endpoint, "test").unwrap();
        let caller = std::thread::current().id();
        let ran_on = thread
            .run(|_, _| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
        let error = thread
            .run(|_, _| -> u32 { panic!("a bug in training") })
            .await
            .unwrap_err();
        assert!(error.contains("a bug in training"), "{error}");
        assert_eq!(
            thread.run(|runtime, _| runtime.block_on(async { 7 })).await,
            Ok(7)
        );
        assert_eq!(
            thread.run(|_, _| std::thread::current().id()).await,
            Ok(ran_on)
        );
    }
}
