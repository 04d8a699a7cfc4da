//! `/fit` with `mode=stage`: keep the data and its description for a notebook, build nothing.

use std::path::Path;

use super::{DsdlResponse, Endpoint};
use crate::dsdl::envelope::{Envelope, Options};

/// `mode=stage`: keep the data and its description for a notebook, build nothing.
pub(super) fn stage(dir: &Path, envelope: &Envelope, options: &Options) -> DsdlResponse {
    // Appended, not `with_extension`: `a.b` and `a.c` are different models.
    let csv_path = dir.join(format!("{}.csv", options.model_name));
    let json_path = dir.join(format!("{}.json", options.model_name));
    // The session key Splunk puts into meta must never reach the disk.
    let meta =
        serde_json::to_vec_pretty(&envelope.meta_without_secrets()).expect("JSON values serialise");
    // Both or neither: a notebook must never find new data beside the old description.
    let written = crate::util::fs::write_pair_atomic(
        (&csv_path, envelope.data.as_bytes()),
        (&json_path, &meta),
    );
    match written {
        Ok(()) => DsdlResponse {
            status: "staged",
            message: format!(
                "Model data staged successfully in {} - no model was built yet.",
                csv_path.display()
            ),
            results: None,
        },
        Err(e) => DsdlResponse::error(
            Endpoint::Fit,
            format!(
                "cannot stage the data in {}: {e}; check that the staging directory is writable",
                dir.display()
            ),
        ),
    }
}
