//! Training our networks with candle: weighted binary cross-entropy, AdamW, mini-batches, early
//! stopping on a validation split (or a fixed epoch count), deterministic for a seed (own RNG for
//! initialisation and shuffling; candle's CPU kernels reduce in a fixed order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use super::mlp::{Mlp, MlpShape, NORM_NAMES, TENSOR_NAMES};
use crate::util::rng::SplitMix64;

/// Feature rows and 0/1 labels.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub width: usize,
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

impl Dataset {
    pub fn new(width: usize) -> Self {
        Self {
            width,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn push(&mut self, features: &[f32], label: f32) {
        debug_assert_eq!(features.len(), self.width);
        self.x.extend_from_slice(features);
        self.y.push(label);
    }

    fn positives(&self) -> usize {
        self.y.iter().filter(|&&v| v == 1.0).count()
    }
}

#[derive(Debug, Clone)]
pub struct TrainParams {
    pub epochs: usize,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    pub seed: u64,
    /// Stop with an error when training takes longer.
    pub time_limit: Option<Duration>,
    /// Weight of a positive row in the loss; `None` balances the classes (negatives / positives).
    pub positive_weight: Option<f64>,
    /// Stop with an error as soon as this is set (the service is shutting down); checked before
    /// every batch, like the time limit.
    pub stop_when: Option<&'static AtomicBool>,
    /// Which epoch's weights are kept.
    pub select_epoch: EpochSelection,
    /// How the validation loss that chooses the epoch weighs the validation rows.
    pub validation_loss: ValidationLoss,
    /// Weights held at zero or non-negative after every step (see [`super::monotone`]).
    pub constraints: Option<super::monotone::WeightConstraints>,
    /// Input columns hidden together from a share of the training rows.
    pub hidden_group: Option<HiddenGroup>,
}

/// A group of input columns hidden (set to 0 after standardisation: the training rows' mean when
/// the standardisation was fitted on them, as in offline training) from each
/// training row with probability `share`, redrawn every epoch; validation sees every column.
/// A network that must also score rows without the group learns what the other columns say.
#[derive(Debug, Clone)]
pub struct HiddenGroup {
    pub columns: Vec<usize>,
    pub share: f64,
}

/// Which epoch's weights training keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EpochSelection {
    /// The epoch with the lowest validation loss, stopping after `patience` epochs without a
    /// lower one.
    #[default]
    Best,
    /// The last of `epochs` epochs, all of them run: the validation loss is reported, never used.
    Last,
}

impl std::str::FromStr for EpochSelection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "best" => Ok(Self::Best),
            "last" => Ok(Self::Last),
            other => Err(format!(
                "`{}` is not an epoch selection: use best or last",
                other.escape_debug()
            )),
        }
    }
}

/// How the validation loss weighs the validation rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidationLoss {
    /// The mean loss of all validation rows (positives weighted): a source counts by its rows.
    #[default]
    Rows,
    /// The mean over validation sources of each source's mean row loss (positives weighted
    /// within the source): every source counts the same, whatever its row count.
    PerSource,
}

impl std::str::FromStr for ValidationLoss {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "rows" => Ok(Self::Rows),
            "per-source" => Ok(Self::PerSource),
            other => Err(format!(
                "`{}` is not a validation loss: use rows or per-source",
                other.escape_debug()
            )),
        }
    }
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            epochs: 60,
            learning_rate: 2e-3,
            batch_size: 256,
            weight_decay: 1e-4,
            patience: 8,
            seed: 7,
            time_limit: None,
            positive_weight: None,
            stop_when: None,
            select_epoch: EpochSelection::Best,
            validation_loss: ValidationLoss::Rows,
            constraints: None,
            hidden_group: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    /// The validation loss as `TrainParams::validation_loss` says.
    pub val_loss: f64,
    pub val_auc: f64,
    /// Share of the validation loss carried by the single worst validation source: of the rows'
    /// summed loss (positives weighted), or with `ValidationLoss::PerSource` of the sum of the
    /// sources' mean losses; `None` when the rows' sources are not known.
    pub worst_source_share: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The epoch whose weights were kept: the lowest validation loss, or the last epoch with
    /// `EpochSelection::Last`.
    pub best: EpochStats,
    pub epochs_run: usize,
    pub train_rows: usize,
    pub val_rows: usize,
    /// Weight of a positive row in the loss (negatives / positives of the training rows).
    pub positive_weight: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Data(String),
    #[error(
        "training stopped after {0:?}, the time limit; raise the limit or train on fewer rows"
    )]
    TimeLimit(Duration),
    #[error("training stopped: the service is shutting down")]
    Stopped,
    #[error("training failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Trains a network of `shape` and returns its tensors (layers, plus the input standardisation
