//! Converts Splunk's published artifact (a tarball holding a PyTorch `.pt`, a bare `.pt`, or a DSDL
//! model directory in either deployment layout) into our safetensors model file, without Python.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::file::{check_names_and_shapes, encode, first_line, shape_for, ModelInfo};
use super::{sha256_hex, ModelError};
use crate::features::Schema;

/// Name of the published ESCU model, as the detection's `apply` uses it.
pub const ESCU_MODEL_NAME: &str = "detect_dns_data_exfiltration_using_pretrained_model_in_dsdl";
/// SHA-256 of the `.pt` Splunk publishes.
pub const ESCU_PT_SHA256: &str = "701d1c031e8af7c9b807ba7b1a31d933c34f65581dba750e77e5b1ee3ee652bf";
/// Label name of the published model (its result columns are `pred_is_dns_data_exfiltration*`).
pub const ESCU_TARGET: &str = "is_dns_data_exfiltration";

/// The PyTorch checkpoint found in the input, before decoding.
pub struct PtFile {
    /// Where it came from, for messages and metadata (e.g. `artifact.tar.gz:dir/model.pt`).
    pub origin: String,
    /// File name of the `.pt` without its folder.
    pub file_name: String,
    pub bytes: Vec<u8>,
}

/// The result of a conversion.
pub struct Converted {
    pub info: ModelInfo,
    pub bytes: Vec<u8>,
    /// Whether the source is byte-identical to Splunk's published file.
    pub is_published_artifact: bool,
}

/// Reads `input` (tarball, `.pt` or directory), decodes the checkpoint and returns the model file.
/// `name` overrides the model name (default: the `.pt` file's stem).
pub fn convert(input: &Path, name: Option<&str>) -> Result<Converted, ModelError> {
    let pt = find_pt(input)?;
    convert_pt(&pt, name)
}

/// Decodes an in-memory PyTorch checkpoint into a model file.
pub fn convert_pt(pt: &PtFile, name: Option<&str>) -> Result<Converted, ModelError> {
    let tensors = decode_state_dict(pt)?;
    let sha = sha256_hex(&pt.bytes);
    let stem = pt
        .file_name
        .strip_suffix(".pt")
        .or_else(|| pt.file_name.strip_suffix(".pth"))
        .unwrap_or(&pt.file_name);
    let info = ModelInfo {
        name: name.unwrap_or(stem).to_string(),
        schema: Schema::EscuV1,
        target: ESCU_TARGET.into(),
        threshold: 0.5,
        source_file: pt.file_name.clone(),
        source_sha256: sha.clone(),
        created_by: format!("dnsexfil {} convert", env!("CARGO_PKG_VERSION")),
    };
    crate::validate_name(&info.name).map_err(ModelError::Invalid)?;
    let bytes = encode(&info, &tensors).map_err(|e| match e {
        ModelError::Invalid(m) => ModelError::Invalid(m.replacen(&info.name, &pt.origin, 1)),
        other => other,
    })?;
    Ok(Converted {
        info,
        bytes,
        is_published_artifact: sha == ESCU_PT_SHA256,
    })
}

/// Locates the `.pt` inside `input`.
pub fn find_pt(input: &Path) -> Result<PtFile, ModelError> {
    let meta = std::fs::metadata(input)
        .map_err(|e| ModelError::Io(format!("cannot read {}: {e}", input.display())))?;
    if meta.is_dir() {
        return find_pt_in_dir(input);
    }
    let bytes = std::fs::read(input)
        .map_err(|e| ModelError::Io(format!("cannot read {}: {e}", input.display())))?;
    let file_name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok(PtFile {
            origin: input.display().to_string(),
            file_name,
            bytes,
        });
    }
    let tar_bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                ModelError::Invalid(format!("{}: corrupt gzip data: {e}", input.display()))
            })?;
        out
    } else {
        bytes
    };
    if tar_bytes.len() > 262 && &tar_bytes[257..262] == b"ustar" {
        return find_pt_in_tar(&tar_bytes, &input.display().to_string());
    }
    Err(ModelError::Invalid(format!(
        "{} is neither a PyTorch .pt file (a zip archive) nor a .tar.gz artifact; pass Splunk's artifact tarball or the .pt inside it",
        input.display()
    )))
}

