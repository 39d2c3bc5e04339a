//! Bytes on the wire per round: the encoded size of every task frame the
//! coordinator streamed to a hospital (`PullTask`: header and body chunks)
//! and of every answer frame it read back (`SubmitResult`), tallied by job
//! and round and recorded with the round. Split-learning exchanges
//! (`SplitExchange`, `VerticalExchange`) are not part of it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A round's task and answer bytes, as prost encodes the frames (gRPC adds
/// a 5-byte prefix per frame and HTTP/2 and TLS their own framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundTraffic {
    /// Task frames streamed to hospitals.
    pub task_bytes_sent: u64,
    /// Answer frames read from hospitals.
    pub answer_bytes_received: u64,
}

/// Running tallies of the rounds in progress.
#[derive(Debug, Default)]
pub struct TrafficTally {
    rounds: Mutex<HashMap<(String, u32), RoundTraffic>>,
}

impl TrafficTally {
    fn update(&self, job_id: &str, round: u32, add: impl FnOnce(&mut RoundTraffic)) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        add(rounds.entry((job_id.to_string(), round)).or_default());
    }

    pub fn sent(&self, job_id: &str, round: u32, bytes: u64) {
        self.update(job_id, round, |t| t.task_bytes_sent += bytes);
    }

    pub fn received(&self, job_id: &str, round: u32, bytes: u64) {
        self.update(job_id, round, |t| t.answer_bytes_received += bytes);
    }

    /// Drops what is left of a job that ended (rounds it never recorded).
    pub fn forget_job(&self, job_id: &str) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        rounds.retain(|(job, _), _| job != job_id);
    }

    /// The round's tally so far, forgetting it (the round is being recorded).
    pub fn take(&self, job_id: &str, round: u32) -> RoundTraffic {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        rounds
            .remove(&(job_id.to_string(), round))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_are_per_job_and_round_and_taken_once() {
        let tally = TrafficTally::default();
        tally.sent("a", 1, 100);
        tally.sent("a", 1, 20);
        tally.received("a", 1, 7);
        tally.sent("a", 2, 5);
        tally.received("b", 1, 9);
        assert_eq!(
            tally.take("a", 1),
            RoundTraffic {
                task_bytes_sent: 120,
                answer_bytes_received: 7
            }
        );
        assert_eq!(tally.take("a", 1), RoundTraffic::default());
        assert_eq!(tally.take("a", 2).task_bytes_sent, 5);
        assert_eq!(tally.take("b", 1).answer_bytes_received, 9);
        tally.sent("c", 3, 1);
        tally.sent("d", 3, 2);
        tally.forget_job("c");
        assert_eq!(tally.take("c", 3), RoundTraffic::default());
        assert_eq!(tally.take("d", 3).task_bytes_sent, 2);
    }
}
