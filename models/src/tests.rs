//! Cross-module tests: training, evaluation, layout and artifacts.

use std::time::Instant;

use cohort_datasets::{DataSpec, Examples, Preprocessing};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::{self, LayerTensors};
use crate::*;

/// `n` rows of `d` features in [-1, 1], labelled by a fixed random hyperplane (linearly
/// separable by construction).
fn separable(n: usize, d: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut features = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let score: f32 = row.iter().zip(&w).map(|(x, w)| x * w).sum();
        labels.push(if score + 0.1 > 0.0 { 1.0 } else { 0.0 });
        features.extend(row);
    }
    Examples {
        features,
        labels,
        n_features: d,
    }
}

fn sgd(learning_rate: f64, momentum: f64) -> OptimizerSpec {
    OptimizerSpec::Sgd {
        learning_rate,
        momentum,
    }
}

fn adam(learning_rate: f64) -> OptimizerSpec {
    OptimizerSpec::Adam {
        learning_rate,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
    }
}

fn config(epochs: usize, batch_size: usize, optimizer: OptimizerSpec) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size,
        optimizer,
        seed: 7,
        proximal_mu: None,
        dp: None,
    }
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[test]
fn flat_to_module_to_flat_is_identity() {
    let spec = ModelSpec::Mlp {
        hidden: vec![5, 3],
        cut: None,
    };
    let params = init_parameters(&spec, 4, 1);
    let device = net::cpu();
    let tensors = LayerTensors::from_flat(&spec, 4, &params, &device).unwrap();
    assert_eq!(tensors.weights[0].dims(), [4, 5]);
    assert_eq!(tensors.biases[1].dims(), [3]);
    for track in [false, true] {
        let module = tensors.to_net(track);
        let back = module.to_tensors().unwrap().to_flat().unwrap();
        assert_eq!(back, params, "track_gradients = {track}");
    }
}

#[test]
fn logistic_forward_matches_documented_layout() {
    // Flat order: w_0, w_1, w_2, b.
    let params = [0.5f32, -1.0, 2.0, 0.25];
    let data = Examples {
        features: vec![1.0, 2.0, 3.0, 0.0, 0.0, -1.0],
        labels: vec![1.0, 0.0],
        n_features: 3,
    };
    let p = predict_proba(&ModelSpec::Logistic, &params, &data).unwrap();
    let logit0 = 0.5 * 1.0 - 1.0 * 2.0 + 2.0 * 3.0 + 0.25;
    let logit1 = -2.0 + 0.25; // w_2 * x_2 + b = 2 * (-1) + 0.25
    assert!((f64::from(p[0]) - sigmoid(logit0)).abs() < 1e-6, "{p:?}");
    assert!((f64::from(p[1]) - sigmoid(logit1)).abs() < 1e-6, "{p:?}");
}

#[test]
fn mlp_forward_matches_documented_layout() {
    // 2 inputs -> 2 hidden (ReLU) -> 1 output. Weight from input r to hidden c at r * 2 + c.
    let spec = ModelSpec::Mlp {
        hidden: vec![2],
        cut: None,
    };
    #[rustfmt::skip]
    let params = [
        1.0f32, -1.0,   // input 0 -> hidden 0, hidden 1
        0.5, 2.0,       // input 1 -> hidden 0, hidden 1
        0.1, -0.2,      // hidden biases
        3.0, -4.0,      // hidden 0 -> out, hidden 1 -> out
        0.3,            // output bias
    ];
    assert_eq!(params.len(), spec.num_parameters(2));
    let data = Examples {
        features: vec![2.0, 1.0],
        labels: vec![1.0],
        n_features: 2,
    };
    let h0 = f64::max(0.0, 2.0 * 1.0 + 1.0 * 0.5 + 0.1); // 2.6
    let h1 = f64::max(0.0, -2.0 + 1.0 * 2.0 - 0.2); // 2 * (-1) + 1 * 2 - 0.2 -> relu(-0.2) = 0
    let logit = 3.0 * h0 - 4.0 * h1 + 0.3;
    let p = predict_proba(&spec, &params, &data).unwrap();
    assert!((f64::from(p[0]) - sigmoid(logit)).abs() < 1e-6);
}

