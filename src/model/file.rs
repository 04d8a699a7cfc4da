//! The model file: safetensors with the network's tensors and metadata that says how to use them
//! (feature schema, output column names, threshold, provenance).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::mlp::{Mlp, MlpShape};
use super::ModelError;
use crate::features::Schema;

/// Metadata keys written into every model file.
pub mod keys {
    pub const FORMAT: &str = "dnsexfil.format";
    pub const NAME: &str = "name";
    pub const SCHEMA: &str = "schema";
    pub const TARGET: &str = "target";
    pub const THRESHOLD: &str = "threshold";
    pub const SOURCE_FILE: &str = "source_file";
    pub const SOURCE_SHA256: &str = "source_sha256";
    pub const LAYOUT: &str = "tensor_layout";
    pub const CREATED_BY: &str = "created_by";
}

/// Largest model file read by default (`--max-model-file-mb`): models are 20 to 100 KiB, so this
/// only stops files that are not models from taking the memory.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;

/// Version of the metadata layout this build writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// What a model file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Name requests use to select the model.
    pub name: String,
    pub schema: Schema,
    /// Label name; result columns are `pred_<target>_proba` and `pred_<target>`.
    pub target: String,
    /// Probability at or above which the label is 1.
    pub threshold: f32,
    pub source_file: String,
    pub source_sha256: String,
    pub created_by: String,
}

impl ModelInfo {
    pub fn to_metadata(&self, shape: MlpShape) -> HashMap<String, String> {
        let layout: Vec<serde_json::Value> = shape
            .tensor_shapes()
            .iter()
            .map(|(n, s)| serde_json::json!({"name": n, "dtype": "F32", "shape": s}))
            .collect();
        HashMap::from([
            (keys::FORMAT.into(), FORMAT_VERSION.into()),
            (keys::NAME.into(), self.name.clone()),
            (keys::SCHEMA.into(), self.schema.name().into()),
            (keys::TARGET.into(), self.target.clone()),
            (keys::THRESHOLD.into(), self.threshold.to_string()),
            (keys::SOURCE_FILE.into(), self.source_file.clone()),
            (keys::SOURCE_SHA256.into(), self.source_sha256.clone()),
            (
                keys::LAYOUT.into(),
                serde_json::Value::Array(layout).to_string(),
            ),
            (keys::CREATED_BY.into(), self.created_by.clone()),
        ])
    }

    fn from_metadata(meta: &HashMap<String, String>, origin: &str) -> Result<Self, ModelError> {
        let get = |k: &str| {
            meta.get(k).cloned().ok_or_else(|| {
                ModelError::Invalid(format!(
                    "{origin}: metadata key `{k}` is missing; convert the artifact with `dnsexfil convert`"
                ))
            })
        };
        let schema_text = get(keys::SCHEMA)?;
        let schema = schema_text
            .parse::<Schema>()
            .map_err(|e| ModelError::Invalid(format!("{origin}: {e}")))?;
        let threshold_text = get(keys::THRESHOLD)?;
        let threshold = threshold_text
            .parse::<f32>()
            .ok()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "{origin}: threshold `{threshold_text}` is not a number in [0, 1]"
                ))
            })?;
        // The target names result columns (`pred_<target>`): checked as a fit checks it, so a
        // file cannot put `,` or a line end into the results' header.
        let target = get(keys::TARGET)?;
        crate::util::validate_name(&target).map_err(|e| {
            ModelError::Invalid(format!(
                "{origin}: metadata key `{}`: {e}; fix the file, or fit the model again",
                keys::TARGET
            ))
        })?;
        Ok(Self {
            name: get(keys::NAME)?,
            schema,
            target,
            threshold,
            source_file: meta.get(keys::SOURCE_FILE).cloned().unwrap_or_default(),
            source_sha256: meta.get(keys::SOURCE_SHA256).cloned().unwrap_or_default(),
            created_by: meta.get(keys::CREATED_BY).cloned().unwrap_or_default(),
        })
    }
}

/// A model ready to score: its description and its network.
pub struct Model {
    pub info: ModelInfo,
    pub mlp: Mlp,
    /// SHA-256 of the model file itself.
    pub file_sha256: String,
}