/// when the shape has one). With `start`, training continues from those tensors (a fine-tune,
/// keeping their standardisation); otherwise it starts from a seeded random initialisation.
/// `val_sources` numbers the source of each validation row (any numbers; empty when unknown,
/// which only `ValidationLoss::PerSource` refuses).
pub fn train(
    shape: MlpShape,
    train_set: &Dataset,
    val_set: &Dataset,
    val_sources: &[u32],
    params: &TrainParams,
    start: Option<&HashMap<String, Tensor>>,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<(HashMap<String, Tensor>, TrainReport), TrainError> {
    let started = Instant::now();
    check_dataset("training", train_set, shape.input)?;
    check_dataset("validation", val_set, shape.input)?;
    if !val_sources.is_empty() && val_sources.len() != val_set.len() {
        return Err(TrainError::Data(format!(
            "{} validation sources given for {} validation rows",
            val_sources.len(),
            val_set.len()
        )));
    }
    if params.validation_loss == ValidationLoss::PerSource && val_sources.is_empty() {
        return Err(TrainError::Data(
            "a per-source validation loss needs the validation rows' sources".into(),
        ));
    }
    if params.batch_size == 0 || params.epochs == 0 {
        return Err(TrainError::Data(
            "epochs and batch_size must be at least 1".into(),
        ));
    }
    let dev = Device::Cpu;
    let (mean, std) = match (shape.normalized, start) {
        // A network without standardisation sees raw features (the published ESCU one).
        (false, _) => (vec![0.0; shape.input], vec![1.0; shape.input]),
        (true, Some(tensors)) => (
            start_vector(tensors, NORM_NAMES[0], shape.input)?,
            start_vector(tensors, NORM_NAMES[1], shape.input)?,
        ),
        (true, None) => standardisation(train_set),
    };
    let mean_t = Tensor::from_slice(&mean, (1, shape.input), &dev)?;
    let std_t = Tensor::from_slice(&std, (1, shape.input), &dev)?;
    let standardise = |d: &Dataset| -> candle_core::Result<Tensor> {
        Tensor::from_slice(&d.x, (d.len(), d.width), &dev)?
            .broadcast_sub(&mean_t)?
            .broadcast_div(&std_t)
    };
    let x_train = standardise(train_set)?;
    let y_train = Tensor::from_slice(&train_set.y, train_set.len(), &dev)?;
    let x_val = standardise(val_set)?;
    let y_val = Tensor::from_slice(&val_set.y, val_set.len(), &dev)?;

    let positives = train_set.positives();
    let positive_weight = params
        .positive_weight
        .unwrap_or((train_set.len() - positives) as f64 / positives as f64);

    let mut rng = SplitMix64::new(params.seed);
    let vars = match start {
        Some(tensors) => start_layers(tensors, shape)?,
        None => init_layers(shape, &mut rng)?,
    };
    if let Some(constraints) = &params.constraints {
        constraints.project(&vars)?;
    }
    // The network trained is the `Mlp` the service loads, built over the trainable variables
    // and run through its `Linear` layers (`training_logits`: only they read the live weights).
    // Its input is standardised here, once, so it is built without its own standardisation.
    let varmap = VarMap::new();
    varmap
        .data()
        .lock()
        .expect("a new VarMap is not shared")
        .extend(
            TENSOR_NAMES
                .iter()
                .map(|n| n.to_string())
                .zip(vars.iter().cloned()),
        );
    let network = Mlp::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        MlpShape {
            normalized: false,
            ..shape
        },
    )?;
    let mut optimizer = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: params.learning_rate,
            weight_decay: params.weight_decay,
            ..Default::default()
        },
    )?;

    // Its own generator, so that training without a hidden group draws exactly as before.
    let mut hiding_rng = SplitMix64::new(params.seed ^ 0x6869_6465);
    let hide = |x: Tensor, rng: &mut SplitMix64| -> candle_core::Result<Tensor> {
        let Some(group) = &params.hidden_group else {
            return Ok(x);
        };
        let (rows, width) = x.dims2()?;
        let mut mask = vec![1.0f32; rows * width];
        for row in 0..rows {
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if draw < group.share {
                for &c in &group.columns {
                    mask[row * width + c] = 0.0;
                }
            }
        }
        x.mul(&Tensor::from_vec(mask, (rows, width), x.device())?)
    };
    let mut order: Vec<u32> = (0..train_set.len() as u32).collect();
    let mut best: Option<(EpochStats, Vec<Tensor>)> = None;
    let mut since_best = 0;
    let mut epochs_run = 0;
    let one_thread = serial_pool()?;
    for epoch in 1..=params.epochs {
        shuffle(&mut order, &mut rng);
        // The optimiser's steps, each a few small matrices, run on one thread: splitting a
        // 256-row batch's matmuls over the cores costs more in hand-offs than it saves (half
        // the training time on 2 cores), and the split does not change a bit of the result.
        let (loss_sum, batches) = one_thread.install(|| {
            let mut loss_sum = 0.0;
            let mut batches = 0;
            for batch in order.chunks(params.batch_size) {
                if let Some(limit) = params.time_limit {
                    if started.elapsed() > limit {
                        return Err(TrainError::TimeLimit(limit));
                    }
                }
                if params
                    .stop_when
                    .is_some_and(|stop| stop.load(Ordering::Relaxed))
                {
                    return Err(TrainError::Stopped);
                }
                let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
                let x = hide(x_train.index_select(&idx, 0)?, &mut hiding_rng)?;
                let y = y_train.index_select(&idx, 0)?;
                let loss = weighted_bce(&network.training_logits(&x)?, &y, positive_weight)?;
                optimizer.backward_step(&loss)?;
                if let Some(constraints) = &params.constraints {
                    constraints.project(&vars)?;
                }
                loss_sum += loss.to_scalar::<f32>()? as f64;
                batches += 1;
            }
            Ok::<_, TrainError>((loss_sum, batches))
        })?;
        let val_logits = network.training_logits(&x_val)?;
        let val_scores = val_logits.to_vec1::<f32>()?;
        let by_source = (!val_sources.is_empty())
            .then(|| source_losses(&val_scores, &val_set.y, val_sources, positive_weight));
        let val_loss = match (params.validation_loss, &by_source) {
            (ValidationLoss::PerSource, Some(sources)) => sources.mean_of_means(),
            // The tensor form, as every model before the option was chosen by.
            _ => weighted_bce(&val_logits, &y_val, positive_weight)?.to_scalar::<f32>()? as f64,
        };
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / batches as f64,
            val_loss,
            val_auc: super::eval::roc_auc(&val_scores, &val_set.y),
            worst_source_share: by_source.map(|s| s.worst_share(params.validation_loss)),
        };
        on_epoch(&stats);
        epochs_run = epoch;
        let keep = match params.select_epoch {
            EpochSelection::Last => true,
            EpochSelection::Best => best
                .as_ref()
                .is_none_or(|(b, _)| stats.val_loss < b.val_loss),
        };
        if keep {
            let snapshot = vars
                .iter()
                .map(|v| v.as_tensor().copy())
                .collect::<Result<Vec<_>, _>>()?;
            best = Some((stats, snapshot));
            since_best = 0;
        } else {
            since_best += 1;
            // Only `Best` gets here: `Last` keeps every epoch and runs them all.
            if since_best >= params.patience {
                break;
            }
        }
    }
    let (best_stats, weights) = best.expect("at least one epoch ran");
    let mut tensors: HashMap<String, Tensor> = TENSOR_NAMES
        .iter()
        .map(|n| n.to_string())
        .zip(weights)
        .collect();
    if shape.normalized {
        tensors.insert(
            NORM_NAMES[0].into(),
            Tensor::from_slice(&mean, shape.input, &dev)?,
        );
        tensors.insert(
            NORM_NAMES[1].into(),
            Tensor::from_slice(&std, shape.input, &dev)?,
        );
    }
    let report = TrainReport {
        best: best_stats,
        epochs_run,
        train_rows: train_set.len(),
        val_rows: val_set.len(),
        positive_weight,
    };
    Ok((tensors, report))
}

