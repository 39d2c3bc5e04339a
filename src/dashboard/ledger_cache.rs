//! The parsed ledger, kept between requests: the jobs list and job pages
//! poll every few seconds, and re-parsing every entry each time grows with
//! the ledger. It is re-read only when the ledger's entry count or signed
//! checkpoint changed (both change with every append). The ledger
//! explorer's verification does not use it: it reads the stored ledger
//! afresh, so that a ledger altered in place shows there at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use cohort_coordinator::store::LedgerContents;
use cohort_coordinator::view::CoordinatorView;

/// One read of the ledger and what the dashboard derives from it.
pub struct ParsedLedger {
    pub contents: LedgerContents,
    /// The time of each job's latest entry.
    pub last_entry_at: BTreeMap<String, String>,
}

type Stamp = (u64, Option<String>);

#[derive(Default)]
pub struct LedgerCache {
    current: Mutex<Option<(Stamp, Arc<ParsedLedger>)>>,
}

impl LedgerCache {
    /// The ledger as it is now, parsed once per change.
    pub fn get(&self, view: &CoordinatorView) -> Result<Arc<ParsedLedger>> {
        let stamp = view.ledger_stamp()?;
        if let Some((seen, parsed)) = &*self.lock()
            && *seen == stamp
        {
            return Ok(parsed.clone());
        }
        let contents = view.ledger()?;
        let mut last_entry_at = BTreeMap::new();
        for (_, entry) in crate::audit::entries_in(&contents, None)? {
            if let Some(job) = entry.record.job_id() {
                last_entry_at.insert(job.to_string(), entry.at.clone());
            }
        }
        // Stamped as of before the read: an append in between only causes
        // one more read next time.
        let parsed = Arc::new(ParsedLedger {
            contents,
            last_entry_at,
        });
        *self.lock() = Some((stamp, parsed.clone()));
        Ok(parsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Stamp, Arc<ParsedLedger>)>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}
