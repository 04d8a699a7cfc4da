//! The network: three fully connected layers with ReLU, run in candle on the CPU.
//!
//! Tensor names mirror the PyTorch state_dict of the published model (`layer_1.weight`, ...), so a
//! converted artifact loads without renaming. Sigmoid is applied on the host with PyTorch's float32
//! formula `1 / (1 + exp(-z))`, which saturates to exactly 0.0 and 1.0 the way the stock model does.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

/// Names of the network's layer tensors, in state_dict order.
pub const TENSOR_NAMES: [&str; 6] = [
    "layer_1.weight",
    "layer_1.bias",
    "layer_2.weight",
    "layer_2.bias",
    "layer_out.weight",
    "layer_out.bias",
];

/// Input standardisation of our own models: `x' = (x - mean) / std`, per feature.
pub const NORM_NAMES: [&str; 2] = ["norm.mean", "norm.std"];

/// Layer sizes of an MLP `input -> hidden_1 -> hidden_2 -> 1`, optionally standardising its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpShape {
    pub input: usize,
    pub hidden_1: usize,
    pub hidden_2: usize,
    pub normalized: bool,
}

impl MlpShape {
    /// The published ESCU network: 98 -> 128 -> 128 -> 1.
    pub const ESCU: MlpShape = MlpShape {
        input: 98,
        hidden_1: 128,
        hidden_2: 128,
        normalized: false,
    };

    /// Our dnsexfil-v2 network: 30 standardised features -> 64 -> 32 -> 1.
    pub const V2: MlpShape = MlpShape {
        input: 30,
        hidden_1: 64,
        hidden_2: 32,
        normalized: true,
    };

    /// Our dnsexfil-v3 network: 48 standardised features -> 64 -> 32 -> 1.
    pub const V3: MlpShape = MlpShape {
        input: 48,
        hidden_1: 64,
        hidden_2: 32,
        normalized: true,
    };

    /// Our dnsexfil-v4 network: 50 standardised features -> 64 -> 32 -> 1.
    pub const V4: MlpShape = MlpShape {
        input: 50,
        hidden_1: 64,
        hidden_2: 32,
        normalized: true,
    };

    /// Our dnsexfil-v5 network: 54 standardised features -> 64 -> 32 -> 1.
    pub const V5: MlpShape = MlpShape {
        input: 54,
        hidden_1: 64,
        hidden_2: 32,
        normalized: true,
    };

    /// Expected name and shape of each tensor, layers first in [`TENSOR_NAMES`] order.
    pub fn tensor_shapes(&self) -> Vec<(&'static str, Vec<usize>)> {
        let MlpShape {
            input,
            hidden_1,
            hidden_2,
            normalized,
        } = *self;
        let mut shapes = vec![
            (TENSOR_NAMES[0], vec![hidden_1, input]),
            (TENSOR_NAMES[1], vec![hidden_1]),
            (TENSOR_NAMES[2], vec![hidden_2, hidden_1]),
            (TENSOR_NAMES[3], vec![hidden_2]),
            (TENSOR_NAMES[4], vec![1, hidden_2]),
            (TENSOR_NAMES[5], vec![1]),
        ];
        if normalized {
            shapes.push((NORM_NAMES[0], vec![input]));
            shapes.push((NORM_NAMES[1], vec![input]));
        }
        shapes
    }
}

pub struct Mlp {
    shape: MlpShape,
    /// (mean, std) as `[1, input]` rows, for standardised inputs.
    norm: Option<(Tensor, Tensor)>,
    layer_1: Dense,
    layer_2: Dense,
    layer_out: Dense,
    /// The same network as plain arrays, for [`Mlp::predict`]'s own forward pass.
    direct: Direct,
}