/// Lowers the output bias by the log-odds of `probability`, so the network scores 0.5 where it
/// scored `probability` before: the served model alerts (above 0.5, as the ESCU search does)
/// only where the trained one was that sure. At 0.5 the tensors are returned untouched.
pub fn shift_output_bias(
    mut tensors: HashMap<String, Tensor>,
    probability: f64,
) -> Result<HashMap<String, Tensor>, TrainError> {
    if probability == 0.5 {
        return Ok(tensors);
    }
    if !(probability > 0.0 && probability < 1.0) {
        return Err(TrainError::Data(format!(
            "the alert probability must be above 0 and below 1, not {probability}"
        )));
    }
    let name = TENSOR_NAMES[5];
    let bias = tensors
        .get(name)
        .ok_or_else(|| TrainError::Data(format!("the network has no `{name}`")))?;
    let log_odds = (probability / (1.0 - probability)).ln();
    let shifted = (bias - log_odds)?;
    tensors.insert(name.to_string(), shifted);
    Ok(tensors)
}

/// A rayon pool of one thread for the optimiser's steps (see `train`): rayon work started
/// inside it (candle's matmuls) runs on that thread instead of being split over the cores. Each
/// training has its own, so trainings side by side (the tests run several) do not wait for
/// one another's thread.
fn serial_pool() -> Result<rayon::ThreadPool, TrainError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "dnsexfil-train".into())
        .build()
        .map_err(|e| TrainError::Data(format!("cannot start the training thread: {e}")))
}

