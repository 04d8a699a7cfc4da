//! Conversion of Splunk's artifact: the tarball, a bare `.pt`, both DSDL directory layouts, and
//! one-line errors for inputs that are not a usable checkpoint.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use common::*;
use dnsexfil::model::convert::{convert, ESCU_MODEL_NAME, ESCU_PT_SHA256};
use dnsexfil::model::Model;
use dnsexfil::store::Registry;

/// The `.pt` bytes from inside the published tarball.
fn published_pt() -> Vec<u8> {
    let gz = fs::read(artifact()).unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy().ends_with(".pt") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            return bytes;
        }
    }
    panic!("no .pt in the artifact");
}

/// Rewrites the checkpoint's pickle with `edit` (same-length edits keep the pickle valid).
fn edited_pt(edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let original = published_pt();
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(original)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().unwrap().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            edit(&mut data);
        }
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        out.start_file(name, opts).unwrap();
        out.write_all(&data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn replace_once(data: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = data
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in pickle");
    data[at..at + to.len()].copy_from_slice(to);
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, bytes).unwrap();
    p
}

fn err_of(input: &Path) -> String {
    let e = convert(input, None)
        .err()
        .expect("conversion fails")
        .to_string();
    assert_eq!(e.lines().count(), 1, "one-line error: {e}");
    e
}

#[test]
fn tarball_bare_pt_and_both_dsdl_layouts_give_the_same_model() {
    let from_tar = convert(&artifact(), None).unwrap();
    assert!(from_tar.is_published_artifact);
    assert_eq!(from_tar.info.name, ESCU_MODEL_NAME);
    assert_eq!(from_tar.info.source_sha256, ESCU_PT_SHA256);

    let dir = tempfile::tempdir().unwrap();
    let pt = published_pt();
    let bare = write(dir.path(), &format!("bare/{ESCU_MODEL_NAME}.pt"), &pt);
    let flat = write(dir.path(), &format!("flat/{ESCU_MODEL_NAME}.pt"), &pt);
    let nested = write(
        dir.path(),
        &format!("nested/{ESCU_MODEL_NAME}/{ESCU_MODEL_NAME}.pt"),
        &pt,
    );
    assert!(convert(&bare, None).unwrap().bytes == from_tar.bytes);
    assert!(convert(flat.parent().unwrap(), None).unwrap().bytes == from_tar.bytes);
    assert!(convert(&dir.path().join("nested"), None).unwrap().bytes == from_tar.bytes);
    assert!(nested.is_file());

    // The file records schema, provenance and tensor layout, and loads back.
    let model = Model::from_bytes(&from_tar.bytes, "converted").unwrap();
    assert_eq!(model.info.schema.name(), "escu-v1");
    let (_, header) = safetensors::SafeTensors::read_metadata(&from_tar.bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["schema"], "escu-v1");
    assert_eq!(meta["source_sha256"], ESCU_PT_SHA256);
    assert!(
        meta["tensor_layout"].contains("\"layer_1.weight\"")
            && meta["tensor_layout"].contains("[128,98]")
    );

    // The model directory of a DSDL deployment is served directly: the .pt is converted in memory.
    let registry = Registry::new();
    assert_eq!(
        registry.load_dir(&dir.path().join("nested")).unwrap(),
        vec![ESCU_MODEL_NAME.to_string()]
    );
}

#[test]
fn unusable_inputs_get_one_line_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();

    let junk = write(dir.path(), "junk.bin", b"hello, not an archive");
    assert!(
        err_of(&junk).contains("neither a PyTorch .pt file (a zip archive) nor a .tar.gz artifact")
    );

    // A tarball without a .pt names what it holds.
    let mut tar_builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_cksum();
    tar_builder
        .append_data(&mut header, "model/readme.txt", &b"hello"[..])
        .unwrap();
    let tar_bytes = tar_builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    let no_pt = write(dir.path(), "empty.tar.gz", &gz.finish().unwrap());
    let e = err_of(&no_pt);
    assert!(
        e.contains("no .pt file in") && e.contains("model/readme.txt"),
        "{e}"
    );

    let missing = write(
        dir.path(),
        "missing.pt",
        &edited_pt(|d| replace_once(d, b"layer_2.weight", b"layer_2.weigxx")),
    );
    let e = err_of(&missing);
    assert!(e.contains("missing tensor `layer_2.weight`"), "{e}");

    // Shape (128, 98) -> (128, 97) in the pickle.
    let narrow = write(
        dir.path(),
        "narrow.pt",
        &edited_pt(|d| replace_once(d, b"K\x80Kb\x86", b"K\x80Ka\x86")),
    );
    let e = err_of(&narrow);
    assert!(
        e.contains("tensor `layer_1.weight` has shape [128, 97] where [128, 98] was expected"),
        "{e}"
    );

    let truncated = write(dir.path(), "truncated.pt", &published_pt()[..4000]);
    let e = err_of(&truncated);
    assert!(e.contains("cannot decode the PyTorch checkpoint"), "{e}");

    let e = err_of(&dir.path().join("does-not-exist.tar.gz"));
    assert!(
        e.contains("cannot read") && e.contains("does-not-exist.tar.gz"),
        "{e}"
    );
}