impl Model {
    /// Builds a model from named tensors, checking every name and shape against the schema's network.
    pub fn from_tensors(
        info: ModelInfo,
        tensors: HashMap<String, Tensor>,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let shape = shape_of(info.schema, &dims_of(&tensors));
        check_tensors(&tensors, shape, origin)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let mlp = Mlp::new(vb, shape).map_err(|e| ModelError::Invalid(format!("{origin}: {e}")))?;
        Ok(Self {
            info,
            mlp,
            file_sha256: String::new(),
        })
    }

    /// Reads a model file produced by `dnsexfil convert` or training.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_limited(path, DEFAULT_MAX_FILE_BYTES)
    }

    /// Reads a model file of at most `limit` bytes. Only a regular file is read (a FIFO would
    /// block the reader, `/dev/zero` or a huge sparse file exhaust memory), and its header
    /// first: a file whose header or data does not fit the file's length is refused before
    /// more than those 8 bytes are read.
    pub fn load_limited(path: &Path, limit: u64) -> Result<Self, ModelError> {
        use crate::util::fs::ReadError;
        use std::io::Read;
        let origin = path.display().to_string();
        let io = |e: std::io::Error| ModelError::Io(format!("cannot read {origin}: {e}"));
        let (file, len) = crate::util::fs::open_regular_capped(path, limit).map_err(|e| match e {
            ReadError::TooLarge { size, limit } => ModelError::Invalid(format!(
                "{origin}: it is {size} bytes ({} MiB), more than the {} MiB a model file may have (models are about 20 to 100 KiB): remove it, or raise --max-model-file-mb (DNSEXFIL_MAX_MODEL_FILE_MB)",
                size.div_ceil(1 << 20),
                limit >> 20
            )),
            ReadError::NotRegular(_) => ModelError::Invalid(format!("{origin}: {e}")),
            ReadError::Io(e) => io(e),
        })?;
        // Never more than the length checked above, even if the file grows meanwhile. The
        // header's claimed length is checked before the rest is read.
        let mut reader = file.take(len);
        let mut bytes = Vec::with_capacity(8);
        (&mut reader).take(8).read_to_end(&mut bytes).map_err(io)?;
        header_len(&bytes, len, &origin)?;
        bytes.reserve_exact(len as usize - bytes.len());
        reader.read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 != len {
            return Err(ModelError::Io(format!(
                "cannot read {origin}: it has {} bytes where it had {len} when opened (changed while read); it is read again when it changes",
                bytes.len()
            )));
        }
        Self::from_bytes(&bytes, &origin)
    }

    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, ModelError> {
        header_len(
            bytes.get(..8).unwrap_or_default(),
            bytes.len() as u64,
            origin,
        )?;
        // safetensors checks the rest: a JSON header whose tensors' data lie back to back and
        // end exactly where the file ends.
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| header_problem(e, origin))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let info = ModelInfo::from_metadata(&meta, origin)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| ModelError::Invalid(format!("{origin}: cannot read tensors: {e}")))?;
        let mut model = Self::from_tensors(info, tensors, origin)?;
        model.file_sha256 = crate::model::sha256_hex(bytes);
        Ok(model)
    }
}

/// Largest safetensors header a model file may have. Ours take a few KiB (tensor names, shapes
/// and the metadata), so a larger claim is a damaged or foreign file: refused before anything
/// is allocated for it.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// The header's length, from the first 8 bytes of a safetensors file of `file_len` bytes
/// (`prefix` is shorter when the file is): at most [`MAX_HEADER_BYTES`], and within the file.
fn header_len(prefix: &[u8], file_len: u64, origin: &str) -> Result<usize, ModelError> {
    let Ok(prefix) = <[u8; 8]>::try_from(prefix) else {
        return Err(ModelError::Invalid(format!(
            "{origin} is not a safetensors file: it is {file_len} bytes, too short to hold even the 8-byte length of a header"
        )));
    };
    let claimed = u64::from_le_bytes(prefix);
    if claimed > MAX_HEADER_BYTES {
        return Err(ModelError::Invalid(format!(
            "{origin} is not a model file: its header claims {claimed} bytes, more than the {} MiB a model file's header may have (ours take a few KiB); the file is damaged or not a model: remove it",
            MAX_HEADER_BYTES >> 20
        )));
    }
    let after = file_len - 8;
    if claimed > after {
        return Err(ModelError::Invalid(format!(
            "{origin} is not a model file: its header claims {claimed} bytes, more than the {after} bytes that follow its length in the file (a truncated or damaged file): remove it, or copy it again"
        )));
    }
    Ok(claimed as usize)
}