/// One network computing the mean of the members' logits: the first layers side by side, the
/// second layers block-diagonal (each member's second layer sees only its own first layer), the
/// output layer's weights concatenated and divided by the member count, its bias averaged. The
/// members must share their input standardisation (they were trained on the same rows).
pub fn merge_members(
    members: &[HashMap<String, Tensor>],
) -> Result<HashMap<String, Tensor>, TrainError> {
    let k = members.len();
    if k == 0 {
        return Err(TrainError::Data("no member networks to merge".into()));
    }
    let values =
        |m: &HashMap<String, Tensor>, name: &str| -> Result<(Vec<f32>, Vec<usize>), TrainError> {
            let t = m
                .get(name)
                .ok_or_else(|| TrainError::Data(format!("member network lacks `{name}`")))?;
            Ok((t.flatten_all()?.to_vec1::<f32>()?, t.dims().to_vec()))
        };
    let (_, w1_dims) = values(&members[0], "layer_1.weight")?;
    let (_, w2_dims) = values(&members[0], "layer_2.weight")?;
    let (h1, input, h2) = (w1_dims[0], w1_dims[1], w2_dims[0]);
    let dev = Device::Cpu;
    let mut merged = HashMap::new();
    for name in NORM_NAMES {
        if let Some(first) = members[0].get(name) {
            let first_values = first.to_vec1::<f32>()?;
            for m in &members[1..] {
                if values(m, name)?.0 != first_values {
                    return Err(TrainError::Data(format!(
                        "member networks standardise their input differently (`{name}`)"
                    )));
                }
            }
            merged.insert(name.to_string(), first.clone());
        }
    }
    let (mut w1, mut b1, mut b2) = (Vec::new(), Vec::new(), Vec::new());
    let mut w2 = vec![0f32; k * h2 * k * h1];
    let mut w_out = Vec::with_capacity(k * h2);
    let mut b_out = 0f32;
    for (i, m) in members.iter().enumerate() {
        let (layer_1, dims) = values(m, "layer_1.weight")?;
        let (layer_2, dims_2) = values(m, "layer_2.weight")?;
        if dims != w1_dims || dims_2 != w2_dims {
            return Err(TrainError::Data("member networks differ in shape".into()));
        }
        w1.extend_from_slice(&layer_1);
        b1.extend(values(m, "layer_1.bias")?.0);
        for r in 0..h2 {
            let row = (i * h2 + r) * k * h1 + i * h1;
            w2[row..row + h1].copy_from_slice(&layer_2[r * h1..(r + 1) * h1]);
        }
        b2.extend(values(m, "layer_2.bias")?.0);
        w_out.extend(
            values(m, "layer_out.weight")?
                .0
                .iter()
                .map(|w| w / k as f32),
        );
        b_out += values(m, "layer_out.bias")?.0[0] / k as f32;
    }
    let mut put = |name: &str, v: Vec<f32>, dims: &[usize]| -> Result<(), TrainError> {
        merged.insert(name.to_string(), Tensor::from_vec(v, dims, &dev)?);
        Ok(())
    };
    put("layer_1.weight", w1, &[k * h1, input])?;
    put("layer_1.bias", b1, &[k * h1])?;
    put("layer_2.weight", w2, &[k * h2, k * h1])?;
    put("layer_2.bias", b2, &[k * h2])?;
    put("layer_out.weight", w_out, &[1, k * h2])?;
    put("layer_out.bias", vec![b_out], &[1])?;
    Ok(merged)
}

fn check_dataset(what: &str, d: &Dataset, width: usize) -> Result<(), TrainError> {
    if d.width != width {
        return Err(TrainError::Data(format!(
            "{what} rows have {} features where the network takes {width}",
            d.width
        )));
    }
    if let Some(bad) = d.y.iter().find(|&&v| v != 0.0 && v != 1.0) {
        return Err(TrainError::Data(format!(
            "{what} labels must be 0 or 1, found {bad}"
        )));
    }
    let positives = d.positives();
    if positives == 0 || positives == d.len() {
        return Err(TrainError::Data(format!(
            "the {what} rows hold a single class ({positives} of {} labelled 1); training needs both malicious (1) and benign (0) rows",
            d.len()
        )));
    }
    if d.x.iter().any(|v| !v.is_finite()) {
        return Err(TrainError::Data(format!(
            "{what} features hold NaN or infinite values"
        )));
    }
    Ok(())
}

/// Per-feature mean and standard deviation of the training rows (1 where a feature is constant).
fn standardisation(d: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let n = d.len() as f64;
    let mut mean = vec![0f64; d.width];
    for row in d.x.chunks(d.width) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d.width];
    for row in d.x.chunks(d.width) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    let std = var
        .iter()
        .map(|s| (s / n).sqrt())
        .map(|s| if s < 1e-6 { 1.0 } else { s as f32 })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// One `[len]` vector of a starting model, e.g. its standardisation.
fn start_vector(
    tensors: &HashMap<String, Tensor>,
    name: &str,
    len: usize,
) -> Result<Vec<f32>, TrainError> {
    let t = tensors
        .get(name)
        .ok_or_else(|| TrainError::Data(format!("the starting model has no `{name}` tensor")))?;
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if v.len() != len {
        return Err(TrainError::Data(format!(
            "the starting model's `{name}` has {} values where the network takes {len}",
            v.len()
        )));
    }
    Ok(v)
}

/// The layers of a starting model, as trainable copies (the model itself stays untouched, so
/// requests still scoring with it see no change).
fn start_layers(
    tensors: &HashMap<String, Tensor>,
    shape: MlpShape,
) -> Result<Vec<Var>, TrainError> {
    let mut vars = Vec::with_capacity(TENSOR_NAMES.len());
    for (name, dims) in shape.tensor_shapes().into_iter().take(TENSOR_NAMES.len()) {
        let t = tensors.get(name).ok_or_else(|| {
            TrainError::Data(format!("the starting model has no `{name}` tensor"))
        })?;
        if t.dims() != dims.as_slice() {
            return Err(TrainError::Data(format!(
                "the starting model's `{name}` has shape {:?} where the network needs {dims:?}",
                t.dims()
            )));
        }
        vars.push(Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?);
    }
    Ok(vars)
}

