//! A network with a part that can only raise its logit as the "channel evidence" features grow.
//!
//! Why: a tunnel moves data, so its source sends many names nobody else sends under one domain;
//! that is evidence whatever the names look like. A plain network learns it only in the
//! contexts training shows: left without a tool, it learnt that a burst of names under a CDN
//! zone is benign at the look-alikes' volumes (tens of names an hour) and kept scoring the
//! tool's hundreds of names there near 0. Here the hidden units are split in two parts:
//! - the *evidence* part reads only the evidence features, with weights that cannot be
//!   negative in any of its layers, so its contribution to the logit never falls as they grow;
//! - the *context* part reads every other feature (shape, popularity, lookup zones, ...) and
//!   none of the evidence or the raw query volume, so it can say "this zone's names are benign"
//!   but not, through those columns, "benign because there are many of them".
//!
//! What this guarantees: the logit is non-decreasing in each evidence column with every other
//! input held fixed. What it does not: a real burst also moves columns the context part reads
//! (the source's distinct names, a pair's share of them, a pair's mean look), so more names can
//! still lower a score through them; and an evidence column that is a share can itself fall
//! as names are added.
//!
//! The logit is the sum of both. The result is still the plain three-layer network of
//! [`super::mlp`]: the split is zeros and signs in its weights, which [`WeightConstraints`]
//! restores after every optimiser step (projected gradient descent), so serving, the model file
//! and member merging are unchanged.

use candle_core::{Tensor, Var};

use super::mlp::MlpShape;

/// Per layer tensor (in [`super::mlp::TENSOR_NAMES`] order): which weights stay (1) or are held
/// at zero (0), and which may not be negative (1).
#[derive(Debug, Clone)]
pub struct WeightConstraints {
    layers: Vec<Option<LayerConstraint>>,
}

#[derive(Debug, Clone)]
struct LayerConstraint {
    keep: Tensor,
    non_negative: Tensor,
}

/// Where the network is split and which inputs feed which part.
#[derive(Debug, Clone)]
pub struct EvidenceSplit {
    /// Input columns the evidence part reads (with non-negative weights).
    pub evidence: Vec<usize>,
    /// Input columns neither part reads (the context part must not see them either, because
    /// they reveal the evidence: e.g. the raw query volume of a pair).
    pub hidden_from_context: Vec<usize>,
    /// Evidence units in the first and second hidden layers (the last ones of each layer).
    pub evidence_units: (usize, usize),
}

impl WeightConstraints {
    /// The constraints of `split` for a network of `shape`.
    pub fn evidence_split(shape: MlpShape, split: &EvidenceSplit) -> Result<Self, String> {
        let (e1, e2) = split.evidence_units;
        if e1 == 0 || e2 == 0 || e1 >= shape.hidden_1 || e2 >= shape.hidden_2 {
            return Err(format!(
                "the evidence part needs 1 to {} first-layer and 1 to {} second-layer units, not {e1} and {e2}",
                shape.hidden_1 - 1,
                shape.hidden_2 - 1
            ));
        }
        if let Some(&c) = split
            .evidence
            .iter()
            .chain(&split.hidden_from_context)
            .find(|&&c| c >= shape.input)
        {
            return Err(format!(
                "input column {c} is outside the network's {} inputs",
                shape.input
            ));
        }
        let c1 = shape.hidden_1 - e1;
        let c2 = shape.hidden_2 - e2;
        // Layer 1, [hidden_1, input]: context rows read all but the evidence and the hidden
        // columns; evidence rows read only the evidence columns, non-negatively.
        let mut keep_1 = vec![0.0; shape.hidden_1 * shape.input];
        let mut pos_1 = vec![0.0; shape.hidden_1 * shape.input];
        for unit in 0..shape.hidden_1 {
            for col in 0..shape.input {
                let is_evidence = split.evidence.contains(&col);
                let at = unit * shape.input + col;
                if unit < c1 {
                    keep_1[at] =
                        f32::from(!is_evidence && !split.hidden_from_context.contains(&col));
                } else if is_evidence {
                    keep_1[at] = 1.0;
                    pos_1[at] = 1.0;
                }
            }
        }
        // Layer 2, [hidden_2, hidden_1]: block-diagonal; the evidence block non-negative.
        let mut keep_2 = vec![0.0; shape.hidden_2 * shape.hidden_1];
        let mut pos_2 = vec![0.0; shape.hidden_2 * shape.hidden_1];
        for unit in 0..shape.hidden_2 {
            for from in 0..shape.hidden_1 {
                let at = unit * shape.hidden_1 + from;
                if (unit < c2) == (from < c1) {
                    keep_2[at] = 1.0;
                    pos_2[at] = f32::from(unit >= c2);
                }
            }
        }
        // Output, [1, hidden_2]: the evidence units' weights non-negative.
        let keep_3 = vec![1.0; shape.hidden_2];
        let pos_3 = (0..shape.hidden_2)
            .map(|u| f32::from(u >= c2))
            .collect::<Vec<_>>();
        // Made once, on the CPU where training runs, not at every step.
        let layer = |keep: Vec<f32>, non_negative: Vec<f32>, dims: (usize, usize)| {
            let tensor = |v: Vec<f32>| Tensor::from_vec(v, dims, &candle_core::Device::Cpu);
            Ok::<_, candle_core::Error>(Some(LayerConstraint {
                keep: tensor(keep)?,
                non_negative: tensor(non_negative)?,
            }))
        };
        let layers = (|| {
            Ok::<_, candle_core::Error>(vec![
                layer(keep_1, pos_1, (shape.hidden_1, shape.input))?,
                None,
                layer(keep_2, pos_2, (shape.hidden_2, shape.hidden_1))?,
                None,
                layer(keep_3, pos_3, (1, shape.hidden_2))?,
                None,
            ])
        })()
        .map_err(|e| e.to_string())?;
        Ok(Self { layers })
    }

