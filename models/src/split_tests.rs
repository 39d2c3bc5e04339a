//! A split network must train exactly like the unsplit one.

use cohort_datasets::Examples;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::*;

fn data(n: usize, d: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let w: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut features = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let score: f32 = row.iter().zip(&w).map(|(x, w)| x * w).sum();
        labels.push(if score > 0.2 { 1.0 } else { 0.0 });
        features.extend(row);
    }
    Examples {
        features,
        labels,
        n_features: d,
    }
}

fn sgd() -> OptimizerSpec {
    OptimizerSpec::Sgd {
        learning_rate: 0.3,
        momentum: 0.0,
    }
}

/// One full-batch step of `train`: the batch is every row, so its shuffle does not matter.
fn unsplit_step(spec: &ModelSpec, start: &[f32], data: &Examples) -> TrainOutcome {
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: data.labels.len(),
        optimizer: sgd(),
        seed: 1,
        proximal_mu: None,
        dp: None,
    };
    train(spec, start, data, &cfg).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn splitfed_step_equals_the_unsplit_step_at_every_cut() {
    let examples = data(48, 5, 3);
    let rows: Vec<usize> = (0..48).collect();
    for cut in [
        None,
        Some("layers.0".to_string()),
        Some("layers.1".to_string()),
    ] {
        let spec = ModelSpec::Mlp {
            hidden: vec![6, 4],
            cut,
        };
        let start = init_parameters(&spec, 5, 11);
        let expected = unsplit_step(&spec, &start, &examples);

        let layout = SplitLayout::new(&spec, 5).unwrap();
        let (b, t) = layout.split(&start).unwrap();
        let mut bottom = BottomPart::new(&layout, b, &sgd()).unwrap();
        let mut top = TopPart::new(&layout, t, &sgd()).unwrap();
        let acts = bottom.forward(&examples, &rows).unwrap();
        assert_eq!(acts.len(), 48 * layout.cut_width());
        let step = top.step(&acts, &examples.labels).unwrap();
        bottom.backward(&step.grad_at_cut).unwrap();
        let joined = layout
            .join(&bottom.parameters().unwrap(), &top.parameters().unwrap())
            .unwrap();
        assert!(
            max_diff(&joined, &expected.parameters) < 1e-5,
            "{spec:?}: {}",
            max_diff(&joined, &expected.parameters)
        );
        assert!((step.loss - expected.loss).abs() < 1e-5);
    }
}

/// U-shaped: bottom and head at the hospital, the middle at the coordinator; one step of the
/// three is one step of the whole network, and the middle refuses what it cannot use.
#[test]
fn u_shaped_step_equals_the_unsplit_step() {
    let examples = data(48, 5, 4);
    let rows: Vec<usize> = (0..48).collect();
    for (hidden, cut) in [
        (vec![6, 4], None),
        (vec![6, 4, 3], Some("layers.1".to_string())),
    ] {
        let spec = ModelSpec::Mlp { hidden, cut };
        let start = init_parameters(&spec, 5, 12);
        let expected = unsplit_step(&spec, &start, &examples);
        let layout = UShapedLayout::new(&spec, 5).unwrap();
        let (b, m, h) = layout.split(&start).unwrap();
        let mut bottom = BottomPart::new(&layout.outer(), b, &sgd()).unwrap();
        let mut middle = MiddlePart::new(&layout, m, &sgd()).unwrap();
        let mut head = TopPart::head(&layout, h, &sgd()).unwrap();
        let acts = bottom.forward(&examples, &rows).unwrap();
        let mid = middle.forward(48, &acts).unwrap();
        assert_eq!(mid.len(), 48 * layout.head_width());
        assert!(middle.awaits_gradient());
        let step = head.step(&mid, &examples.labels).unwrap();
        let grad = middle.backward(&step.grad_at_cut).unwrap();
        bottom.backward(&grad).unwrap();
        let mut joined = bottom.parameters().unwrap();
        joined.extend(middle.parameters().unwrap());
        joined.extend(head.parameters().unwrap());
        assert!(
            max_diff(&joined, &expected.parameters) < 1e-5,
            "{spec:?}: {}",
            max_diff(&joined, &expected.parameters)
        );
        assert!((step.loss - expected.loss).abs() < 1e-5);

        let mut nan = acts.clone();
        nan[3] = f32::NAN;
        assert!(middle.forward(48, &nan).is_err());
        assert!(middle.forward(47, &acts).is_err());
        assert!(
            middle.backward(&step.grad_at_cut).is_err(),
            "no forward pending"
        );
    }
    // A cut that leaves only the last layer has no middle.
    let spec = ModelSpec::Mlp {
        hidden: vec![6, 4],
        cut: Some("layers.1".into()),
    };
    let err = UShapedLayout::new(&spec, 5).unwrap_err().to_string();
    assert!(err.contains("model.cut"), "{err}");
}