/// What is wrong with a header safetensors refused, said so that the owner of the file knows
/// what to do.
fn header_problem(e: safetensors::SafeTensorError, origin: &str) -> ModelError {
    use safetensors::SafeTensorError as E;
    ModelError::Invalid(match e {
        E::MetadataIncompleteBuffer => format!(
            "{origin} is not a model file as written: the tensor data its header places after it does not end where the file ends (a truncated file, or bytes added after its data): remove it, or copy it again"
        ),
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => format!(
            "{origin} is not a safetensors file: its header is not a JSON object of tensors ({e})"
        ),
        e => format!("{origin} is not a safetensors file: {e}"),
    })
}

/// Serialises a model file: checks the tensors against the schema's network, then writes them in
/// state_dict order with the metadata. The bytes depend only on the inputs (keys are written in
/// sorted order), so a conversion or a seeded training run is reproducible bit for bit.
pub fn encode(info: &ModelInfo, tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>, ModelError> {
    let shape = shape_of(info.schema, &dims_of(tensors));
    check_tensors(tensors, shape, &info.name)?;
    let mut header = serde_json::Map::new();
    let metadata: BTreeMap<String, String> = info.to_metadata(shape).into_iter().collect();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).expect("strings serialise"),
    );
    let mut data: Vec<u8> = Vec::new();
    for (name, _) in shape.tensor_shapes() {
        let t = &tensors[name];
        let values = t
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(|e| {
                ModelError::Invalid(format!("{}: {}", info.name, first_line(&e.to_string())))
            })?;
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    // Keys come out sorted (or in insertion order with serde_json `preserve_order`): deterministic.
    let mut header_bytes = serde_json::to_vec(&header).expect("JSON values serialise");
    // The format pads the header with spaces so the data starts 8-byte aligned.
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len() + data.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Network shape each schema's models use.
pub fn shape_for(schema: Schema) -> MlpShape {
    match schema {
        Schema::EscuV1 => MlpShape::ESCU,
        Schema::DnsexfilV2 => MlpShape::V2,
        Schema::DnsexfilV3 => MlpShape::V3,
        Schema::DnsexfilV4 => MlpShape::V4,
        Schema::DnsexfilV5 => MlpShape::V5,
    }
}

/// Widest hidden layer a model file of our schemas may have: an ensemble of members is one
/// network as many times as wide as one member (`train --members`), and nothing wider is served.
pub const MAX_HIDDEN: usize = 1024;

/// The network a model file holds: the schema fixes the input and the standardisation; the
/// hidden widths of our own schemas are read from the layers (an ensemble is wider than one
/// member), within [`MAX_HIDDEN`]. The published ESCU network keeps its fixed shape. Widths the
/// file does not state or that are out of range fall back to the schema's, so the shape check
/// names the tensor that is wrong.
pub fn shape_of(schema: Schema, found: &HashMap<String, Vec<usize>>) -> MlpShape {
    let fixed = shape_for(schema);
    if schema == Schema::EscuV1 {
        return fixed;
    }
    let rows = |name: &str| {
        found
            .get(name)
            .and_then(|dims| dims.first().copied())
            .filter(|n| (1..=MAX_HIDDEN).contains(n))
    };
    MlpShape {
        hidden_1: rows("layer_1.weight").unwrap_or(fixed.hidden_1),
        hidden_2: rows("layer_2.weight").unwrap_or(fixed.hidden_2),
        ..fixed
    }
}

fn dims_of(tensors: &HashMap<String, Tensor>) -> HashMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect()
}

