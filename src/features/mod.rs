//! Feature schemas: pure functions from a request's rows to one f32 vector per scored row.

pub mod escu;
pub mod prior;
pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;

use std::fmt;
use std::str::FromStr;

pub use crate::util::pool::PARALLEL_MIN_ROWS;

/// One DNS event as the feature layer sees it. Cells are text exactly as sent.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub src: &'a str,
    pub query: &'a str,
}

/// A dense row-major matrix of float32 features, one row per scored event.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMatrix {
    pub rows: usize,
    pub width: usize,
    pub values: Vec<f32>,
}

impl FeatureMatrix {
    pub fn zeros(rows: usize, width: usize) -> Self {
        Self {
            rows,
            width,
            values: vec![0.0; rows * width],
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.values[i * self.width..(i + 1) * self.width]
    }

    /// A matrix of the rows at `scored`, each written by `fill` into a view of the matrix's
    /// rows: large batches are filled in halves on both cores (each row depends only on the
    /// per-request history, which `fill` reads).
    pub(crate) fn filled(
        scored: &[usize],
        width: usize,
        fill: impl Fn(&[usize], &mut FeatureRows<'_>) + Sync,
    ) -> Self {
        let mut matrix = Self::zeros(scored.len(), width);
        fill_in_halves(
            scored,
            FeatureRows {
                values: &mut matrix.values,
                width,
            },
            &fill,
        );
        matrix
    }
}

fn fill_in_halves(
    scored: &[usize],
    mut rows: FeatureRows<'_>,
    fill: &(impl Fn(&[usize], &mut FeatureRows<'_>) + Sync),
) {
    if !crate::util::pool::worth_splitting(scored.len()) {
        fill(scored, &mut rows);
        return;
    }
    let half = scored.len() / 2;
    let (first, second) = rows.split_at(half);
    rayon::join(
        || fill_in_halves(&scored[..half], first, fill),
        || fill_in_halves(&scored[half..], second, fill),
    );
}

/// Consecutive rows of a [`FeatureMatrix`], the `k`-th for the `k`-th scored row of a fill.
pub(crate) struct FeatureRows<'m> {
    values: &'m mut [f32],
    width: usize,
}

impl FeatureRows<'_> {
    pub(crate) fn row_mut(&mut self, k: usize) -> &mut [f32] {
        &mut self.values[k * self.width..(k + 1) * self.width]
    }

    /// The first `k` rows and the rest.
    fn split_at(self, k: usize) -> (Self, Self) {
        let (first, second) = self.values.split_at_mut(k * self.width);
        let width = self.width;
        (
            FeatureRows {
                values: first,
                width,
            },
            FeatureRows {
                values: second,
                width,
            },
        )
    }
}

/// A schema's per-request state (see [`Schema::prepare`]).
pub enum Prepared {
    Escu(escu::History),
    V2(v2::History),
    V3(v3::History),
    V4(v4::History),
    V5(v5::History),
}

impl Prepared {
    /// Features of the rows at `scored`, indices into the rows it was prepared from.
    pub fn features(&self, rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        match self {
            Prepared::Escu(history) => history.features(rows, scored),
            Prepared::V2(history) => history.features(scored),
            Prepared::V3(history) => history.features(scored),
            Prepared::V4(history) => history.features(scored),
            Prepared::V5(history) => history.features(scored),
        }
    }

    /// The (source, domain) pairs and sources whose remembered queries the schema uses; `None`
    /// for schemas computed from the request alone.
    pub fn prior_keys(&self) -> Option<prior::PriorKeys> {
        match self {
            Prepared::V5(history) => Some(history.prior_keys()),
            _ => None,
        }
    }

    /// Gives a schema that uses them what was remembered before the request (a no-op for
    /// the others).
    pub fn apply_prior(&mut self, prior: &prior::Prior) {
        if let Prepared::V5(history) = self {
            history.apply_prior(prior);
        }
    }
}

/// The feature schemas a model can declare in its metadata. The schema decides which pipeline
/// turns rows into the model's inputs, so models of different schemas can be served side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// The 98 features of Splunk's published ESCU model.
    EscuV1,
    /// Our richer schema: name shape plus (src, registered domain) history (see `v2.rs`).
    DnsexfilV2,
    /// v2 plus alphabet-independent signals at the ICANN boundary (see `v3.rs`).
    DnsexfilV3,
    /// v3 plus where a name lives: internal zones, service labels (see `v4.rs`).
    DnsexfilV4,
    /// v4 plus the long window: what the service remembered of each (source, domain) before
    /// the request (see `v5.rs`).
    DnsexfilV5,
}

impl Schema {
    pub fn name(self) -> &'static str {
        match self {
            Schema::EscuV1 => "escu-v1",
            Schema::DnsexfilV2 => "dnsexfil-v2",
            Schema::DnsexfilV3 => "dnsexfil-v3",
            Schema::DnsexfilV4 => "dnsexfil-v4",
            Schema::DnsexfilV5 => "dnsexfil-v5",
        }
    }