#[test]
fn one_sgd_step_matches_hand_computed_gradient() {
    // Zero weights: logit 0, p = 0.5, dL/dz = p - y = -0.5, so dL/dw = -0.5 x, dL/db = -0.5.
    let data = Examples {
        features: vec![1.0, 2.0],
        labels: vec![1.0],
        n_features: 2,
    };
    let out = train(
        &ModelSpec::Logistic,
        &[0.0; 3],
        &data,
        &config(1, 1, sgd(0.5, 0.0)),
    )
    .unwrap();
    let expected = [0.25f32, 0.5, 0.25];
    for (a, e) in out.parameters.iter().zip(expected) {
        assert!((a - e).abs() < 1e-6, "{:?}", out.parameters);
    }
    assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-6);
    assert_eq!(out.examples, 1);

    // Adam's first step moves every coordinate by about learning_rate against the gradient sign.
    let out = train(
        &ModelSpec::Logistic,
        &[0.0; 3],
        &data,
        &config(1, 1, adam(0.1)),
    )
    .unwrap();
    for a in &out.parameters {
        assert!((a - 0.1).abs() < 1e-5, "{:?}", out.parameters);
    }

    // Heavy-ball momentum over two identical rows (batch size 1, shuffling is irrelevant):
    // v1 = g1, w1 = -lr g1; v2 = m v1 + g2, w2 = w1 - lr v2, with g = (sigmoid(z) - 1) [x, 1].
    let two = Examples {
        features: vec![1.0, 2.0, 1.0, 2.0],
        labels: vec![1.0, 1.0],
        n_features: 2,
    };
    let (lr, m) = (0.1, 0.9);
    let out = train(
        &ModelSpec::Logistic,
        &[0.0; 3],
        &two,
        &config(1, 1, sgd(lr, m)),
    )
    .unwrap();
    let xb = [1.0, 2.0, 1.0];
    let g1: Vec<f64> = xb.iter().map(|x| (0.5 - 1.0) * x).collect();
    let w1: Vec<f64> = g1.iter().map(|g| -lr * g).collect();
    let z1: f64 = w1.iter().zip(xb).map(|(w, x)| w * x).sum();
    let g2: Vec<f64> = xb.iter().map(|x| (sigmoid(z1) - 1.0) * x).collect();
    for i in 0..3 {
        let expected = w1[i] - lr * (m * g1[i] + g2[i]);
        let got = f64::from(out.parameters[i]);
        assert!((got - expected).abs() < 1e-6, "{i}: {got} vs {expected}");
    }
}

#[test]
fn logistic_regression_learns_a_separable_set() {
    let data = separable(400, 5, 3);
    let spec = ModelSpec::Logistic;
    let start = init_parameters(&spec, 5, 11);
    let before = evaluate(&spec, &start, &data).unwrap();
    let out = train(&spec, &start, &data, &config(30, 16, sgd(0.5, 0.9))).unwrap();
    let after = evaluate(&spec, &out.parameters, &data).unwrap();
    assert!(after.accuracy > 0.9, "accuracy {after:?}");
    assert!(after.auc > 0.95, "auc {after:?}");
    assert!(after.loss < before.loss);
    assert_eq!(after.examples, 400);
    assert_eq!(
        after.true_positives + after.false_positives + after.true_negatives + after.false_negatives,
        400
    );
    assert!(out.loss.is_finite() && out.loss < 0.5, "{}", out.loss);
}

#[test]
fn mlp_with_adam_learns_too() {
    let data = separable(300, 4, 5);
    let spec = ModelSpec::Mlp {
        hidden: vec![16, 8],
        cut: None,
    };
    let start = init_parameters(&spec, 4, 2);
    let out = train(&spec, &start, &data, &config(20, 32, adam(0.01))).unwrap();
    let m = evaluate(&spec, &out.parameters, &data).unwrap();
    assert!(m.accuracy > 0.9, "{m:?}");
}

#[test]
fn training_is_deterministic() {
    let data = separable(100, 3, 1);
    let spec = ModelSpec::Mlp {
        hidden: vec![4],
        cut: None,
    };
    let start = init_parameters(&spec, 3, 0);
    let cfg = config(3, 8, adam(0.05));
    let a = train(&spec, &start, &data, &cfg).unwrap();
    let b = train(&spec, &start, &data, &cfg).unwrap();
    assert_eq!(a, b);
    let c = train(&spec, &start, &data, &TrainConfig { seed: 8, ..cfg }).unwrap();
    assert_ne!(
        a.parameters, c.parameters,
        "a different seed must shuffle differently"
    );
}

