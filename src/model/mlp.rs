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
    layer_1: Linear,
    layer_2: Linear,
    layer_out: Linear,
}

impl Mlp {
    pub fn new(vb: VarBuilder, shape: MlpShape) -> candle_core::Result<Self> {
        let layer_1 = candle_nn::linear(shape.input, shape.hidden_1, vb.pp("layer_1"))?;
        let layer_2 = candle_nn::linear(shape.hidden_1, shape.hidden_2, vb.pp("layer_2"))?;
        let layer_out = candle_nn::linear(shape.hidden_2, 1, vb.pp("layer_out"))?;
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
        Ok(Self {
            shape,
            norm,
            layer_1,
            layer_2,
            layer_out,
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
            out.insert(TENSOR_NAMES[2 * i].to_string(), layer.weight().clone());
            let bias = layer
                .bias()
                .ok_or_else(|| candle_core::Error::Msg("a layer has no bias".into()))?;
            out.insert(TENSOR_NAMES[2 * i + 1].to_string(), bias.clone());
        }
        if let Some((mean, std)) = &self.norm {
            out.insert(NORM_NAMES[0].to_string(), mean.flatten_all()?);
            out.insert(NORM_NAMES[1].to_string(), std.flatten_all()?);
        }
        Ok(out)
    }

    /// Logits `[n, 1]` for inputs `[n, input]`.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let standardized;
        let x = match &self.norm {
            Some((mean, std)) => {
                standardized = x.broadcast_sub(mean)?.broadcast_div(std)?;
                &standardized
            }
            None => x,
        };
        let h = self.layer_1.forward(x)?.relu()?;
        let h = self.layer_2.forward(&h)?.relu()?;
        self.layer_out.forward(&h)
    }

    /// Probabilities for `rows` feature vectors stored row-major in `values`: one batched forward.
    pub fn predict(&self, values: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(values, (rows, self.shape.input), &Device::Cpu)?;
        self.probabilities(&x)
    }

    /// [`Mlp::predict`] taking the feature vectors by value: the tensor uses their storage
    /// instead of a copy.
    pub fn predict_owned(&self, values: Vec<f32>, rows: usize) -> candle_core::Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_vec(values, (rows, self.shape.input), &Device::Cpu)?;
        self.probabilities(&x)
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
