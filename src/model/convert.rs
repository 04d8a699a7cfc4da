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

/// Largest `.pt`, artifact tarball or decompressed tarball read (the published `.pt` is under
/// 100 KiB): a damaged or foreign file must not take the memory.
pub const MAX_PT_BYTES: u64 = 64 << 20;

/// Reads an input file of at most [`MAX_PT_BYTES`], only a regular file.
fn read_input(path: &Path) -> Result<Vec<u8>, ModelError> {
    crate::util::fs::read_regular_capped(path, MAX_PT_BYTES).map_err(|e| match e {
        crate::util::fs::ReadError::Io(e) => {
            ModelError::Io(format!("cannot read {}: {e}", path.display()))
        }
        e => ModelError::Invalid(format!(
            "{}: {e} (an artifact or .pt may have at most {} MiB)",
            path.display(),
            MAX_PT_BYTES >> 20
        )),
    })
}

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
    crate::util::validate_name(&info.name).map_err(|e| ModelError::Invalid(e.to_string()))?;
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
    let bytes = read_input(input)?;
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
            .take(MAX_PT_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                ModelError::Invalid(format!("{}: corrupt gzip data: {e}", input.display()))
            })?;
        if out.len() as u64 > MAX_PT_BYTES {
            return Err(ModelError::Invalid(format!(
                "{}: decompresses to more than {} MiB, which no artifact does",
                input.display(),
                MAX_PT_BYTES >> 20
            )));
        }
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
    let bytes = read_input(Path::new(&path))?;
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
    check_claims(pt)?;
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

/// Checks what a checkpoint claims before candle's reader allocates for it: candle trusts the
/// lengths in the pickle (a damaged string length made it ask for 4 GiB at once, which aborts
/// the process under an address-space limit) and the zip's entry sizes.
fn check_claims(pt: &PtFile) -> Result<(), ModelError> {
    let invalid = |what: String| {
        ModelError::Invalid(format!(
            "{}: {what}: the checkpoint is damaged or not a PyTorch state_dict",
            pt.origin
        ))
    };
    // An archive the zip reader cannot open is left to candle, whose reader (the same) then
    // fails the same way, with the usual message.
    let Ok(mut archive) = zip::ZipArchive::new(std::io::Cursor::new(&pt.bytes[..])) else {
        return Ok(());
    };
    let mut pickle = None;
    for i in 0..archive.len() {
        let Ok(entry) = archive.by_index_raw(i) else {
            return Ok(());
        };
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        if entry.size() > MAX_PT_BYTES {
            return Err(invalid(format!(
                "its entry `{}` claims {} bytes, more than the {} MiB allowed",
                name,
                entry.size(),
                MAX_PT_BYTES >> 20
            )));
        }
        // candle reads the first `data.pkl`.
        if pickle.is_none() && name.ends_with("data.pkl") {
            pickle = Some(i);
        }
    }
    let Some(i) = pickle else {
        return Ok(()); // candle says what is missing
    };
    let mut bytes = Vec::new();
    let Ok(entry) = archive.by_index(i) else {
        return Ok(());
    };
    // A checksum error comes at the end, with the bytes already read: the pickle is checked
    // all the same (candle reads as far as the damage before it notices the checksum).
    let _ = entry.take(MAX_PT_BYTES).read_to_end(&mut bytes);
    check_pickle(&bytes).map_err(invalid)
}

/// Walks the op-codes candle's pickle reader knows and checks every length they claim against
/// the bytes that are left. Op-codes it does not know, and a truncated pickle, are left to
/// candle, which reports them without a large allocation.
pub fn check_pickle(pickle: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    while let Some(&op) = pickle.get(at) {
        at += 1;
        let skip = match op {
            b'.' => return Ok(()),
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'r' | b'J' | b'j' => 4,
            b'G' => 8,
            b'c' => {
                // Module and class names, each up to a line end.
                let mut lines = 0;
                let mut end = at;
                while lines < 2 {
                    match memchr::memchr(b'\n', &pickle[end.min(pickle.len())..]) {
                        Some(n) => end += n + 1,
                        None => return Ok(()),
                    }
                    lines += 1;
                }
                end - at
            }
            b'X' => {
                let Some(len) = pickle.get(at..at + 4) else {
                    return Ok(());
                };
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                let left = pickle.len() - (at + 4);
                if len > left {
                    return Err(format!(
                        "a string at byte {} of data.pkl claims {len} bytes where {left} are left",
                        at - 1
                    ));
                }
                4 + len
            }
            0x8a => {
                let Some(&n) = pickle.get(at) else {
                    return Ok(());
                };
                if n > 8 {
                    return Err(format!(
                        "an integer at byte {} of data.pkl claims {n} bytes (at most 8 are read)",
                        at - 1
                    ));
                }
                1 + n as usize
            }
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | b'N'
            | 0x85..=0x89
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            _ => return Ok(()),
        };
        at += skip;
    }
    Ok(())
}
