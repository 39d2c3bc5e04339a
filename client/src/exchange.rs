//! The blocking side of a bidirectional gRPC stream, for the split-learning
//! exchanges (`SplitExchange`, `VerticalExchange`): training runs on a
//! blocking thread and steps the stream one frame at a time.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub(crate) struct BlockingExchange<'a, Up, Down> {
    handle: &'a Handle,
    up: mpsc::Sender<Up>,
    down: tonic::Streaming<Down>,
    /// The exchange's name in errors (`"split exchange"`).
    what: &'static str,
}

impl<'a, Up: Send + 'static, Down> BlockingExchange<'a, Up, Down> {
    /// Sends `open` (the frame that names the session and exchange) and
    /// opens the stream with `call`; `depth` frames may wait unsent.
    pub(crate) fn open<F, Fut>(
        handle: &'a Handle,
        what: &'static str,
        depth: usize,
        open: Up,
        call: F,
    ) -> Result<Self, String>
    where
        F: FnOnce(ReceiverStream<Up>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Down>>, tonic::Status>>,
    {
        let (up, rx) = mpsc::channel(depth);
        up.blocking_send(open)
            .map_err(|_| format!("{what} closed before it opened"))?;
        let down = handle
            .block_on(call(ReceiverStream::new(rx)))
            .map_err(|s| format!("opening the {what} failed: {}", s.message()))?
            .into_inner();
        Ok(Self {
            handle,
            up,
            down,
            what,
        })
    }

    pub(crate) fn send(&self, frame: Up) -> Result<(), String> {
        self.up
            .blocking_send(frame)
            .map_err(|_| format!("the coordinator closed the {}", self.what))
    }

    /// The coordinator's next frame; its end of the stream is an error.
    pub(crate) fn receive(&mut self) -> Result<Down, String> {
        self.handle
            .block_on(self.down.message())
            .map_err(|s| format!("{}: {}", self.what, s.message()))?
            .ok_or_else(|| format!("the coordinator ended the {} early", self.what))
    }

    /// Ends this side and waits for the coordinator to end its own, so that
    /// the last frame is delivered before the stream goes (dropping the
    /// response early could reset the stream with the frame still queued).
    pub(crate) fn finish(self) -> Result<(), String> {
        let Self {
            handle,
            up,
            mut down,
            what,
        } = self;
        drop(up);
        match handle.block_on(down.message()) {
            Ok(Some(_)) => Err("the coordinator sent more than the schedule".into()),
            Ok(None) => Ok(()),
            Err(s) => Err(format!("{what}: {}", s.message())),
        }
    }
}