#[test]
fn fedprox_with_large_mu_stays_near_start() {
    let data = separable(200, 5, 9);
    let spec = ModelSpec::Logistic;
    let start = init_parameters(&spec, 5, 4);
    let plain = train(&spec, &start, &data, &config(5, 10, sgd(0.1, 0.0))).unwrap();
    // lr * mu = 1: every step pulls the parameters all the way back before the data step.
    let prox_cfg = TrainConfig {
        proximal_mu: Some(10.0),
        dp: None,
        ..config(5, 10, sgd(0.1, 0.0))
    };
    let prox = train(&spec, &start, &data, &prox_cfg).unwrap();
    let d_plain = distance(&plain.parameters, &start);
    let d_prox = distance(&prox.parameters, &start);
    assert!(d_prox < 0.2 * d_plain, "prox {d_prox} vs plain {d_plain}");

    // Adam with a huge mu oscillates around the start within a few learning rates.
    let adam_cfg = TrainConfig {
        proximal_mu: Some(1e4),
        dp: None,
        ..config(5, 10, adam(0.01))
    };
    let prox = train(&spec, &start, &data, &adam_cfg).unwrap();
    for (p, s) in prox.parameters.iter().zip(&start) {
        assert!((p - s).abs() < 0.05, "{p} vs {s}");
    }
}

