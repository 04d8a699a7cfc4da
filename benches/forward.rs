//! The forward pass of a CSV's rank-1 rows, as `/apply` computes their features, timed in a
//! process that `benches/http_roundtrip.py` drives, so that it runs between the HTTP requests
//! of the same run. It also writes the features and the network's weights as raw float32
//! files for the reference BLAS forward pass (numpy) in that script.
//!
//! `forward <csv> <out-dir> <name>=<model>...`, `<model>` being `escu` (the published artifact
//! in tests/fixtures/escu) or `default` (the built-in model). Writes `<out-dir>/<name>.json`
//! (shapes and files) and the raw files, prints `ready`, then for each line `<name> <runs>` on
//! its standard input runs the forward pass of all the rank-1 rows at once `runs` times and
//! prints the times in milliseconds on one line (`<name> <runs> candle`: through candle's
//! tensors rather than the service's own forward pass). Under `cargo bench` (no arguments) it runs
//! once on a small synthetic batch as a smoke test.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use dnsexfil::dsdl::table::Table;
use dnsexfil::model::convert::{convert, ESCU_MODEL_NAME};
use dnsexfil::model::Model;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn load(which: &str) -> Model {
    match which {
        "escu" => {
            let artifact = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/fixtures/escu/{ESCU_MODEL_NAME}.tar.gz"));
            let converted = convert(&artifact, None).expect("the published ESCU artifact");
            Model::from_bytes(&converted.bytes, "escu").unwrap()
        }
        "default" => dnsexfil::model::default_model().unwrap(),
        other => panic!("unknown model `{other}` (escu or default)"),
    }
}

/// The features of the rank-1 rows of `csv`, row-major, as `/apply` computes them.
fn features(model: &Model, csv: &str) -> (Vec<f32>, usize) {
    let table = Table::parse(csv).expect("a CSV with src, query and rank");
    let (rows, scored, _) = table.feature_rows();
    let m = model.info.schema.compute(&rows, &scored);
    (m.values, m.rows)
}

fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

struct Loaded {
    name: String,
    model: Model,
    values: Vec<f32>,
    rows: usize,
}

fn main() {
    // As `dnsexfil serve` does at start-up.
    dnsexfil::model::fix_candle_threads(dnsexfil::http::state::default_compute_threads());
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        // `cargo bench` / `cargo test --benches`: a smoke run.
        let model = load("escu");
        let csv = dnsexfil::data::synth::dsdl_csv(1_000, 42);
        let (values, rows) = features(&model, &csv);
        let p = model.mlp.predict(&values, rows).unwrap();
        println!("forward smoke run: {} rows scored", p.len());
        return;
    }
    let csv = std::fs::read_to_string(&args[0]).expect("the CSV file");
    let out = Path::new(&args[1]);
    std::fs::create_dir_all(out).unwrap();
    let mut loaded = Vec::new();
    for spec in &args[2..] {
        let (name, which) = spec.split_once('=').expect("<name>=<model>");
        let model = load(which);
        let (values, rows) = features(&model, &csv);
        let shape = model.mlp.shape();
        write_f32(&out.join(format!("{name}.x.f32")), &values);
        let tensors = model.mlp.tensors().unwrap();
        let mut manifest = serde_json::json!({
            "rows": rows,
            "input": shape.input,
            "x": format!("{name}.x.f32"),
            "tensors": {},
        });
        for (tensor_name, tensor) in &tensors {
            let file = format!("{name}.{tensor_name}.f32");
            let flat = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            write_f32(&out.join(&file), &flat);
            manifest["tensors"][tensor_name] = serde_json::json!({
                "file": file,
                "shape": tensor.dims(),
            });
        }
        std::fs::write(out.join(format!("{name}.json")), manifest.to_string()).unwrap();
        loaded.push(Loaded {
            name: name.to_string(),
            model,
            values,
            rows,
        });
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let (Some(name), Some(runs)) = (words.next(), words.next()) else {
            continue;
        };
        let runs: usize = runs.parse().expect("a number of runs");
        // `<name> <runs> candle`: through candle's tensors instead of `predict`'s own pass.
        let through_candle = words.next() == Some("candle");
        let l = loaded
            .iter()
            .find(|l| l.name == name)
            .expect("a model named on the command line");
        let times: Vec<String> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let p = if through_candle {
                    l.model.mlp.predict_candle(&l.values, l.rows)
                } else {
                    l.model.mlp.predict(&l.values, l.rows)
                };
                std::hint::black_box(p.unwrap());
                format!("{:.3}", t.elapsed().as_secs_f64() * 1e3)
            })
            .collect();
        println!("{}", times.join(" "));
        std::io::stdout().flush().unwrap();
    }
}