#[test]
fn vertical_step_equals_the_unsplit_step() {
    let examples = data(40, 5, 9);
    // Columns 0..2 at the label site, 2..5 at a feature site.
    let columns = |range: std::ops::Range<usize>| Examples {
        features: examples
            .features
            .chunks(5)
            .flat_map(|r| r[range.clone()].to_vec())
            .collect(),
        labels: examples.labels.clone(),
        n_features: range.len(),
    };
    let (label_site, feature_site) = (columns(0..2), columns(2..5));
    let rows: Vec<usize> = (0..40).collect();
    for spec in [
        ModelSpec::Logistic,
        ModelSpec::Mlp {
            hidden: vec![4],
            cut: None,
        },
    ] {
        let start = init_parameters(&spec, 5, 5);
        let expected = unsplit_step(&spec, &start, &examples);
        let layout = VerticalLayout::new(&spec).unwrap();
        let (sites, top) = split_vertical(&layout, &start, &[2, 3]).unwrap();
        let mut own = BottomPart::vertical(&layout, 2, &sites[0], &sgd(), true).unwrap();
        let mut other = BottomPart::vertical(&layout, 3, &sites[1], &sgd(), false).unwrap();
        let mut head = TopPart::vertical(&layout, &top, &sgd()).unwrap();
        let a = own.forward(&label_site, &rows).unwrap();
        let b = other.forward(&feature_site, &rows).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let step = head.step(&sum, &label_site.labels).unwrap();
        own.backward(&step.grad_at_cut).unwrap();
        other.backward(&step.grad_at_cut).unwrap();
        let (p0, p1) = (own.parameters().unwrap(), other.parameters().unwrap());
        let joined =
            join_vertical(&layout, &[(2, &p0), (3, &p1)], &head.parameters().unwrap()).unwrap();
        assert!(
            max_diff(&joined, &expected.parameters) < 1e-5,
            "{spec:?}: {}",
            max_diff(&joined, &expected.parameters)
        );
    }
}

#[test]
fn bad_cuts_and_bad_batches_are_named() {
    let logistic = SplitLayout::new(&ModelSpec::Logistic, 3).unwrap_err();
    assert!(logistic.to_string().contains("model.kind"), "{logistic}");
    for cut in ["layers.2", "first", "layers.x"] {
        let spec = ModelSpec::Mlp {
            hidden: vec![4, 3],
            cut: Some(cut.into()),
        };
        let err = spec.validate().unwrap_err();
        assert!(err.to_string().contains("model.cut"), "{cut}: {err}");
    }
    let spec = ModelSpec::Mlp {
        hidden: vec![4],
        cut: None,
    };
    let layout = SplitLayout::new(&spec, 3).unwrap();
    let params = init_parameters(&spec, 3, 1);
    let (_, t) = layout.split(&params).unwrap();
    let mut top = TopPart::new(&layout, t, &sgd()).unwrap();
    let wrong_shape = top.step(&[0.0; 7], &[1.0, 0.0]).unwrap_err();
    assert!(
        wrong_shape.to_string().contains("7 activations"),
        "{wrong_shape}"
    );
    let mut nan = vec![0.5; 8];
    nan[5] = f32::NAN;
    let not_finite = top.step(&nan, &[1.0, 0.0]).unwrap_err();
    assert!(not_finite.to_string().contains("row 1"), "{not_finite}");
    let bad_label = top.step(&[0.5; 8], &[1.0, 2.0]).unwrap_err();
    assert!(
        bad_label.to_string().contains("label of row 1"),
        "{bad_label}"
    );
    let mut bottom = BottomPart::new(&layout, &vec![0.1; layout.bottom_len()], &sgd()).unwrap();
    assert!(bottom.backward(&[0.0; 4]).is_err(), "no forward pass yet");
}

#[test]
fn max_norm_defence_hides_what_the_norms_told() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let width = 16;
    let labels: Vec<f32> = (0..400).map(|i| (i % 3 == 0) as u8 as f32).collect();
    // Positives' gradients twice as long as negatives': the norm gives every label away.
    let mut grads: Vec<f32> = labels
        .iter()
        .flat_map(|&y| {
            let len = if y > 0.5 { 2.0 } else { 1.0 };
            let dir: Vec<f32> = (0..width).map(|_| rng.random_range(-1.0..1.0)).collect();
            let norm = dir.iter().map(|v| v * v).sum::<f32>().sqrt();
            dir.into_iter().map(move |v| v / norm * len)
        })
        .collect();
    assert!(norm_leak_auc(&grads, width, &labels) > 0.99);
    equalize_gradient_norms(&mut grads, width, 1.0, &mut rng);
    let after = norm_leak_auc(&grads, width, &labels);
    assert!(after < 0.65, "leak AUC after the defence: {after}");
}