#[test]
fn divergence_is_an_error_not_garbage() {
    let data = separable(100, 3, 2);
    let spec = ModelSpec::Logistic;
    let start = init_parameters(&spec, 3, 0);
    // lr * mu = 1000 > 2: the proximal step overshoots and explodes geometrically.
    let cfg = TrainConfig {
        proximal_mu: Some(1000.0),
        dp: None,
        ..config(50, 10, sgd(1.0, 0.0))
    };
    match train(&spec, &start, &data, &cfg) {
        Err(ModelError::Diverged { .. }) => {}
        other => panic!("expected Diverged, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let spec = ModelSpec::Logistic;
    let data = separable(10, 3, 0);
    let cfg = config(1, 4, sgd(0.1, 0.0));
    let good = init_parameters(&spec, 3, 0);

    let empty = Examples {
        features: vec![],
        labels: vec![],
        n_features: 3,
    };
    assert!(matches!(
        train(&spec, &good, &empty, &cfg),
        Err(ModelError::EmptyData)
    ));
    let narrow = separable(10, 2, 0);
    assert!(matches!(
        train(&spec, &good, &narrow, &cfg),
        Err(ModelError::ParameterCount {
            expected: 3,
            actual: 4,
            n_features: 2
        })
    ));
    let mlp = ModelSpec::Mlp {
        hidden: vec![4],
        cut: None,
    };
    assert!(matches!(
        evaluate(&mlp, &init_parameters(&mlp, 3, 0), &narrow),
        Err(ModelError::ParameterCount { n_features: 2, .. })
    ));
    let mut nan = good.clone();
    nan[2] = f32::NAN;
    assert!(matches!(
        train(&spec, &nan, &data, &cfg),
        Err(ModelError::NonFiniteParameter { index: 2, .. })
    ));
    assert!(matches!(
        train(&spec, &good[..3], &data, &cfg),
        Err(ModelError::ParameterCount {
            expected: 4,
            actual: 3,
            n_features: 3
        })
    ));
    let mut ragged = data.clone();
    ragged.features.pop();
    assert!(matches!(
        train(&spec, &good, &ragged, &cfg),
        Err(ModelError::InvalidData(_))
    ));
    let mut soft = data.clone();
    soft.labels[3] = 0.5;
    let err = evaluate(&spec, &good, &soft).unwrap_err();
    assert!(err.to_string().contains("row 3"), "{err}");
    let mut inf = data.clone();
    inf.features[4] = f32::INFINITY;
    assert!(matches!(
        predict_proba(&spec, &good, &inf),
        Err(ModelError::InvalidData(_))
    ));
    let bad_cfg = TrainConfig {
        epochs: 0,
        ..cfg.clone()
    };
    assert!(matches!(
        train(&spec, &good, &data, &bad_cfg),
        Err(ModelError::InvalidConfig { .. })
    ));
    let bad_spec = ModelSpec::Mlp {
        hidden: vec![],
        cut: None,
    };
    assert!(train(&bad_spec, &good, &data, &cfg).is_err());
}

#[test]
fn evaluate_counts_and_loss() {
    // Logit = x: rows 2, -1, 0.5, -3 with labels 1, 1, 0, 0.
    let params = [1.0f32, 0.0];
    let data = Examples {
        features: vec![2.0, -1.0, 0.5, -3.0],
        labels: vec![1.0, 1.0, 0.0, 0.0],
        n_features: 1,
    };
    let m = evaluate(&ModelSpec::Logistic, &params, &data).unwrap();
    assert_eq!(
        (
            m.true_positives,
            m.false_negatives,
            m.false_positives,
            m.true_negatives
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(m.accuracy, 0.5);
    let expected_loss = [(2.0, 1.0), (-1.0, 1.0), (0.5, 0.0), (-3.0, 0.0)]
        .iter()
        .map(|&(z, y): &(f64, f64)| -(y * sigmoid(z).ln() + (1.0 - y) * (1.0 - sigmoid(z)).ln()))
        .sum::<f64>()
        / 4.0;
    assert!((m.loss - expected_loss).abs() < 1e-6);
    // Scores 2, -1 (positives) vs 0.5, -3 (negatives): 3 of 4 pairs ordered correctly.
    assert_eq!(m.auc, 0.75);
}

/// About 10^6 parameters (30 features, one hidden layer of 32 000) for one epoch on 50 rows.
/// Guards the O(n) conversion and whole-tensor optimizer path; prints the time taken.
#[test]
fn million_parameter_model_trains_one_epoch_quickly() {
    let spec = ModelSpec::Mlp {
        hidden: vec![32_000],
        cut: None,
    };
    let n_features = 30;
    assert!(spec.num_parameters(n_features) > 1_000_000);
    let data = separable(50, n_features, 6);

    let t0 = Instant::now();
    let start = init_parameters(&spec, n_features, 1);
    let t_init = t0.elapsed();
    for optimizer in [adam(1e-3), sgd(0.01, 0.9)] {
        let t1 = Instant::now();
        let out = train(&spec, &start, &data, &config(1, 16, optimizer.clone())).unwrap();
        let t_train = t1.elapsed();
        eprintln!(
            "1M-parameter model ({} params): init {t_init:?}, one epoch ({optimizer:?}) {t_train:?}",
            start.len()
        );
        assert_eq!(out.parameters.len(), start.len());
        assert!(out.loss.is_finite());
        assert_ne!(out.parameters, start);
        assert!(
            t_train.as_secs() < 60,
            "one epoch took {t_train:?}; conversions must stay O(n)"
        );
    }
}

pub(crate) fn card_for(spec: ModelSpec, n_features: usize, params: &[f32]) -> ModelCard {
    let data: DataSpec = serde_json::from_value(serde_json::json!({
        "label": "outcome",
        "positive": "1",
    }))
    .expect("DataSpec from JSON");
    let names: Vec<String> = (0..n_features).map(|i| format!("f{i}")).collect();
    let preprocessing: Preprocessing = serde_json::from_value(serde_json::json!({
        "schema": {
            "label": "outcome",
            "positive": "1",
            "negative": null,
            "numeric": names,
            "categorical": [],
        },
        "numeric": [],
        "categorical": [],
    }))
    .expect("Preprocessing from JSON");
    let mut card = ModelCard {
        format: String::new(),
        model: spec,
        n_features,
        feature_names: names,
        parameter_order: vec![],
        data,
        preprocessing,
        job_id: "job-123".into(),
        job_name: "sepsis".into(),
        round: 4,
        metrics: None,
        parameters_sha256: String::new(),
        privacy: None,
        kept_top: None,
    };
    card.bind_parameters(params).unwrap();
    card
}

#[test]
fn save_load_round_trip_and_python_view() {
    let spec = ModelSpec::Mlp {
        hidden: vec![3, 2],
        cut: None,
    };
    let params = init_parameters(&spec, 4, 5);
    let card = card_for(spec.clone(), 4, &params);
    assert_eq!(card.format, MODEL_FORMAT);
    assert_eq!(card.parameters_sha256, parameters_sha256(&params));

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("artifacts").join("round-4");
    save_model(&target, &card, &params).unwrap();
    let (loaded_card, loaded) = load_model(&target).unwrap();
    assert_eq!(loaded_card, card);
    assert_eq!(loaded, params);

    // What Python's `safetensors.safe_open` would see.
    let bytes = std::fs::read(target.join(SAFETENSORS_FILE)).unwrap();
    assert_eq!(bytes, safetensors_bytes(&card, &params).unwrap());
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "layers.0.bias",
            "layers.0.weight",
            "layers.1.bias",
            "layers.1.weight",
            "layers.2.bias",
            "layers.2.weight"
        ]
    );
    let expect = [
        ("layers.0.weight", vec![4, 3]),
        ("layers.0.bias", vec![3]),
        ("layers.1.weight", vec![3, 2]),
        ("layers.1.bias", vec![2]),
        ("layers.2.weight", vec![2, 1]),
        ("layers.2.bias", vec![1]),
    ];
    for (name, shape) in expect {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
    }
    // Weight [r][c] of layer 0 sits at flat index r * 3 + c.
    let w0 = st.tensor("layers.0.weight").unwrap();
    let w0: Vec<f32> = parameters_from_bytes(w0.data()).unwrap();
    assert_eq!(w0[2 * 3 + 1], params[2 * 3 + 1]);
    assert_eq!(w0, params[..12]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["job_id"], "job-123");
    assert_eq!(meta["round"], "4");
    assert_eq!(meta["parameters_sha256"], card.parameters_sha256);

    // model.json is pretty JSON naming the flat order.
    let json = std::fs::read_to_string(target.join(CARD_FILE)).unwrap();
    assert!(json.contains("\"layers.1.weight\""), "{json}");
    assert!(json.contains('\n'));
    // No temporaries left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

#[test]
fn load_rejects_tampering() {
    let spec = ModelSpec::Logistic;
    let params = init_parameters(&spec, 3, 5);
    let card = card_for(spec, 3, &params);
    let dir = tempfile::tempdir().unwrap();
    save_model(dir.path(), &card, &params).unwrap();
    let path = dir.path().join(SAFETENSORS_FILE);
    let original = std::fs::read(&path).unwrap();

    // Flip one bit of one weight.
    let mut bytes = original.clone();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    match load_model(dir.path()) {
        Err(ModelError::ChecksumMismatch { .. }) => {}
        other => panic!("expected checksum mismatch, got {other:?}"),
    }

    // Truncated file.
    std::fs::write(&path, &original[..original.len() - 4]).unwrap();
    assert!(matches!(
        load_model(dir.path()),
        Err(ModelError::Safetensors(_))
    ));

    // Card edited to claim other parameters.
    std::fs::write(&path, &original).unwrap();
    let mut forged = card.clone();
    forged.parameters_sha256 = parameters_sha256(&[0.0; 4]);
    std::fs::write(
        dir.path().join(CARD_FILE),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    assert!(load_model(dir.path()).is_err());

    // Card edited to another architecture.
    let mut other = card.clone();
    other.model = ModelSpec::Mlp {
        hidden: vec![1],
        cut: None,
    };
    std::fs::write(
        dir.path().join(CARD_FILE),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        load_model(dir.path()),
        Err(ModelError::InvalidCard(_))
    ));

    // Missing directory.
    assert!(matches!(
        load_model(&dir.path().join("nope")),
        Err(ModelError::Io { .. })
    ));
}

#[test]
fn save_refuses_a_card_that_does_not_describe_the_parameters() {
    let spec = ModelSpec::Logistic;
    let params = init_parameters(&spec, 3, 5);
    let card = card_for(spec, 3, &params);
    let mut other = params.clone();
    other[0] += 1.0;
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        save_model(dir.path(), &card, &other),
        Err(ModelError::ChecksumMismatch { .. })
    ));
    assert!(safetensors_bytes(&card, &params[..2]).is_err());
    let bytes = safetensors_bytes(&card, &params).unwrap();
    assert_eq!(params_from_safetensors(&card, &bytes).unwrap(), params);
    // Metadata from another job is rejected even with matching weights.
    let mut renamed = card.clone();
    renamed.job_id = "someone-else".into();
    assert!(matches!(
        params_from_safetensors(&renamed, &bytes),
        Err(ModelError::Safetensors(_))
    ));
}

/// A vertical model's first layer stored without its top part: the card names the kept top's
/// digest, the artifact holds only `layers.0.*`, it cannot run alone, and it joins only with the
/// top of that digest.
#[test]
fn a_first_layer_whose_top_was_kept_joins_only_with_that_top() {
    let spec = ModelSpec::Mlp {
        hidden: vec![3, 2],
        cut: None,
    };
    let params = init_parameters(&spec, 4, 5);
    let whole_card = card_for(spec.clone(), 4, &params);
    let first_len = 4 * 3 + 3;
    let (first, top) = params.split_at(first_len);
    let mut card = whole_card.clone();
    card.kept_top = Some(KeptTop {
        site: "site-1".into(),
        values: top.len(),
        sha256: parameters_sha256(top),
    });
    // A card that claims the whole model's length for the first layer is refused.
    assert!(card.clone().bind_parameters(&params).is_err());
    card.bind_parameters(first).unwrap();
    assert_eq!(card.parameter_order.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    save_model(dir.path(), &card, first).unwrap();
    let err = load_model(dir.path()).unwrap_err().to_string();
    assert!(err.contains("never left the label site site-1"), "{err}");
    let (loaded_card, loaded) = load_artifact(dir.path()).unwrap();
    assert_eq!((&loaded_card, &loaded[..]), (&card, first));

    let (joined_card, joined) = card.join_kept_top(first, top).unwrap();
    assert_eq!(joined, params);
    assert_eq!(joined_card, whole_card);
    let mut other = top.to_vec();
    other[0] += 1.0;
    assert!(matches!(
        card.join_kept_top(first, &other),
        Err(ModelError::ChecksumMismatch { .. })
    ));
    assert!(whole_card.join_kept_top(first, top).is_err());
    // A kept top of the wrong size does not describe this model.
    let mut wrong = card.clone();
    wrong.kept_top.as_mut().unwrap().values += 1;
    assert!(matches!(wrong.validate(), Err(ModelError::InvalidCard(_))));
}

/// The size used by the federation end-to-end test elsewhere (~10^7 parameters). Ignored by
/// default because it needs a few hundred MiB; run with `cargo test -- --ignored`.
#[test]
#[ignore = "large: ~10^7 parameters"]
fn ten_million_parameter_model_trains_one_epoch() {
    let spec = ModelSpec::Mlp {
        hidden: vec![312_500],
        cut: None,
    };
    let n_features = 30;
    let data = separable(50, n_features, 6);
    let t0 = Instant::now();
    let start = init_parameters(&spec, n_features, 1);
    let t_init = t0.elapsed();
    let t1 = Instant::now();
    let out = train(&spec, &start, &data, &config(1, 16, adam(1e-3))).unwrap();
    let t_train = t1.elapsed();
    let t2 = Instant::now();
    let metrics = evaluate(&spec, &out.parameters, &data).unwrap();
    let hash = parameters_sha256(&out.parameters);
    eprintln!(
        "10M-parameter model ({} params): init {t_init:?}, one Adam epoch {t_train:?}, \
         evaluate + sha256 {:?} (acc {:.2}, {})",
        start.len(),
        t2.elapsed(),
        metrics.accuracy,
        &hash[..8]
    );
    assert!(out.loss.is_finite());
}

/// One example's loss gradient from burn's autodiff: a backward pass per
/// example, the slow reference DP-SGD's batched per-sample gradients must
/// match.
fn per_example_gradient(spec: &ModelSpec, params: &[f32], data: &Examples, row: usize) -> Vec<f32> {
    let autodiff = net::cpu().autodiff();
    let tensors = LayerTensors::from_flat(spec, data.n_features, params, &net::cpu()).unwrap();
    let model = tensors.to_net(true);
    let x = net::rows_tensor(data, &[row], &autodiff);
    let y = net::labels_tensor(data, &[row], &autodiff);
    let mut grads = net::bce_with_logits(model.forward(x), y).backward();
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for layer in &model.layers {
        weights.push(layer.weight.grad_remove(&mut grads).unwrap());
        biases.push(
            layer
                .bias
                .as_ref()
                .unwrap()
                .grad_remove(&mut grads)
                .unwrap(),
        );
    }
    LayerTensors { weights, biases }.to_flat().unwrap()
}

#[test]
fn clipped_gradient_sum_matches_a_per_example_loop() {
    let data = separable(40, 5, 3);
    for spec in [
        ModelSpec::Logistic,
        ModelSpec::Mlp {
            hidden: vec![7, 4],
            cut: None,
        },
    ] {
        // Large weights so that some examples' gradients exceed the bound and
        // some do not.
        let params: Vec<f32> = init_parameters(&spec, 5, 11)
            .into_iter()
            .map(|w| 3.0 * w)
            .collect();
        let rows: Vec<usize> = (0..40).step_by(3).collect();
        for max_norm in [0.05, 0.5, 1e6] {
            let mut want = vec![0.0f64; params.len()];
            let mut clipped = 0;
            for &r in &rows {
                let g = per_example_gradient(&spec, &params, &data, r);
                let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                let factor = (max_norm / (norm + 1e-6)).min(1.0);
                clipped += usize::from(factor < 1.0);
                for (w, v) in want.iter_mut().zip(&g) {
                    *w += factor * f64::from(*v);
                }
            }
            let (got, loss_sum) =
                clipped_gradient_sum(&spec, &params, &data, &rows, max_norm).unwrap();
            assert!(loss_sum > 0.0);
            let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-4 * scale.max(1e-3),
                    "{spec:?} clip {max_norm} parameter {i}: {g} vs per-example loop {w}"
                );
            }
            if max_norm == 0.05 {
                assert!(2 * clipped >= rows.len(), "only {clipped} examples clipped");
            }
            if max_norm == 1e6 {
                assert_eq!(clipped, 0);
            }
        }
    }
}