    /// Projects the layer tensors `vars` (in [`super::mlp::TENSOR_NAMES`] order) back onto the
    /// constraints: held weights to zero, negative constrained weights to zero.
    pub fn project(&self, vars: &[Var]) -> candle_core::Result<()> {
        for (var, constraint) in vars.iter().zip(&self.layers) {
            let Some(c) = constraint else { continue };
            let kept = var.as_tensor().mul(&c.keep)?;
            // w + non_negative * max(-w, 0): negative constrained entries become 0.
            let projected = (&kept + kept.neg()?.relu()?.mul(&c.non_negative)?)?;
            var.set(&projected)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mlp::MlpShape;
    use crate::util::rng::SplitMix64;
    use candle_core::Device;

    const SHAPE: MlpShape = MlpShape {
        input: 6,
        hidden_1: 8,
        hidden_2: 4,
        normalized: false,
    };

    fn random_vars(seed: u64) -> Vec<Var> {
        let mut rng = SplitMix64::new(seed);
        SHAPE
            .tensor_shapes()
            .into_iter()
            .map(|(_, dims)| {
                let n: usize = dims.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                Var::from_tensor(&Tensor::from_vec(v, dims, &Device::Cpu).unwrap()).unwrap()
            })
            .collect()
    }

    fn split() -> EvidenceSplit {
        EvidenceSplit {
            evidence: vec![1, 4],
            hidden_from_context: vec![2],
            evidence_units: (3, 2),
        }
    }

    /// The network's logit, computed by hand from the layer tensors.
    fn logit(vars: &[Var], x: &[f32]) -> f32 {
        let v: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let layer = |w: &[f32], b: &[f32], input: &[f32], relu: bool| -> Vec<f32> {
            b.iter()
                .enumerate()
                .map(|(o, bias)| {
                    let z = bias
                        + input
                            .iter()
                            .enumerate()
                            .map(|(i, x)| w[o * input.len() + i] * x)
                            .sum::<f32>();
                    if relu {
                        z.max(0.0)
                    } else {
                        z
                    }
                })
                .collect()
        };
        let h1 = layer(&v[0], &v[1], x, true);
        let h2 = layer(&v[2], &v[3], &h1, true);
        layer(&v[4], &v[5], &h2, false)[0]
    }

    /// Calls `check` with 20 random networks (projected onto `constraints` when given) and 50
    /// random inputs each.
    fn for_random_networks(
        constraints: Option<&WeightConstraints>,
        mut check: impl FnMut(&[Var], Vec<f32>),
    ) {
        for seed in 0..20 {
            let vars = random_vars(seed);
            if let Some(c) = constraints {
                c.project(&vars).unwrap();
            }
            let mut rng = SplitMix64::new(seed + 100);
            for _ in 0..50 {
                let x: Vec<f32> = (0..SHAPE.input)
                    .map(|_| (rng.next_u64() % 4001) as f32 / 1000.0 - 2.0)
                    .collect();
                check(&vars, x);
            }
        }
    }

    #[test]
    fn the_projected_network_never_lowers_its_logit_as_evidence_grows() {
        let constraints = WeightConstraints::evidence_split(SHAPE, &split()).unwrap();
        for_random_networks(Some(&constraints), |vars, mut x| {
            let before = logit(vars, &x);
            x[1] += 0.5;
            let raised_one = logit(vars, &x);
            x[4] += 1.5;
            let raised_both = logit(vars, &x);
            assert!(raised_one >= before - 1e-5, "{raised_one} < {before}");
            assert!(raised_both >= raised_one - 1e-5);
            // A hidden column changes nothing at all.
            x[2] += 3.0;
            assert!((logit(vars, &x) - raised_both).abs() < 1e-5);
        });
    }

    #[test]
    fn without_the_projection_the_same_networks_are_not_monotone() {
        // The check above can fail: unconstrained networks lower their logit somewhere.
        let mut lowered = false;
        for_random_networks(None, |vars, mut x| {
            let before = logit(vars, &x);
            x[1] += 0.5;
            lowered |= logit(vars, &x) < before - 1e-5;
        });
        assert!(lowered);
    }

    #[test]
    fn a_split_that_does_not_fit_the_network_is_refused() {
        let mut bad = split();
        bad.evidence_units = (8, 2);
        assert!(WeightConstraints::evidence_split(SHAPE, &bad)
            .unwrap_err()
            .contains("first-layer"));
        let mut bad = split();
        bad.evidence.push(6);
        assert!(WeightConstraints::evidence_split(SHAPE, &bad)
            .unwrap_err()
            .contains("column 6"));
    }
}
