//! The blocking side of a bidirectional gRPC stream, for the split-learning
//! exchanges (`SplitExchange`, `VerticalExchange`): training runs on a
//! blocking thread and steps the stream one frame at a time.
//!
//! The call goes out with the first frame the side needs an answer to: the
//! opening frame and a hospital's first batch travel together, instead of
//! the batch waiting a round trip for the coordinator to accept the stream.

use std::future::Future;
use std::pin::Pin;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Opening<Down> = Pin<
    Box<dyn Future<Output = Result<tonic::Response<tonic::Streaming<Down>>, tonic::Status>> + Send>,
>;

/// The coordinator's side of the stream: not yet asked for, or open.
enum Downstream<Down> {
    Opening(Opening<Down>),
    Open(Box<tonic::Streaming<Down>>),
}

pub(crate) struct BlockingExchange<'a, Up, Down> {
    handle: &'a Handle,
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
        handle: &'a Handle,
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
            handle,
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
                .handle
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
        let handle = self.handle;
        let stream = self.stream()?;
        handle
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
            handle,
            up,
            down,
            what,
        } = self;
        drop(up);
        let Downstream::Open(mut down) = down else {
            return Err(format!("the {what} did not open"));
        };
        match handle.block_on(down.message()) {
            Ok(Some(_)) => Err("the coordinator sent more than the schedule".into()),
            Ok(None) => Ok(()),
            Err(s) => Err(format!("{what}: {}", s.message())),
        }
    }
}
