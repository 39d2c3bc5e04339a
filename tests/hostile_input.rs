//! Hostile input to every parser (issue 21): each fuzz target of
//! `cohort::fuzzing` runs on its seed corpus (`fuzz/corpus/TARGET/`) and on
//! a few thousand seeded mutations of it. No input may panic, and none may
//! make a parser allocate more than [`ALLOCATION_LIMIT`] (a length read from
//! the input must be checked before it sizes a buffer). Property tests
//! check the round trips the parsers promise.
//!
//! Each target gets `COHORT_FUZZ_ITERATIONS` inputs (default 10,000) or
//! `COHORT_FUZZ_SECONDS` (default 4), whichever ends first: job files that
//! reach the privacy accountant cost milliseconds each. `cohort fuzz
//! TARGET` runs the same mutator for longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cohort::fuzzing::{self, Mutator, TARGETS};
use proptest::prelude::*;

/// The most one parser call may hold allocated at once.
const ALLOCATION_LIMIT: usize = 256 << 20;

/// Counts live heap bytes while a target runs, so that an input which
/// makes a parser reserve a buffer its length field names is caught even
/// when the allocation would succeed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static WATCHING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Ordering::Relaxed) && layout.size() > ALLOCATION_LIMIT {
            // Refused: std reports the size and aborts, naming the bug.
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every target on its corpus and its mutations: the inputs that panicked
/// or allocated too much, with the reason.
#[test]
fn no_parser_panics_or_over_allocates_on_mutated_input() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let iterations: usize = from_env("COHORT_FUZZ_ITERATIONS", 10_000);
    let budget = std::time::Duration::from_secs_f64(from_env("COHORT_FUZZ_SECONDS", 4.0));
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let seeds = fuzzing::seeds(&corpus, name).expect("reading the seed corpus");
        assert!(!seeds.is_empty(), "target {name} has no seeds");
        let mut mutator = Mutator::new(seeds, 0xC0_4017 ^ name.len() as u64);
        let started = std::time::Instant::now();
        let mut tried = 0;
        for i in 0..iterations {
            if i >= mutator.seeds().len() && started.elapsed() > budget {
                break;
            }
            tried += 1;
            let input = if i < mutator.seeds().len() {
                mutator.seeds()[i].clone()
            } else {
                mutator.next_input()
            };
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            WATCHING.store(true, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
            WATCHING.store(false, Ordering::Relaxed);
            let held = PEAK.load(Ordering::Relaxed).saturating_sub(before);
            let problem = match outcome {
                Err(panic) => Some(format!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
                Ok(()) if held > ALLOCATION_LIMIT => Some(format!("held {held} bytes at once")),
                Ok(()) => None,
            };
            if let Some(problem) = problem {
                let shown: Vec<u8> = input.iter().take(96).copied().collect();
                failures.push(format!(
                    "{name}: input {i} ({} bytes, starts {:?}) {problem}",
                    input.len(),
                    String::from_utf8_lossy(&shown)
                ));
            }
        }
        eprintln!(
            "{name}: {tried} inputs in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_is_named_once_and_found() {
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), TARGETS.len());
    for name in names {
        assert!(fuzzing::target(name).is_some());
    }
    assert!(fuzzing::target("no_such_target").is_none());
}

#[test]
fn the_job_file_seeds_are_valid_jobs() {
    // Mutations of valid files reach the checks behind the TOML parser.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for seed in fuzzing::seeds(&corpus, "job_file").expect("seeds") {
        let text = String::from_utf8(seed).expect("utf-8 seed");
        cohort_coordinator::JobSpec::from_toml(&text)
            .unwrap_or_else(|e| panic!("seed does not parse: {e}\n{text}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parameters_round_trip(values in prop::collection::vec(-1e30f32..1e30, 0..300)) {
        let bytes = cohort_models::parameters_to_bytes(&values);
        prop_assert_eq!(cohort_models::parameters_from_bytes(&bytes).unwrap(), values);
    }

    #[test]
    fn a_length_not_a_multiple_of_four_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let parsed = cohort_models::parameters_from_bytes(&bytes);
        prop_assert_eq!(parsed.is_ok(), bytes.len() % 4 == 0);
    }

    #[test]
    fn job_numbers_out_of_range_are_errors_not_panics(
        rounds in any::<i64>(),
        epochs in any::<i64>(),
        batch in any::<i64>(),
        fraction in any::<f64>(),
        rate in any::<f64>(),
    ) {
        let text = cohort::DEMO_JOB
            .replace("rounds = 20", &format!("rounds = {rounds}"))
            .replace("local_epochs = 2", &format!("local_epochs = {epochs}"))
            .replace("batch_size = 32", &format!("batch_size = {batch}"))
            .replace("validation_fraction = 0.2", &format!("validation_fraction = {fraction:?}"))
            .replace("learning_rate = 0.05", &format!("learning_rate = {rate:?}"));
        if let Ok(spec) = cohort_coordinator::JobSpec::from_toml(&text) {
            prop_assert!(spec.training.rounds >= 1);
            prop_assert!(rate.is_finite() && rate > 0.0);
        }
    }
}