/// Batches of at least this many rows multiply by a transposed copy of each weight matrix.
///
/// `Linear` multiplies by a transposed view of `[out, in]` weights, which gemm reads column by
/// column; below a few dozen rows it does not pack them, and that strided reading was a third of
/// a small forward pass (20 rows: about 30% faster per layer with the copy; from about 1,000 rows
/// no difference). The copy changes no bits from 9 rows up: gemm runs the same kernels, in the
/// same order. Below that (1 to 8 rows, depending on the layer) it takes other paths whose bits
/// differ, so those batches keep `Linear`: every batch scores exactly as with `Linear` alone.
/// (A row's last bits may still differ between batch sizes, through gemm's blocking, as they
/// always did with `Linear`.)
pub const TRANSPOSED_MIN_ROWS: usize = 16;

/// One fully connected layer: candle's `Linear`, plus its weights transposed once at load.
struct Dense {
    linear: Linear,
    /// `[in, out]`, contiguous.
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(linear: Linear) -> candle_core::Result<Self> {
        let weight_t = linear.weight().t()?.contiguous()?;
        let bias = linear
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("a layer has no bias".into()))?
            .clone();
        Ok(Self {
            linear,
            weight_t,
            bias,
        })
    }

    fn forward(&self, x: &Tensor, transposed: bool) -> candle_core::Result<Tensor> {
        if transposed {
            x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
        } else {
            self.linear.forward(x)
        }
    }
}

/// A layer's weights as `[in, out]` row-major floats and its bias.
struct DirectLayer {
    inputs: usize,
    outputs: usize,
    weight_t: Vec<f32>,
    bias: Vec<f32>,
}

impl DirectLayer {
    fn new(dense: &Dense) -> candle_core::Result<Self> {
        let (inputs, outputs) = dense.weight_t.dims2()?;
        Ok(Self {
            inputs,
            outputs,
            weight_t: dense.weight_t.flatten_all()?.to_vec1::<f32>()?,
            bias: dense.bias.to_vec1::<f32>()?,
        })
    }