    /// Number of features per row.
    pub fn width(self) -> usize {
        match self {
            Schema::EscuV1 => escu::WIDTH,
            Schema::DnsexfilV2 => v2::WIDTH,
            Schema::DnsexfilV3 => v3::WIDTH,
            Schema::DnsexfilV4 => v4::WIDTH,
            Schema::DnsexfilV5 => v5::WIDTH,
        }
    }

    /// Whether the schema's features include what was remembered before the request.
    pub fn uses_prior(self) -> bool {
        self == Schema::DnsexfilV5
    }

    /// Features of the rows at indices `scored`, with all of `rows` as history (and nothing
    /// remembered before them).
    pub fn compute(self, rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        self.prepare(rows).features(rows, scored)
    }

    /// The per-request state the schema needs from all rows, from which features of any
    /// subset of rows (e.g. one chunk at a time) can be produced.
    pub fn prepare(self, rows: &[Row<'_>]) -> Prepared {
        match self {
            Schema::EscuV1 => Prepared::Escu(escu::History::build(rows)),
            Schema::DnsexfilV2 => Prepared::V2(v2::History::build(rows)),
            Schema::DnsexfilV3 => Prepared::V3(v3::History::build(rows)),
            Schema::DnsexfilV4 => Prepared::V4(v4::History::build(rows)),
            Schema::DnsexfilV5 => Prepared::V5(v5::History::build(rows)),
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Schema {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "escu-v1" => Ok(Schema::EscuV1),
            "dnsexfil-v2" => Ok(Schema::DnsexfilV2),
            "dnsexfil-v3" => Ok(Schema::DnsexfilV3),
            "dnsexfil-v4" => Ok(Schema::DnsexfilV4),
            "dnsexfil-v5" => Ok(Schema::DnsexfilV5),
            other => Err(format!(
                "unknown feature schema `{other}` (this build knows: escu-v1, dnsexfil-v2, dnsexfil-v3, dnsexfil-v4, dnsexfil-v5)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_filled_in_halves_has_each_scored_row_in_its_place() {
        for count in [
            0,
            1,
            PARALLEL_MIN_ROWS - 1,
            PARALLEL_MIN_ROWS,
            3 * PARALLEL_MIN_ROWS + 7,
        ] {
            let scored: Vec<usize> = (0..count).map(|k| 3 * k + 1).collect();
            let matrix = FeatureMatrix::filled(&scored, 2, |scored, rows| {
                for (k, &i) in scored.iter().enumerate() {
                    rows.row_mut(k).copy_from_slice(&[i as f32, (i * 2) as f32]);
                }
            });
            assert_eq!((matrix.rows, matrix.values.len()), (count, 2 * count));
            for k in 0..count {
                let i = 3 * k + 1;
                assert_eq!(
                    matrix.row(k),
                    [i as f32, (i * 2) as f32],
                    "row {k} of {count}"
                );
            }
        }
    }
}