/// PyTorch's default initialisation of a Linear layer: uniform in ±1/sqrt(fan_in).
fn init_layers(shape: MlpShape, rng: &mut SplitMix64) -> candle_core::Result<Vec<Var>> {
    let mut vars = Vec::with_capacity(6);
    for (_, dims) in shape.tensor_shapes().into_iter().take(TENSOR_NAMES.len()) {
        let fan_in = if dims.len() == 2 { dims[1] } else { 0 };
        // Biases take the fan-in of their weight, which precedes them.
        let fan_in = if fan_in == 0 {
            vars.last().map(|w: &Var| w.dims()[1]).unwrap_or(1)
        } else {
            fan_in
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let count: usize = dims.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound)
            .collect();
        vars.push(Var::from_tensor(&Tensor::from_vec(
            values,
            dims,
            &Device::Cpu,
        )?)?);
    }
    Ok(vars)
}

/// Mean binary cross-entropy on logits, positives weighted by `positive_weight`, in the
/// numerically stable form `max(z, 0) - z*y + ln(1 + exp(-|z|))`.
fn weighted_bce(z: &Tensor, y: &Tensor, positive_weight: f64) -> candle_core::Result<Tensor> {
    let per_row = ((z.relu()? - (z * y)?)? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    let weights = y.affine(positive_weight - 1.0, 1.0)?;
    (per_row * &weights)?
        .sum_all()?
        .div(&weights.sum_all()?)?
        .to_dtype(DType::F32)
}

/// Validation loss summed per source: (sum of weighted row losses, sum of row weights).
#[derive(Debug, Clone, PartialEq)]
struct SourceLosses(Vec<(f64, f64)>);

impl SourceLosses {
    /// Each source's weighted mean row loss (sources with rows only).
    fn means(&self) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|(l, w)| l / w)
            .collect()
    }

    /// The mean over sources of each source's weighted mean row loss.
    fn mean_of_means(&self) -> f64 {
        let means = self.means();
        means.iter().sum::<f64>() / means.len() as f64
    }

    /// The worst source's share of the validation loss `how` computes: of the rows' summed
    /// loss, or of the sum of the sources' mean losses.
    fn worst_share(&self, how: ValidationLoss) -> f64 {
        let losses: Vec<f64> = match how {
            ValidationLoss::Rows => self.0.iter().map(|(l, _)| *l).collect(),
            ValidationLoss::PerSource => self.means(),
        };
        let total: f64 = losses.iter().sum();
        let worst = losses.iter().copied().fold(0.0, f64::max);
        if total > 0.0 {
            worst / total
        } else {
            0.0
        }
    }
}

/// Binary cross-entropy of each row from its logit, positives weighted by `positive_weight`,
/// summed per source (`sources[i]` is row i's), in f64.
fn source_losses(logits: &[f32], y: &[f32], sources: &[u32], positive_weight: f64) -> SourceLosses {
    let count = sources.iter().max().map_or(0, |&s| s as usize + 1);
    let mut sums = vec![(0.0, 0.0); count];
    for ((&z, &y), &s) in logits.iter().zip(y).zip(sources) {
        let (z, y) = (z as f64, y as f64);
        let loss = z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
        let weight = if y == 1.0 { positive_weight } else { 1.0 };
        let sum = &mut sums[s as usize];
        sum.0 += weight * loss;
        sum.1 += weight;
    }
    SourceLosses(sums)
}