#[test]
fn dp_sgd_learns_with_noise_and_changes_with_it() {
    let data = separable(2000, 6, 5);
    let spec = ModelSpec::Mlp {
        hidden: vec![8],
        cut: None,
    };
    let start = init_parameters(&spec, 6, 1);
    let mut cfg = config(3, 64, sgd(0.5, 0.0));
    cfg.dp = Some(DpSgdConfig {
        noise_multiplier: 1.0,
        max_grad_norm: 1.0,
    });
    let a = train(&spec, &start, &data, &cfg).unwrap();
    let b = train(&spec, &start, &data, &cfg).unwrap();
    // The noise and the Poisson batches come from the operating system, not
    // from the job's seed: two runs differ.
    assert_ne!(a.parameters, b.parameters);
    let metrics = evaluate(&spec, &a.parameters, &data).unwrap();
    assert!(metrics.accuracy > 0.85, "accuracy {}", metrics.accuracy);

    let bad = TrainConfig {
        dp: Some(DpSgdConfig {
            noise_multiplier: 1.0,
            max_grad_norm: 0.0,
        }),
        ..cfg
    };
    let err = train(&spec, &start, &data, &bad).unwrap_err().to_string();
    assert!(err.contains("max_grad_norm"), "{err}");
}

#[test]
fn dp_sgd_plan_counts_steps_and_rate() {
    let plan = DpSgdPlan::new(1000, 64);
    assert_eq!(plan.steps_per_epoch, 16);
    assert!((plan.sampling_rate - 0.064).abs() < 1e-12);
    assert_eq!(plan.steps(3), 48);
    let tiny = DpSgdPlan::new(10, 64);
    assert_eq!(tiny.sampling_rate, 1.0);
    assert_eq!(tiny.steps_per_epoch, 1);
}