    /// `out = x W^T + b` for `rows` rows of `x`, then ReLU when `relu`: the bias is written
    /// first and gemm adds the product to it, one rounding as in candle's matmul then add.
    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], relu: bool) {
        debug_assert_eq!(x.len(), rows * self.inputs);
        debug_assert_eq!(out.len(), rows * self.outputs);
        for row in out.chunks_exact_mut(self.outputs) {
            row.copy_from_slice(&self.bias);
        }
        // SAFETY: the pointers and strides describe `x` ([rows, inputs]), `weight_t` ([inputs,
        // outputs]) and `out` ([rows, outputs]), all row-major and of those exact lengths.
        unsafe {
            gemm::gemm(
                rows,
                self.outputs,
                self.inputs,
                out.as_mut_ptr(),
                1,
                self.outputs as isize,
                true,
                x.as_ptr(),
                1,
                self.inputs as isize,
                self.weight_t.as_ptr(),
                1,
                self.outputs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        if relu {
            for v in out.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }
}

/// The network without candle: blocks of rows go through all three layers while their
/// activations are still in cache, one block per core at a time, with no matrix the size of the
/// batch allocated or written. A batch run as one block gives candle's bits; in blocks, a row's
/// last bits can differ, as they do in candle between batch sizes (gemm's blocking).
struct Direct {
    /// (mean, std) per feature, for standardised inputs.
    norm: Option<(Vec<f32>, Vec<f32>)>,
    layers: [DirectLayer; 3],
}

/// Rows per block of the direct forward pass: the activations of a block (about 1 KiB a row
/// for the ESCU network) stay in a core's L2 cache.
pub const DIRECT_BLOCK_ROWS: usize = 256;

impl Direct {
    fn logits_into(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        let [l1, l2, l3] = &self.layers;
        let standardized;
        let x = match &self.norm {
            Some((mean, std)) => {
                let mut z = x.to_vec();
                for row in z.chunks_exact_mut(l1.inputs) {
                    for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                        *v = (*v - m) / s;
                    }
                }
                standardized = z;
                &standardized[..]
            }
            None => x,
        };
        let mut h1 = vec![0f32; rows * l1.outputs];
        let mut h2 = vec![0f32; rows * l2.outputs];
        l1.forward(x, rows, &mut h1, true);
        l2.forward(&h1, rows, &mut h2, true);
        l3.forward(&h2, rows, out, false);
    }

    /// Logits of `rows` rows of `x`, in blocks of about `block_rows` on the rayon pool.
    fn logits(&self, x: &[f32], rows: usize, block_rows: usize) -> Vec<f32> {
        use rayon::prelude::*;
        let inputs = self.layers[0].inputs;
        let mut out = vec![0f32; rows];
        let mut blocks = Vec::new();
        let (mut rest_out, mut rest_x) = (&mut out[..], x);
        for len in block_lengths(rows, block_rows) {
            let (o, r) = rest_out.split_at_mut(len);
            let (xi, rx) = rest_x.split_at(len * inputs);
            blocks.push((o, xi));
            (rest_out, rest_x) = (r, rx);
        }
        // A block's bits are the same on whichever thread computes it.
        if blocks.len() > 1 && crate::util::pool::may_wait_for_pool() {
            blocks
                .into_par_iter()
                .for_each(|(out, x)| self.logits_into(x, out.len(), out));
        } else {
            for (out, x) in blocks {
                self.logits_into(x, out.len(), out);
            }
        }
        out
    }
}

/// The row counts of the blocks of a batch of `rows`: as equal as can be (they differ by at
/// most one), so that no block is so short that gemm takes a path whose bits differ.
pub(crate) fn block_lengths(rows: usize, block_rows: usize) -> impl Iterator<Item = usize> {
    let blocks = rows.div_ceil(block_rows.max(1)).max(1);
    let (base, extra) = (rows / blocks, rows % blocks);
    (0..blocks).map(move |b| base + usize::from(b < extra))
}

impl Mlp {
    pub fn new(vb: VarBuilder, shape: MlpShape) -> candle_core::Result<Self> {
        let layer_1 = Dense::new(candle_nn::linear(
            shape.input,
            shape.hidden_1,
            vb.pp("layer_1"),
        )?)?;
        let layer_2 = Dense::new(candle_nn::linear(
            shape.hidden_1,
            shape.hidden_2,
            vb.pp("layer_2"),
        )?)?;
        let layer_out = Dense::new(candle_nn::linear(shape.hidden_2, 1, vb.pp("layer_out"))?)?;
        let norm = if shape.normalized {
            let mean = vb
                .get(shape.input, NORM_NAMES[0])?
                .reshape((1, shape.input))?;
            let std = vb
                .get(shape.input, NORM_NAMES[1])?
                .reshape((1, shape.input))?;
            Some((mean, std))
        } else {
            None
        };
        let direct = Direct {
            norm: match &norm {
                Some((mean, std)) => Some((
                    mean.flatten_all()?.to_vec1::<f32>()?,
                    std.flatten_all()?.to_vec1::<f32>()?,
                )),
                None => None,
            },
            layers: [
                DirectLayer::new(&layer_1)?,
                DirectLayer::new(&layer_2)?,
                DirectLayer::new(&layer_out)?,
            ],
        };
        Ok(Self {
            shape,
            norm,
            layer_1,
            layer_2,
            layer_out,
            direct,
        })
    }

    pub fn shape(&self) -> MlpShape {
        self.shape
    }

    /// The network's tensors by state_dict name (with `norm.*` for standardised inputs): what a
    /// fine-tune starts from.
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let layers = [&self.layer_1, &self.layer_2, &self.layer_out];
        for (i, layer) in layers.into_iter().enumerate() {
            out.insert(
                TENSOR_NAMES[2 * i].to_string(),
                layer.linear.weight().clone(),
            );
            out.insert(TENSOR_NAMES[2 * i + 1].to_string(), layer.bias.clone());
        }
        if let Some((mean, std)) = &self.norm {
            out.insert(NORM_NAMES[0].to_string(), mean.flatten_all()?);
            out.insert(NORM_NAMES[1].to_string(), std.flatten_all()?);
        }
        Ok(out)
    }

    /// Logits `[n, 1]` for inputs `[n, input]`.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.logits_with(x, TRANSPOSED_MIN_ROWS)
    }

    /// [`Mlp::logits`], with the transposed weights from `transposed_min_rows` rows (tests
    /// compare with `usize::MAX`: `Linear` alone).
    fn logits_with(&self, x: &Tensor, transposed_min_rows: usize) -> candle_core::Result<Tensor> {
        let standardized;
        let x = match &self.norm {
            Some((mean, std)) => {
                standardized = x.broadcast_sub(mean)?.broadcast_div(std)?;
                &standardized
            }
            None => x,
        };
        let transposed = x.dim(0)? >= transposed_min_rows;
        let h = self.layer_1.forward(x, transposed)?.relu()?;
        let h = self.layer_2.forward(&h, transposed)?.relu()?;
        self.layer_out.forward(&h, transposed)
    }

    /// Logits `[n]` through candle's `Linear` layers alone, which hold the very tensors the
    /// network was built from: built from a `VarMap`, they follow the optimiser's steps, so this
    /// is what training differentiates. (The transposed copies and [`Mlp::predict`]'s arrays are
    /// taken once, at build time: they serve a finished model.)
    pub fn training_logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.logits_with(x, usize::MAX)?.flatten_all()
    }

    /// Probabilities for `rows` feature vectors stored row-major in `values`: one batched forward.
    pub fn predict(&self, values: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        self.predict_with(values, rows, DIRECT_BLOCK_ROWS)
    }

    /// [`Mlp::predict`] with blocks of about `block_rows` rows (benches compare sizes;
    /// `usize::MAX` runs the batch as one block on one core).
    pub fn predict_with(
        &self,
        values: &[f32],
        rows: usize,
        block_rows: usize,
    ) -> candle_core::Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        if values.len() != rows * self.shape.input {
            return Err(candle_core::Error::Msg(format!(
                "{} feature values for {rows} rows of {}",
                values.len(),
                self.shape.input
            )));
        }
        if rows < TRANSPOSED_MIN_ROWS {
            // gemm's paths for a few rows give other bits than candle's `Linear`.
            let x = Tensor::from_slice(values, (rows, self.shape.input), &Device::Cpu)?;
            return self.probabilities(&x);
        }
        let mut logits = self.direct.logits(values, rows, block_rows);
        for z in logits.iter_mut() {
            *z = sigmoid(*z);
        }
        Ok(logits)
    }

    /// The same probabilities through candle's tensors (what [`Mlp::predict`] did before it had
    /// its own forward pass; benches compare the two).
    pub fn predict_candle(&self, values: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(values, (rows, self.shape.input), &Device::Cpu)?;
        self.probabilities(&x)
    }

    /// [`Mlp::predict`] taking the feature vectors by value.
    pub fn predict_owned(&self, values: Vec<f32>, rows: usize) -> candle_core::Result<Vec<f32>> {
        self.predict(&values, rows)
    }

    fn probabilities(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        let logits = self
            .logits(x)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(logits.into_iter().map(sigmoid).collect())
    }
}

