//! Loads `tests/fixtures/dp_accounting.json` (made by
//! `scripts/make_accountant_fixture.py` with Google's dp_accounting).

use cohort_privacy::dp::Segment;
use serde_json::Value;

pub struct Case {
    pub segments: Vec<Segment>,
    pub label: String,
    pub rdp_values: Vec<Option<f64>>,
    pub rdp_epsilon: f64,
    pub rdp_order: f64,
    pub rdp_delta_for_epsilon: f64,
    pub pld_epsilon: f64,
    pub pld_delta_for_epsilon: f64,
}

pub struct Fixture {
    pub version: String,
    pub delta: f64,
    pub epsilon_for_delta: f64,
    pub rdp_orders: Vec<f64>,
    pub cases: Vec<Case>,
}

pub fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dp_accounting.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let f = |v: &Value| v.as_f64().unwrap();
    let cases = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let segments: Vec<Segment> = c["segments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    Segment::new(
                        f(&s["sampling_rate"]),
                        f(&s["noise_multiplier"]),
                        s["steps"].as_u64().unwrap(),
                    )
                    .unwrap()
                })
                .collect();
            let label = segments
                .iter()
                .map(|s| {
                    format!(
                        "(q={}, sigma={}, T={})",
                        s.sampling_rate(),
                        s.noise_multiplier(),
                        s.steps()
                    )
                })
                .collect::<Vec<_>>()
                .join("+");
            Case {
                segments,
                label,
                rdp_values: c["rdp_values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(Value::as_f64)
                    .collect(),
                rdp_epsilon: f(&c["rdp_epsilon"]),
                rdp_order: f(&c["rdp_order"]),
                rdp_delta_for_epsilon: f(&c["rdp_delta_for_epsilon"]),
                pld_epsilon: f(&c["pld_epsilon"]),
                pld_delta_for_epsilon: f(&c["pld_delta_for_epsilon"]),
            }
        })
        .collect();
    Fixture {
        version: v["dp_accounting_version"].as_str().unwrap().to_string(),
        delta: f(&v["delta"]),
        epsilon_for_delta: f(&v["epsilon_for_delta"]),
        rdp_orders: v["rdp_orders"].as_array().unwrap().iter().map(f).collect(),
        cases,
    }
}

pub fn rel(got: f64, want: f64) -> f64 {
    ((got - want) / want).abs()
}
