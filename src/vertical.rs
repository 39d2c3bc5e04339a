//! Vertical split learning between sites that hold different columns about overlapping
//! patients, run as a simulation in one process (`cohort vertical`, `cohort bench
//! split`): the sites' ids are aligned by ECDH private set intersection
//! ([`cohort_datasets::psi`]), every site trains its block of the first layer, and the label
//! site, the one whose file has the label column, holds the labels and the rest of the
//! network ([`cohort_models::TopPart::vertical`]).
//!
//! Each batch, every site sends its pre-activations to the label site, which sums them,
//! takes its step and sends back the gradient at the cut, the same to every site. Those
//! gradients leak labels (Li et al. 2022): the report carries the norm attack's leak AUC for
//! every epoch, and `defence` turns on the max-norm defence
//! ([`cohort_models::equalize_gradient_norms`]).
//!
//! The sites are parts of this process, not peers on a network: this shows the algorithm,
//! the alignment and the leakage on real files. The coordinator runs the same algorithm
//! between real sites over gRPC (`[training] mode = "vertical"`, coordinator/src/vertical.rs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cohort_datasets::psi;
use cohort_datasets::{Examples, LabelColumn, LabelValue, SiteTable};
use cohort_models::{
    BottomPart, Metrics, ModelSpec, OptimizerSpec, TopPart, TrainConfig, VerticalLayout,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// What to train, on which site files.
#[derive(Debug, Clone)]
pub struct VerticalOptions {
    /// One file per site; exactly one must have the label column.
    pub sites: Vec<PathBuf>,
    /// The id column every site has (`[data] id`).
    pub id: String,
    pub label: String,
    pub positive: String,
    /// Columns no site uses.
    pub drop: Vec<String>,
    pub model: ModelSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerSpec,
    /// Fraction of the shared patients held out (the same rows at every site).
    pub validation_fraction: f64,
    pub seed: u64,
    /// The max-norm defence, with this noise scale (1 is the paper's); `None`: off.
    pub defence: Option<f64>,
    /// Status lines on stderr.
    pub progress: bool,
}

impl VerticalOptions {
    /// The bundled WDBC data's column names, the demo's MLP and optimizer.
    pub fn wdbc(sites: Vec<PathBuf>) -> Self {
        Self {
            sites,
            id: "patient_id".into(),
            label: "diagnosis".into(),
            positive: "M".into(),
            drop: Vec::new(),
            model: ModelSpec::Mlp {
                hidden: vec![32, 16],
                cut: None,
            },
            epochs: 20,
            batch_size: 32,
            optimizer: OptimizerSpec::Sgd {
                learning_rate: 0.05,
                momentum: 0.9,
            },
            validation_fraction: 0.25,
            seed: 7,
            defence: None,
            progress: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    pub file: PathBuf,
    pub rows: usize,
    pub features: usize,
    pub label_site: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochView {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_auc: f64,
    /// Norm-attack AUC on the gradients the label site sent this epoch (0.5 = no leak).
    pub leak_auc: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerticalReport {
    pub sites: Vec<SiteView>,
    /// Patients every site has.
    pub intersection: usize,
    pub psi_seconds: f64,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub epochs: Vec<EpochView>,
    /// The trained parts joined into one model, on the held-out shared rows.
    pub validation: Metrics,
    /// The same model trained by the same code on the joined columns in one place.
    pub centralized: Metrics,
    /// Leak AUC of the norm attack, mean over the epochs.
    pub leak_auc: f64,
    /// The epoch whose gradients leaked most (an attacker sees every epoch).
    pub worst_leak_auc: f64,
    pub defence: Option<f64>,
    /// Bytes the sites and the label site exchanged per epoch (activations up, gradients
    /// down, 4 bytes a value).
    pub bytes_per_epoch: u64,
    pub seconds_per_epoch: f64,
}

/// Aligns the sites by PSI and trains; see the module documentation.
pub fn run(opts: &VerticalOptions) -> Result<VerticalReport> {
    if opts.sites.len() < 2 {
        bail!("vertical learning needs at least 2 site files");
    }
    if opts.epochs == 0 || opts.batch_size == 0 {
        bail!("epochs and batch size must be at least 1");
    }
    opts.optimizer.validate()?;
    if !(0.0..1.0).contains(&opts.validation_fraction) {
        bail!(
            "validation fraction must be in [0, 1), got {}",
            opts.validation_fraction
        );
    }
    let label = LabelColumn {
        name: opts.label.clone(),
        positive: LabelValue::from(opts.positive.as_str()),
    };
    let mut tables = Vec::with_capacity(opts.sites.len());
    for file in &opts.sites {
        let table = SiteTable::load(file, &opts.id, &label, &opts.drop)
            .with_context(|| format!("site file {}", file.display()))?;
        if table.n_features() == 0 {
            bail!("site file {} has no feature column", file.display());
        }
        tables.push((file.clone(), table));
    }
    let label_sites: Vec<usize> = (0..tables.len())
        .filter(|&i| tables[i].1.labels.is_some())
        .collect();
    let label_site = match label_sites.as_slice() {
        [one] => *one,
        [] => bail!(
            "no site file has the label column `{}`: one site must hold the labels",
            opts.label
        ),
        many => bail!(
            "{} site files have the label column `{}`; exactly one site may hold the labels",
            many.len(),
            opts.label
        ),
    };
    // The label site first: its block is the first of the joined columns.
    tables.swap(0, label_site);

    // A label site row without a label cannot be trained on: it stays out of the PSI.
    let id_lists: Vec<Vec<Option<String>>> = tables
        .iter()
        .map(|(_, t)| match &t.labels {
            Some(labels) => t
                .ids
                .iter()
                .zip(labels)
                .map(|(id, y)| match y {
                    Some(_) => id.clone(),
                    None => Some(String::new()),
                })
                .collect(),
            None => t.ids.clone(),
        })
        .collect();
    let psi_started = Instant::now();
    let salt = format!("cohort-vertical-{}", opts.seed);
    let aligned = psi::run_in_process(salt.as_bytes(), &strip_unlabelled(&id_lists))
        .map_err(|e| anyhow::anyhow!("private set intersection: {e}"))?;
    let psi_seconds = psi_started.elapsed().as_secs_f64();
    let shared = aligned[0].len();
    if opts.progress {
        eprintln!(
            "PSI: {shared} patients shared by all {} sites ({psi_seconds:.2} s)",
            tables.len()
        );
    }
    // Unlabelled rows were removed from the label site's list: map back to file rows.
    let aligned: Vec<Vec<usize>> = aligned
        .into_iter()
        .zip(&id_lists)
        .map(|(rows, ids)| {
            let kept: Vec<usize> = (0..ids.len())
                .filter(|&r| ids[r].as_deref().is_some_and(|s| !s.is_empty()))
                .collect();
            rows.into_iter().map(|p| kept[p]).collect()
        })
        .collect();

    // The PSI's common order follows the blinded values, which change with every run's keys;
    // every site can sort its own shared ids, so the same order, by id, is free to agree on
    // and makes a run reproducible from its seed.
    let mut by_id: Vec<usize> = (0..shared).collect();
    by_id.sort_by(|&a, &b| id_lists[0][aligned[0][a]].cmp(&id_lists[0][aligned[0][b]]));
    let aligned: Vec<Vec<usize>> = aligned
        .iter()
        .map(|rows| by_id.iter().map(|&p| rows[p]).collect())
        .collect();

    // One seeded train/validation split of the shared positions, the same at every site.
    let (train_pos, validation_pos) =
        cohort_datasets::vertical_holdout(shared, opts.validation_fraction, opts.seed);

    let labels_of = |positions: &[usize]| -> Vec<f32> {
        let labels = tables[0]
            .1
            .labels
            .as_ref()
            .expect("the label site has labels");
        positions
            .iter()
            .map(|&p| f32::from(labels[aligned[0][p]].unwrap_or(0)))
            .collect()
    };
    let train_labels = labels_of(&train_pos);
    let validation_labels = labels_of(&validation_pos);
    // Each site standardizes its own columns with its own training rows.
    let site_examples = |positions: &[usize], labels: &[f32]| -> Vec<Examples> {
        tables
            .iter()
            .enumerate()
            .map(|(s, (_, t))| {
                let rows: Vec<usize> = positions.iter().map(|&p| aligned[s][p]).collect();
                let fit: Vec<usize> = train_pos.iter().map(|&p| aligned[s][p]).collect();
                Examples {
                    features: t.standardized(&rows, &fit),
                    labels: labels.to_vec(),
                    n_features: t.n_features(),
                }
            })
            .collect()
    };
    let train_sets = site_examples(&train_pos, &train_labels);
    let validation_sets = site_examples(&validation_pos, &validation_labels);
    let widths: Vec<usize> = tables.iter().map(|(_, t)| t.n_features()).collect();
    let joined_width: usize = widths.iter().sum();

    let layout = VerticalLayout::new(&opts.model)?;
    opts.model.validate_for(joined_width)?;
    let start = cohort_models::init_parameters(&opts.model, joined_width, opts.seed);
    let (site_params, top_params) = cohort_models::split_vertical(&layout, &start, &widths)?;
    // The label site (first) trains the first layer's bias.
    let mut bottoms = site_params
        .iter()
        .zip(&widths)
        .enumerate()
        .map(|(i, (p, &w))| BottomPart::vertical(&layout, w, p, &opts.optimizer, i == 0))
        .collect::<Result<Vec<_>, _>>()?;
    let mut top = TopPart::vertical(&layout, &top_params, &opts.optimizer)?;
    let width = layout.cut_width;
    let mut noise = rand::rng();

    let n = train_labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut epochs = Vec::with_capacity(opts.epochs);
    let mut bytes_per_epoch = 0u64;
    for epoch in 0..opts.epochs {
        let started = Instant::now();
        // The shuffle of whole-model training, so the centralized run sees the same batches.
        order.sort_unstable();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            opts.seed.wrapping_add(epoch as u64),
        ));
        let (mut loss_sum, mut sent, mut sent_labels) = (0.0, Vec::new(), Vec::new());
        let mut bytes = 0u64;
        for rows in order.chunks(opts.batch_size) {
            let mut sum = vec![0.0f32; rows.len() * width];
            for (bottom, data) in bottoms.iter_mut().zip(&train_sets) {
                let part = bottom.forward(data, rows)?;
                for (acc, v) in sum.iter_mut().zip(part) {
                    *acc += v;
                }
            }
            let labels: Vec<f32> = rows.iter().map(|&r| train_labels[r]).collect();
            let step = top.step(&sum, &labels)?;
            let mut gradient = step.grad_at_cut;
            if let Some(scale) = opts.defence {
                cohort_models::equalize_gradient_norms(&mut gradient, width, scale, &mut noise);
            }
            for bottom in &mut bottoms {
                bottom.backward(&gradient)?;
            }
            // Every site but the label site sends its activations and gets the gradient.
            bytes += 2 * 4 * (gradient.len() as u64) * (bottoms.len() as u64 - 1);
            loss_sum += step.loss * rows.len() as f64;
            sent.extend(gradient);
            sent_labels.extend(labels);
        }
        bytes_per_epoch = bytes;
        let seconds = started.elapsed().as_secs_f64();
        let leak_auc = cohort_models::norm_leak_auc(&sent, width, &sent_labels);
        let validation_auc = if validation_labels.is_empty() {
            f64::NAN
        } else {
            let mut sum = vec![0.0f32; validation_labels.len() * width];
            let rows: Vec<usize> = (0..validation_labels.len()).collect();
            for (bottom, data) in bottoms.iter().zip(&validation_sets) {
                for (acc, v) in sum.iter_mut().zip(bottom.predict(data, &rows)?) {
                    *acc += v;
                }
            }
            cohort_models::roc_auc(&top.predict(&sum)?, &validation_labels)
        };
        let view = EpochView {
            epoch: epoch + 1,
            train_loss: loss_sum / n.max(1) as f64,
            validation_auc,
            leak_auc,
            seconds,
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}/{}: loss {:.4}, validation AUC {:.4}, leak AUC {:.3} ({:.2} s)",
                view.epoch, opts.epochs, view.train_loss, view.validation_auc, leak_auc, seconds
            );
        }
        epochs.push(view);
    }

    let parts: Vec<Vec<f32>> = bottoms
        .iter()
        .map(|b| b.parameters())
        .collect::<Result<_, _>>()?;
    let site_parts: Vec<(usize, &[f32])> = widths
        .iter()
        .zip(&parts)
        .map(|(&w, p)| (w, p.as_slice()))
        .collect();
    let joined = cohort_models::join_vertical(&layout, &site_parts, &top.parameters()?)?;
    let join = |sets: &[Examples], labels: &[f32]| -> Examples {
        let mut features = Vec::with_capacity(labels.len() * joined_width);
        for r in 0..labels.len() {
            for set in sets {
                features.extend_from_slice(set.row(r));
            }
        }
        Examples {
            features,
            labels: labels.to_vec(),
            n_features: joined_width,
        }
    };
    let joined_train = join(&train_sets, &train_labels);
    let joined_validation = join(&validation_sets, &validation_labels);
    let evaluation_set = if joined_validation.is_empty() {
        &joined_train
    } else {
        &joined_validation
    };
    let validation = cohort_models::evaluate(&opts.model, &joined, evaluation_set)?;
    let centralized_model = cohort_models::train(
        &opts.model,
        &start,
        &joined_train,
        &TrainConfig {
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            optimizer: opts.optimizer.clone(),
            seed: opts.seed,
            proximal_mu: None,
            dp: None,
        },
    )?;
    let centralized =
        cohort_models::evaluate(&opts.model, &centralized_model.parameters, evaluation_set)?;
    let seconds_per_epoch =
        epochs.iter().map(|e| e.seconds).sum::<f64>() / epochs.len().max(1) as f64;
    Ok(VerticalReport {
        sites: tables
            .iter()
            .enumerate()
            .map(|(i, (file, t))| SiteView {
                file: file.clone(),
                rows: t.ids.len(),
                features: t.n_features(),
                label_site: i == 0,
            })
            .collect(),
        intersection: shared,
        psi_seconds,
        train_rows: n,
        validation_rows: validation_labels.len(),
        leak_auc: epochs.iter().map(|e| e.leak_auc).sum::<f64>() / epochs.len().max(1) as f64,
        worst_leak_auc: epochs.iter().map(|e| e.leak_auc).fold(0.5, f64::max),
        epochs,
        validation,
        centralized,
        defence: opts.defence,
        bytes_per_epoch,
        seconds_per_epoch,
    })
}

/// The label site's unlabelled rows (marked by an empty id) are left out of its list.
fn strip_unlabelled(lists: &[Vec<Option<String>>]) -> Vec<Vec<Option<String>>> {
    lists
        .iter()
        .map(|ids| {
            ids.iter()
                .filter(|id| id.as_deref().is_none_or(|s| !s.is_empty()))
                .cloned()
                .collect()
        })
        .collect()
}

/// The text form of a [`VerticalReport`].
pub fn render(r: &VerticalReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out);
    let _ = writeln!(out, "Vertical split learning: {} sites", r.sites.len());
    for s in &r.sites {
        let _ = writeln!(
            out,
            "  {:<40} {:>5} patients, {:>2} features{}",
            s.file.display(),
            s.rows,
            s.features,
            if s.label_site { ", labels" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "PSI (ECDH on ristretto255): {} patients at every site, {:.2} s",
        r.intersection, r.psi_seconds
    );
    let _ = writeln!(
        out,
        "Held-out shared patients: {}   (trained on {})",
        r.validation_rows, r.train_rows
    );
    let _ = writeln!(out, "                      accuracy    ROC AUC    loss");
    let _ = writeln!(
        out,
        "  vertical (Cohort)     {:.4}     {:.4}    {:.4}",
        r.validation.accuracy, r.validation.auc, r.validation.loss
    );
    let _ = writeln!(
        out,
        "  centralized baseline  {:.4}     {:.4}    {:.4}",
        r.centralized.accuracy, r.centralized.auc, r.centralized.loss
    );
    let _ = writeln!(
        out,
        "Label leakage, norm attack AUC on the gradients sent (0.5 = none): mean {:.3}, worst \
         epoch {:.3}{}",
        r.leak_auc,
        r.worst_leak_auc,
        match r.defence {
            Some(scale) => format!(" with the max-norm defence (scale {scale})"),
            None => " without a defence".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "{:.3} s and {} bytes exchanged per epoch",
        r.seconds_per_epoch, r.bytes_per_epoch
    );
    out
}

/// Writes the bundled WDBC data split by columns into `sites` files under `dir`, each site
/// keeping a random `keep` fraction of the patients (`cohort data split-vertical` on the
/// bundled file).
pub fn write_wdbc_sites(
    dir: &std::path::Path,
    sites: usize,
    keep: f64,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    let report = cohort_datasets::split_vertical_bytes(
        crate::WDBC_CSV,
        dir,
        &cohort_datasets::VerticalSplitOptions {
            sites,
            id: "patient_id".into(),
            label: "diagnosis".into(),
            drop: Vec::new(),
            keep,
            seed,
        },
    )?;
    Ok(report.sites.into_iter().map(|s| s.file).collect())
}

/// The text form of a [`cohort_datasets::VerticalSplitReport`].
pub fn render_split(report: &cohort_datasets::VerticalSplitReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in &report.sites {
        let _ = writeln!(
            out,
            "{}  {} rows  {} feature columns{}",
            s.file.display(),
            s.rows,
            s.columns.len(),
            if s.has_label { " + label" } else { "" }
        );
    }
    let _ = writeln!(out, "patients at every site: {}", report.common_rows);
    out
}