/// PyTorch's float32 sigmoid.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_saturates_like_pytorch() {
        assert_eq!(sigmoid(-100.0), 0.0);
        assert_eq!(sigmoid(20.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    /// Random weights in the layout of `shape`, as a model file would hold them.
    fn random_mlp(shape: MlpShape, seed: u64) -> Mlp {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut tensors = HashMap::new();
        for (name, dims) in shape.tensor_shapes() {
            let len = dims.iter().product();
            let mut values: Vec<f32> = (0..len).map(|_| next()).collect();
            if name == NORM_NAMES[1] {
                values.iter_mut().for_each(|v| *v = v.abs() + 0.5);
            }
            tensors.insert(
                name.to_string(),
                Tensor::from_vec(values, dims, &Device::Cpu).unwrap(),
            );
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Mlp::new(vb, shape).unwrap()
    }

    /// `len` values in steps of 0.75 from `offset` (32 steps), from a seeded generator.
    fn feature_like(len: usize, seed: u64, offset: f32) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(2862933555777941757)
                    .wrapping_add(3037000493);
                (state >> 59) as f32 * 0.75 + offset
            })
            .collect()
    }

    #[test]
    fn transposed_weights_change_no_bits_at_any_batch_size() {
        // Batch sizes on both sides of TRANSPOSED_MIN_ROWS, up to ones gemm splits across threads.
        crate::model::fix_candle_threads(2);
        let sizes: Vec<usize> = (1..=80).chain([255, 1_000, 4_100, 10_074]).collect();
        for shape in [MlpShape::ESCU, MlpShape::V2] {
            let mlp = random_mlp(shape, shape.input as u64);
            let rows = *sizes.iter().max().unwrap();
            // Like the features: small non-negative counts, lengths and averages.
            let features = feature_like(rows * shape.input, 99, 0.0);
            for &size in &sizes {
                let x = Tensor::from_slice(
                    &features[..size * shape.input],
                    (size, shape.input),
                    &Device::Cpu,
                )
                .unwrap();
                let bits = |transposed_min_rows| -> Vec<u32> {
                    let logits = mlp.logits_with(&x, transposed_min_rows).unwrap();
                    logits
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|z| z.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(TRANSPOSED_MIN_ROWS),
                    bits(usize::MAX),
                    "{shape:?}: a batch of {size} rows scores differently with transposed weights"
                );
            }
        }
    }

    #[test]
    fn the_direct_forward_pass_agrees_with_candle() {
        crate::model::fix_candle_threads(2);
        let sizes: Vec<usize> = (1..=80).chain([255, 257, 1_000, 4_100, 10_074]).collect();
        for shape in [MlpShape::ESCU, MlpShape::V2, MlpShape::V4] {
            let mlp = random_mlp(shape, shape.input as u64 + 7);
            let rows = *sizes.iter().max().unwrap();
            let features = feature_like(rows * shape.input, 5, -3.0);
            for &size in &sizes {
                let x = &features[..size * shape.input];
                let bits = |p: &[f32]| -> Vec<u32> { p.iter().map(|v| v.to_bits()).collect() };
                let candle = mlp.predict_candle(x, size).unwrap();
                // One block: candle's bits.
                let whole = mlp.predict_with(x, size, usize::MAX).unwrap();
                assert_eq!(bits(&whole), bits(&candle), "{shape:?}: {size} rows");
                // In blocks: candle's bits for each block run as a batch of its own.
                for block_rows in [DIRECT_BLOCK_ROWS, 64, 100] {
                    let blocked = mlp.predict_with(x, size, block_rows).unwrap();
                    let mut by_block = Vec::new();
                    let mut at = 0;
                    for len in block_lengths(size, block_rows) {
                        let b = &x[at * shape.input..(at + len) * shape.input];
                        by_block.extend(mlp.predict_candle(b, len).unwrap());
                        at += len;
                    }
                    assert_eq!(
                        bits(&blocked),
                        bits(&by_block),
                        "{shape:?}: {size} rows in blocks of {block_rows}"
                    );
                }
            }
        }
    }

    #[test]
    fn forward_matches_hand_computation() {
        let shape = MlpShape {
            input: 2,
            hidden_1: 2,
            hidden_2: 1,
            normalized: false,
        };
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert(
            "layer_1.weight".to_string(),
            Tensor::new(&[[1f32, 0.], [0., -1.]], &dev).unwrap(),
        );
        t.insert(
            "layer_1.bias".to_string(),
            Tensor::new(&[0f32, 0.], &dev).unwrap(),
        );
        t.insert(
            "layer_2.weight".to_string(),
            Tensor::new(&[[2f32, 3.]], &dev).unwrap(),
        );
        t.insert(
            "layer_2.bias".to_string(),
            Tensor::new(&[1f32], &dev).unwrap(),
        );
        t.insert(
            "layer_out.weight".to_string(),
            Tensor::new(&[[0.5f32]], &dev).unwrap(),
        );
        t.insert(
            "layer_out.bias".to_string(),
            Tensor::new(&[-1f32], &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        let mlp = Mlp::new(vb, shape).unwrap();
        // x = [3, -2]: h1 = relu([3, 2]) = [3, 2]; h2 = relu(2*3 + 3*2 + 1) = 13; z = 6.5 - 1 = 5.5
        let p = mlp.predict(&[3.0, -2.0], 1).unwrap();
        assert_eq!(p, vec![sigmoid(5.5)]);
    }
}