fn shuffle(order: &mut [u32], rng: &mut SplitMix64) {
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(seed: u64, n: usize) -> Dataset {
        // Label 1 when the first feature is large; the second is noise.
        let mut rng = SplitMix64::new(seed);
        let mut d = Dataset::new(2);
        for _ in 0..n {
            let a = rng.below(1000) as f32 / 100.0;
            let b = rng.below(1000) as f32 / 100.0;
            d.push(&[a, b], (a > 7.0) as u8 as f32);
        }
        d
    }

    #[test]
    fn alerting_at_a_probability_lowers_the_output_bias_by_its_log_odds() {
        let bias = |t: &HashMap<String, Tensor>| -> f32 {
            t[TENSOR_NAMES[5]]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        let tensors = || {
            HashMap::from([(
                TENSOR_NAMES[5].to_string(),
                Tensor::new(&[0.25f32], &Device::Cpu).unwrap(),
            )])
        };
        let shifted = shift_output_bias(tensors(), 0.9).unwrap();
        assert!((bias(&shifted) - (0.25 - 9f32.ln())).abs() < 1e-6);
        // A logit that scored 0.9 now scores 0.5; one that scored 0.5 now 0.1.
        let sigmoid = |z: f32| 1.0 / (1.0 + (-z).exp());
        assert!((sigmoid(9f32.ln() + bias(&shifted) - 0.25) - 0.5).abs() < 1e-6);
        assert!((sigmoid(bias(&shifted) - 0.25) - 0.1).abs() < 1e-6);
        assert_eq!(bias(&shift_output_bias(tensors(), 0.5).unwrap()), 0.25);
        for bad in [0.0, 1.0, f64::NAN] {
            assert!(shift_output_bias(tensors(), bad).is_err(), "{bad}");
        }
        assert!(
            shift_output_bias(HashMap::new(), 0.9).is_err(),
            "no output layer"
        );
    }

    #[test]
    fn learns_a_separable_problem_and_is_deterministic() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let params = TrainParams {
            epochs: 30,
            learning_rate: 1e-2,
            batch_size: 32,
            ..Default::default()
        };
        let (a, report) = train(
            shape,
            &toy(1, 600),
            &toy(2, 200),
            &[],
            &params,
            None,
            |_| {},
        )
        .unwrap();
        assert!(report.best.val_auc > 0.98, "{report:?}");
        let (b, _) = train(
            shape,
            &toy(1, 600),
            &toy(2, 200),
            &[],
            &params,
            None,
            |_| {},
        )
        .unwrap();
        for name in TENSOR_NAMES {
            assert_eq!(
                a[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn constrained_training_learns_through_the_evidence_part_and_keeps_its_constraints() {
        // The label depends on feature 0 alone; the evidence part reads only feature 0, and
        // the context part reads only feature 1 (noise): only the evidence part can learn.
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let constraints = crate::model::monotone::WeightConstraints::evidence_split(
            shape,
            &crate::model::monotone::EvidenceSplit {
                evidence: vec![0],
                hidden_from_context: vec![],
                evidence_units: (2, 1),
            },
        )
        .unwrap();
        let params = TrainParams {
            epochs: 30,
            learning_rate: 1e-2,
            batch_size: 32,
            constraints: Some(constraints),
            ..Default::default()
        };
        let (t, report) = train(
            shape,
            &toy(1, 600),
            &toy(2, 200),
            &[],
            &params,
            None,
            |_| {},
        )
        .unwrap();
        assert!(report.best.val_auc > 0.98, "{report:?}");
        let w = |n: &str| t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (w1, w2, w3) = (w(TENSOR_NAMES[0]), w(TENSOR_NAMES[2]), w(TENSOR_NAMES[4]));
        // Layer 1 is [8, 2]: context units 0..6 never read feature 0; evidence units 6..8
        // read it non-negatively and never read feature 1.
        for unit in 0..8 {
            if unit < 6 {
                assert_eq!(w1[unit * 2], 0.0);
            } else {
                assert!(w1[unit * 2] >= 0.0);
                assert_eq!(w1[unit * 2 + 1], 0.0);
            }
        }
        // Layer 2 is [4, 8], block-diagonal; the output's evidence weight is non-negative.
        for unit in 0..4 {
            for from in 0..8 {
                let v = w2[unit * 8 + from];
                if (unit < 3) != (from < 6) {
                    assert_eq!(v, 0.0, "layer 2 [{unit}, {from}]");
                } else if unit == 3 {
                    assert!(v >= 0.0);
                }
            }
        }
        assert!(w3[3] >= 0.0);
    }

    #[test]
    fn a_hidden_group_is_hidden_from_the_share_of_training_rows_asked() {
        // Column 0 decides the label: hidden from every training row, nothing is learnt; from
        // half of them, the other half still teaches it.
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let loss = |share: f64| {
            let params = TrainParams {
                epochs: 20,
                learning_rate: 1e-2,
                batch_size: 32,
                hidden_group: Some(HiddenGroup {
                    columns: vec![0],
                    share,
                }),
                ..Default::default()
            };
            let (_, report) = train(
                shape,
                &toy(1, 600),
                &toy(2, 200),
                &[],
                &params,
                None,
                |_| {},
            )
            .unwrap();
            report.best.val_loss
        };
        // (Not the AUC: column 0's first-layer weights keep their random start when it is
        // always hidden, and a random projection of the one deciding column ranks rows well.)
        let (never_seen, half_seen) = (loss(1.0), loss(0.5));
        assert!(
            never_seen > 2.0 * half_seen,
            "{never_seen} hidden, {half_seen} half hidden"
        );
    }

    /// `toy` with every label flipped: training on `toy` makes its loss rise epoch after epoch.
    fn flipped(seed: u64, n: usize) -> Dataset {
        let mut d = toy(seed, n);
        d.y.iter_mut().for_each(|y| *y = 1.0 - *y);
        d
    }

    #[test]
    fn selecting_the_last_epoch_runs_every_epoch_and_keeps_its_weights() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let best = TrainParams {
            epochs: 6,
            learning_rate: 1e-2,
            batch_size: 32,
            patience: 2,
            ..Default::default()
        };
        let last = TrainParams {
            select_epoch: EpochSelection::Last,
            ..best.clone()
        };
        // A validation set the training makes worse: `best` keeps epoch 1 and stops at 3.
        let val = flipped(2, 200);
        let mut losses = Vec::new();
        let (_, report) = train(shape, &toy(1, 600), &val, &[], &best, None, |e| {
            losses.push(e.val_loss)
        })
        .unwrap();
        assert_eq!((report.best.epoch, report.epochs_run), (1, 3), "{losses:?}");
        let mut stats = Vec::new();
        let (kept, report) = train(shape, &toy(1, 600), &val, &[], &last, None, |e| {
            stats.push(e.clone())
        })
        .unwrap();
        assert_eq!((report.best.epoch, report.epochs_run), (6, 6), "{stats:?}");
        assert_eq!(report.best, stats[5]);
        assert!(stats[5].val_loss > stats[0].val_loss, "{stats:?}");
        // The weights kept are the sixth epoch's: they score the validation rows with its loss,
        // not the first epoch's.
        let vb = candle_nn::VarBuilder::from_tensors(kept.clone(), DType::F32, &Device::Cpu);
        let x = Tensor::from_slice(&val.x, (val.len(), 2), &Device::Cpu).unwrap();
        let y = Tensor::from_slice(&val.y, val.len(), &Device::Cpu).unwrap();
        let logits = Mlp::new(vb, shape).unwrap().training_logits(&x).unwrap();
        let loss = weighted_bce(&logits, &y, report.positive_weight)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (loss - stats[5].val_loss).abs() < 1e-4 * stats[5].val_loss,
            "kept weights' loss {loss}, epochs {stats:?}"
        );
        // Validation never steers `last`: another validation set, the same weights.
        let (other, _) =
            train(shape, &toy(1, 600), &toy(3, 100), &[], &last, None, |_| {}).unwrap();
        for name in TENSOR_NAMES {
            assert_eq!(
                kept[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                other[name].flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn per_source_loss_weighs_every_source_alike() {
        // Logit 0 costs ln 2 whatever the label; a benign row at logit ln 3 costs ln 4.
        let ln2 = std::f64::consts::LN_2;
        let logits = [0.0, 0.0, 0.0, 3f32.ln()];
        let y = [1.0, 0.0, 0.0, 0.0];
        // Source 0 has three rows, source 2 one (numbers need not be contiguous).
        let sources = [0, 0, 0, 2];
        let s = source_losses(&logits, &y, &sources, 1.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        // Rows: (3 ln 2 + 2 ln 2) / 4; per source: (ln 2 + 2 ln 2) / 2.
        assert!(close(s.mean_of_means(), 1.5 * ln2), "{s:?}");
        assert!(close(s.worst_share(ValidationLoss::Rows), 0.6), "{s:?}");
        assert!(
            close(s.worst_share(ValidationLoss::PerSource), 2.0 / 3.0),
            "{s:?}"
        );
        let rows = |pw: f64| {
            let z = Tensor::from_slice(&logits, 4, &Device::Cpu).unwrap();
            let y = Tensor::from_slice(&y, 4, &Device::Cpu).unwrap();
            weighted_bce(&z, &y, pw)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        assert!(close(rows(1.0), 1.25 * ln2));
        // A positive weight counts within its source: source 0 is (3 ln 2 + ln 2 + ln 2) /
        // (3 + 1 + 1) = ln 2 again; source 2 stays 2 ln 2.
        let weighted = source_losses(&logits, &y, &sources, 3.0);
        assert!(close(weighted.mean_of_means(), 1.5 * ln2), "{weighted:?}");
        // Summed over sources, the weighted losses are the row loss training reports by default.
        let total: (f64, f64) = weighted
            .0
            .iter()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!(close(total.0 / total.1, rows(3.0)), "{weighted:?}");
    }

    #[test]
    fn the_validation_loss_is_per_source_only_when_asked() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let params = TrainParams {
            epochs: 3,
            learning_rate: 1e-2,
            batch_size: 32,
            select_epoch: EpochSelection::Last,
            ..Default::default()
        };
        let per_source = TrainParams {
            validation_loss: ValidationLoss::PerSource,
            ..params.clone()
        };
        // 200 validation rows: a large source and one of five rows with flipped labels.
        let mut val = toy(2, 200);
        for y in &mut val.y[195..] {
            *y = 1.0 - *y;
        }
        let sources: Vec<u32> = (0..200).map(|i| (i >= 195) as u32).collect();
        let run = |params: &TrainParams, sources: &[u32]| {
            let mut stats = Vec::new();
            train(shape, &toy(1, 600), &val, sources, params, None, |e| {
                stats.push(e.clone())
            })
            .map(|_| stats)
        };
        let rows_unknown = run(&params, &[]).unwrap();
        let rows_known = run(&params, &sources).unwrap();
        let by_source = run(&per_source, &sources).unwrap();
        for ((a, b), c) in rows_unknown.iter().zip(&rows_known).zip(&by_source) {
            // Knowing the sources changes nothing by default, beyond reporting the worst one.
            assert_eq!(a.val_loss, b.val_loss);
            assert_eq!(
                (a.worst_source_share, b.worst_source_share.is_some()),
                (None, true)
            );
            // The same training (`last`), but the five flipped rows, 2.5% of the rows' loss
            // weight, carry half the per-source loss's weight and more than half of it.
            assert!(c.val_loss > b.val_loss, "{a:?} {c:?}");
            assert!(c.worst_source_share.unwrap() > 0.5, "{c:?}");
        }
        let e = run(&per_source, &[]).unwrap_err();
        assert!(e.to_string().contains("per-source"), "{e}");
        let e = run(&params, &sources[1..]).unwrap_err();
        assert!(e.to_string().contains("199 validation sources"), "{e}");
    }

    #[test]
    fn merged_members_score_the_mean_of_their_logits() {
        use super::super::mlp::{sigmoid, Mlp};
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let mlp = |tensors: HashMap<String, Tensor>, shape: MlpShape| {
            let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
            Mlp::new(vb, shape).unwrap()
        };
        let members: Vec<_> = (0..3)
            .map(|seed| {
                let params = TrainParams {
                    epochs: 3,
                    learning_rate: 1e-2,
                    batch_size: 32,
                    seed,
                    ..Default::default()
                };
                train(
                    shape,
                    &toy(1, 300),
                    &toy(2, 100),
                    &[],
                    &params,
                    None,
                    |_| {},
                )
                .unwrap()
                .0
            })
            .collect();
        let merged = merge_members(&members).unwrap();
        let wide = MlpShape {
            hidden_1: 24,
            hidden_2: 12,
            ..shape
        };
        let rows = toy(3, 50);
        let scores = mlp(merged, wide).predict(&rows.x, rows.len()).unwrap();
        let per_member: Vec<Vec<f32>> = members
            .into_iter()
            .map(|m| mlp(m, shape).predict(&rows.x, rows.len()).unwrap())
            .collect();
        let logit = |p: f32| (p / (1.0 - p)).ln();
        for (i, score) in scores.iter().enumerate() {
            let mean = per_member.iter().map(|m| logit(m[i])).sum::<f32>() / 3.0;
            assert!(
                (score - sigmoid(mean)).abs() < 1e-5,
                "row {i}: merged {score}, mean of members {}",
                sigmoid(mean)
            );
        }
        // The members differ, so the check above is not one network compared with itself.
        assert!(per_member[0] != per_member[1]);
    }

    #[test]
    fn fine_tuning_starts_from_the_given_weights_and_keeps_their_standardisation() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 8,
            hidden_2: 4,
            normalized: true,
        };
        let params = TrainParams {
            epochs: 20,
            learning_rate: 1e-2,
            batch_size: 32,
            ..Default::default()
        };
        let (base, _) = train(
            shape,
            &toy(1, 600),
            &toy(2, 200),
            &[],
            &params,
            None,
            |_| {},
        )
        .unwrap();
        // Different data (other seeds), one gentle epoch: the result stays next to the base.
        let gentle = TrainParams {
            epochs: 1,
            learning_rate: 1e-5,
            ..params.clone()
        };
        let (tuned, report) = train(
            shape,
            &toy(3, 300),
            &toy(4, 100),
            &[],
            &gentle,
            Some(&base),
            |_| {},
        )
        .unwrap();
        assert!(report.best.val_auc > 0.98, "{report:?}");
        let values = |t: &HashMap<String, Tensor>, n: &str| {
            t[n].flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        for name in NORM_NAMES {
            assert_eq!(values(&tuned, name), values(&base, name), "{name}");
        }
        for name in TENSOR_NAMES {
            let (a, b) = (values(&tuned, name), values(&base, name));
            let moved = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(moved > 0.0 && moved < 1e-3, "{name} moved by {moved}");
        }
        // A network without standardisation gets none.
        let raw = MlpShape {
            normalized: false,
            ..shape
        };
        let (t, _) = train(raw, &toy(1, 200), &toy(2, 100), &[], &params, None, |_| {}).unwrap();
        assert!(!t.contains_key(NORM_NAMES[0]));
    }

    #[test]
    fn bad_data_is_refused_with_a_reason() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 4,
            hidden_2: 2,
            normalized: true,
        };
        let mut one_class = Dataset::new(2);
        one_class.push(&[1.0, 2.0], 0.0);
        let e = train(
            shape,
            &one_class,
            &toy(2, 50),
            &[],
            &TrainParams::default(),
            None,
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("single class"), "{e}");
        let mut bad_label = toy(1, 50);
        bad_label.y[0] = 2.0;
        let e = train(
            shape,
            &bad_label,
            &toy(2, 50),
            &[],
            &TrainParams::default(),
            None,
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be 0 or 1"), "{e}");
        let limit = TrainParams {
            time_limit: Some(Duration::ZERO),
            ..Default::default()
        };
        let e = train(shape, &toy(1, 50), &toy(2, 50), &[], &limit, None, |_| {}).unwrap_err();
        assert!(matches!(e, TrainError::TimeLimit(_)), "{e}");
        static STOPPING: AtomicBool = AtomicBool::new(false);
        let stoppable = TrainParams {
            stop_when: Some(&STOPPING),
            ..Default::default()
        };
        // Not set: trains as usual.
        assert!(train(
            shape,
            &toy(1, 50),
            &toy(2, 50),
            &[],
            &stoppable,
            None,
            |_| {}
        )
        .is_ok());
        STOPPING.store(true, Ordering::Relaxed);
        let e = train(
            shape,
            &toy(1, 50),
            &toy(2, 50),
            &[],
            &stoppable,
            None,
            |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, TrainError::Stopped), "{e}");
    }
}