/// Checks that the checkpoint holds exactly the network's tensors with the right shapes, given
/// each tensor's name and dimensions.
pub fn check_names_and_shapes(
    found: &HashMap<String, Vec<usize>>,
    shape: MlpShape,
    origin: &str,
) -> Result<(), ModelError> {
    for (name, expected) in shape.tensor_shapes() {
        let Some(dims) = found.get(name) else {
            let mut names: Vec<&str> = found.keys().map(String::as_str).collect();
            names.sort();
            return Err(ModelError::Invalid(format!(
                "{origin}: missing tensor `{name}` (found: {})",
                names.join(", ")
            )));
        };
        if *dims != expected {
            return Err(ModelError::Invalid(format!(
                "{origin}: tensor `{name}` has shape {dims:?} where {expected:?} was expected"
            )));
        }
    }
    let expected: Vec<&str> = shape.tensor_shapes().iter().map(|(n, _)| *n).collect();
    if let Some(extra) = found.keys().find(|k| !expected.contains(&k.as_str())) {
        return Err(ModelError::Invalid(format!(
            "{origin}: unexpected tensor `{extra}` (the network has only {})",
            expected.join(", ")
        )));
    }
    Ok(())
}

/// Checks that `tensors` holds exactly the network's tensors, in float32 with the right shapes and
/// only finite values.
pub fn check_tensors(
    tensors: &HashMap<String, Tensor>,
    shape: MlpShape,
    origin: &str,
) -> Result<(), ModelError> {
    let dims: HashMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    check_names_and_shapes(&dims, shape, origin)?;
    for (name, t) in tensors {
        if t.dtype() != DType::F32 {
            return Err(ModelError::Invalid(format!(
                "{origin}: tensor `{name}` is {:?} where F32 was expected",
                t.dtype()
            )));
        }
        let values = t
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(|e| {
                ModelError::Invalid(format!("{origin}: {}", first_line(&e.to_string())))
            })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "{origin}: tensor `{name}` holds NaN or infinite values"
            )));
        }
    }
    Ok(())
}

/// candle appends a backtrace to some errors; messages keep only their first line.
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(bytes: &[u8]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let loaded = Model::load_limited(&path, DEFAULT_MAX_FILE_BYTES)
            .err()
            .expect("refused")
            .to_string();
        assert!(loaded.contains(&path.display().to_string()), "{loaded}");
        let parsed = Model::from_bytes(bytes, "given bytes")
            .err()
            .expect("refused")
            .to_string();
        assert!(parsed.starts_with("given bytes"), "{parsed}");
        (loaded, parsed)
    }

    #[test]
    fn a_header_claiming_a_tebibyte_is_refused_before_it_is_read() {
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        for message in <[String; 2]>::from(refusal(&bytes)) {
            assert!(
                message.contains("its header claims 1099511627776 bytes, more than the 1 MiB"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_header_longer_than_the_file_is_refused() {
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[b' '; 100]);
        for message in <[String; 2]>::from(refusal(&bytes)) {
            assert!(
                message.contains("its header claims 1000 bytes, more than the 100 bytes"),
                "{message}"
            );
        }
        for message in <[String; 2]>::from(refusal(b"abc")) {
            assert!(message.contains("it is 3 bytes, too short"), "{message}");
        }
    }

    #[test]
    fn tensor_data_must_end_where_the_file_ends() {
        let model = crate::model::DEFAULT_MODEL_BYTES;
        let mut padded = model.to_vec();
        padded.push(0);
        for message in <[String; 2]>::from(refusal(&padded)) {
            assert!(
                message.contains("does not end where the file ends"),
                "{message}"
            );
        }
        for message in <[String; 2]>::from(refusal(&model[..model.len() - 4])) {
            assert!(message.contains("a truncated file"), "{message}");
        }
        let mut not_json = model.to_vec();
        not_json[8] = b'[';
        for message in <[String; 2]>::from(refusal(&not_json)) {
            assert!(message.contains("not a JSON object"), "{message}");
        }
    }

    #[test]
    fn a_whole_model_file_loads_as_its_bytes_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, crate::model::DEFAULT_MODEL_BYTES).unwrap();
        let loaded = Model::load_limited(&path, DEFAULT_MAX_FILE_BYTES).unwrap();
        let parsed = crate::model::default_model().unwrap();
        assert_eq!(loaded.file_sha256, parsed.file_sha256);
        assert_eq!(loaded.info, parsed.info);
    }
}