fn find_pt_in_tar(tar_bytes: &[u8], origin: &str) -> Result<PtFile, ModelError> {
    let corrupt =
        |e: std::io::Error| ModelError::Invalid(format!("{origin}: corrupt tar archive: {e}"));
    let mut archive = tar::Archive::new(tar_bytes);
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    let mut others = Vec::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type().is_file()
            && (path.ends_with(".pt") || path.ends_with(".pth"))
        {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            found.push((path, bytes));
        } else if others.len() < 10 {
            others.push(path);
        }
    }
    let (path, bytes) = pick_one(found, origin, &others)?;
    let file_name = Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(PtFile {
        origin: format!("{origin}:{path}"),
        file_name,
        bytes,
    })
}

/// DSDL keeps models either flat (`<dir>/<name>.pt`) or in a sub-folder (`<dir>/<name>/<name>.pt`).
fn find_pt_in_dir(dir: &Path) -> Result<PtFile, ModelError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut look = |d: &Path| {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file()
                    && matches!(p.extension().and_then(|x| x.to_str()), Some("pt" | "pth"))
                {
                    candidates.push(p);
                }
            }
        }
    };
    look(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                look(&e.path());
            }
        }
    }
    let found: Vec<(String, Vec<u8>)> = candidates
        .into_iter()
        .map(|p| (p.display().to_string(), Vec::new()))
        .collect();
    let (path, _) = pick_one(found, &dir.display().to_string(), &[])?;
    let bytes =
        std::fs::read(&path).map_err(|e| ModelError::Io(format!("cannot read {path}: {e}")))?;
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(ModelError::Invalid(format!(
            "{path} is not a PyTorch .pt file (not a zip archive)"
        )));
    }
    let file_name = Path::new(&path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(PtFile {
        origin: path,
        file_name,
        bytes,
    })
}

/// With several checkpoints, prefer the ESCU model's; otherwise the choice is ambiguous.
fn pick_one(
    mut found: Vec<(String, Vec<u8>)>,
    origin: &str,
    others: &[String],
) -> Result<(String, Vec<u8>), ModelError> {
    match found.len() {
        0 => Err(ModelError::Invalid(if others.is_empty() {
            format!("no .pt file in {origin}; pass Splunk's artifact tarball, the .pt itself, or the DSDL model directory")
        } else {
            format!("no .pt file in {origin} (it holds: {}); pass Splunk's artifact tarball or the .pt itself", others.join(", "))
        })),
        1 => Ok(found.remove(0)),
        _ => {
            let escu = format!("{ESCU_MODEL_NAME}.pt");
            if let Some(i) = found.iter().position(|(p, _)| p.ends_with(&escu)) {
                return Ok(found.swap_remove(i));
            }
            let names: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
            Err(ModelError::Invalid(format!(
                "{origin} holds several .pt files ({}); pass the one to convert directly",
                names.join(", ")
            )))
        }
    }
}

/// Decodes the state_dict of a PyTorch zip checkpoint with candle's pickle reader.
fn decode_state_dict(pt: &PtFile) -> Result<HashMap<String, Tensor>, ModelError> {
    if !pt.bytes.starts_with(b"PK\x03\x04") {
        return Err(ModelError::Invalid(format!(
            "{} is not a PyTorch .pt file (not a zip archive)",
            pt.origin
        )));
    }
    // candle's reader takes a path; the checkpoint may come from inside a tarball.
    let mut tmp = tempfile::Builder::new()
        .suffix(".pt")
        .tempfile()
        .map_err(|e| ModelError::Io(format!("cannot create a temporary file: {e}")))?;
    tmp.write_all(&pt.bytes)
        .map_err(|e| ModelError::Io(format!("cannot write a temporary file: {e}")))?;
    let bad = |e: candle_core::Error| {
        ModelError::Invalid(format!(
            "{}: cannot decode the PyTorch checkpoint: {}",
            pt.origin,
            first_line(&e.to_string())
        ))
    };
    let pth = candle_core::pickle::PthTensors::new(tmp.path(), None).map_err(bad)?;
    if pth.tensor_infos().is_empty() {
        return Err(ModelError::Invalid(format!(
            "{}: the checkpoint holds no tensors (expected a state_dict)",
            pt.origin
        )));
    }
    // Names and shapes are checked from the pickle before any data is read, so a mismatch is
    // reported as such rather than as a failed read.
    let dims: HashMap<String, Vec<usize>> = pth
        .tensor_infos()
        .iter()
        .map(|(n, info)| (n.clone(), info.layout.dims().to_vec()))
        .collect();
    check_names_and_shapes(&dims, shape_for(Schema::EscuV1), &pt.origin)?;
    let mut tensors = HashMap::new();
    for name in pth.tensor_infos().keys() {
        if let Some(t) = pth.get(name).map_err(bad)? {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32).map_err(bad)?
            };
            tensors.insert(name.clone(), t);
        }
    }
    Ok(tensors)
}