#[test]
fn poisson_batches_take_each_row_with_the_sampling_rate() {
    let mut rng = crate::dp_sgd::sampling_rng();
    let (n, q, draws) = (500, 0.1, 2000);
    let mut hits = vec![0u32; n];
    let mut total = 0usize;
    for _ in 0..draws {
        let rows = crate::dp_sgd::poisson_rows(n, q, &mut rng);
        assert!(rows.windows(2).all(|w| w[0] < w[1]) && rows.iter().all(|&r| r < n));
        total += rows.len();
        for r in rows {
            hits[r] += 1;
        }
    }
    let mean = total as f64 / draws as f64;
    // Batch size: mean q·n = 50, standard error sqrt(45 / 2000) = 0.15.
    assert!((mean - 50.0).abs() < 1.0, "mean batch {mean}");
    // Each row: mean 200 hits, sd ~13.4; the first and last rows too.
    for r in [0, 1, n / 2, n - 1] {
        assert!(
            (f64::from(hits[r]) - 200.0).abs() < 70.0,
            "row {r}: {}",
            hits[r]
        );
    }
    assert_eq!(
        crate::dp_sgd::poisson_rows(7, 1.0, &mut rng),
        (0..7).collect::<Vec<_>>()
    );
}

#[test]
fn coalition_losses_equal_one_evaluation_of_each_coalition_model() {
    let data = separable(57, 6, 3);
    // Large enough that both the first layer and the hidden one run as
    // burn products rather than loops.
    let wide = separable(300, 40, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (spec, data, scale) in [
        (ModelSpec::Logistic, &data, 1.0),
        (
            ModelSpec::Mlp {
                hidden: vec![8, 5],
                cut: None,
            },
            &data,
            1.0,
        ),
        (
            ModelSpec::Mlp {
                hidden: vec![64, 64],
                cut: None,
            },
            &wide,
            0.15,
        ),
    ] {
        let n = spec.num_parameters(data.n_features);
        let start: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        let updates: Vec<Vec<f32>> = (0..5)
            .map(|_| {
                (0..n)
                    .map(|_| rng.random_range(-0.8 * scale..0.8 * scale))
                    .collect()
            })
            .collect();
        // Player 3 holds no examples: it weighs nothing in any coalition.
        let examples = [40u64, 7, 19, 0, 25];
        let players: Vec<(&[f32], u64)> = updates
            .iter()
            .zip(examples)
            .map(|(u, e)| (u.as_slice(), e))
            .collect();
        // Every coalition (each built by adding one member to a smaller
        // one), then what stratified sampling asks: the leave-one-outs
        // have no smaller neighbour and are built by removing one member
        // from the full coalition.
        let every: Vec<u64> = (0..32).collect();
        let stratified: Vec<u64> = [0, 31, 30, 29, 27, 23, 15, 1, 2, 4, 8, 16].into();
        for coalitions in [every, stratified] {
            let losses = coalition_losses(&spec, &start, &players, &coalitions, data)
                .expect("coalition losses");
            assert_eq!(losses.len(), coalitions.len());
            for (&c, loss) in coalitions.iter().zip(&losses) {
                let model = coalition_model(&start, &players, c);
                let one = evaluate(&spec, &model, data).expect("evaluate").loss;
                assert!(
                    (one - loss).abs() < 1e-4,
                    "{spec:?} coalition {c:#b}: {one} vs {loss}"
                );
            }
        }
        assert_eq!(coalition_model(&start, &players, 0), start);
        assert_eq!(coalition_model(&start, &players, 0b1000), start);
    }
    let start = [0.0f32; 7];
    let update = [0.0f32; 7];
    let err = coalition_losses(&ModelSpec::Logistic, &start[..6], &[], &[0], &data).unwrap_err();
    assert!(err.to_string().contains("parameter"), "{err}");
    let err = coalition_losses(
        &ModelSpec::Logistic,
        &start,
        &[(&update[..6], 1)],
        &[1],
        &data,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("player 0's update has 6 values"),
        "{err}"
    );
    let err = coalition_losses(
        &ModelSpec::Logistic,
        &start,
        &[(&update, 1)],
        &[0b10],
        &data,
    )
    .unwrap_err();
    assert!(err.to_string().contains("beyond the first 1"), "{err}");
    let mut nan = [0.0f32; 7];
    nan[2] = f32::NAN;
    let err =
        coalition_losses(&ModelSpec::Logistic, &start, &[(&nan, 1)], &[0, 1], &data).unwrap_err();
    assert!(
        err.to_string()
            .contains("player 0's update has a non-finite value at index 2"),
        "{err}"
    );
    let huge = [3e38f32; 7];
    let err =
        coalition_losses(&ModelSpec::Logistic, &huge, &[(&update, 1)], &[0], &data).unwrap_err();
    assert!(err.to_string().contains("candidate model 0"), "{err}");
}

/// Timing of contribution scoring at the valuation benchmark's size (10
/// players, about 216 coalitions, 11 validation rows, 30 → 16 → 1):
/// `cargo test -p cohort-models --lib coalition_scoring_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn coalition_scoring_time() {
    let rows = std::env::var("COHORT_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(11);
    let data = separable(rows, 30, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let hidden: Vec<usize> = std::env::var("COHORT_HIDDEN")
        .map(|h| h.split(',').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_else(|_| vec![16]);
    let spec = ModelSpec::Mlp { hidden, cut: None };
    let n = spec.num_parameters(data.n_features);
    let start: Vec<f32> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
    let updates: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..n).map(|_| rng.random_range(-0.1..0.1)).collect())
        .collect();
    let players: Vec<(&[f32], u64)> = updates.iter().map(|u| (u.as_slice(), 45)).collect();
    // Every prefix of 24 random orders, as permutation sampling asks; with
    // COHORT_ORDERS=4 and COHORT_ENDS=1, what stratified sampling asks
    // (also every singleton and leave-one-out).
    let orders: usize = std::env::var("COHORT_ORDERS")
        .ok()
        .and_then(|o| o.parse().ok())
        .unwrap_or(24);
    let mut coalitions = vec![0u64];
    if std::env::var("COHORT_ENDS").is_ok() {
        for i in 0..10 {
            coalitions.push(1 << i);
            coalitions.push(1023 & !(1 << i));
        }
        coalitions.push(1023);
    }
    for _ in 0..orders {
        let mut order: Vec<u32> = (0..10).collect();
        order.shuffle(&mut rng);
        let mut prefix = 0u64;
        for i in order {
            prefix |= 1 << i;
            if !coalitions.contains(&prefix) {
                coalitions.push(prefix);
            }
        }
    }
    eprintln!("{} coalitions", coalitions.len());
    for _ in 0..3 {
        let t = Instant::now();
        let reps = 200;
        for _ in 0..reps {
            coalition_losses(&spec, &start, &players, &coalitions, &data).expect("losses");
        }
        eprintln!(
            "{:.1} us per scoring",
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        );
    }
}
