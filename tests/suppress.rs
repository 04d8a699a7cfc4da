//! Allowlist and mutes through the real binary: suppressed rows keep their probability, get
//! label 0 and say why; a bad list stops start-up with the file and line named.

mod common;

use common::*;

#[test]
fn allowlisted_and_muted_rows_say_why_and_others_are_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let allowlist = dir.path().join("allow.txt");
    std::fs::write(
        &allowlist,
        "# ours\ncorp-telemetry.example  # vendor agent\n",
    )
    .unwrap();
    let mutes = dir.path().join("mutes.txt");
    std::fs::write(&mutes, "10.9.0.0/16  # red team lab\n").unwrap();
    let server = ServedBinary::start(&[
        "--enable-https=false".as_ref(),
        "--allowlist".as_ref(),
        allowlist.as_os_str(),
        "--muted-sources".as_ref(),
        mutes.as_os_str(),
    ]);
    // The same tunnel session (80 encoded names) from an unmuted and from a muted source, each in
    // a request of its own: the features, so the probabilities, are the same. (Two sources
    // sending the very same random names in one request look like a shared service, not a
    // tunnel.)
    let tunnel = |i: usize| {
        format!(
            "{:032x}.t.exfil-example.net",
            (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15_f39c
        )
    };
    let batch = |src: &str| {
        let mut csv = String::from("src,query,rank\n");
        for i in 0..80 {
            csv.push_str(&format!("{src},{},1\n", tunnel(i)));
        }
        csv.push_str("10.1.1.1,k2h4nd8s7dj3k4l5m6n7b8v9c0x1z2a3.corp-telemetry.example,1\n");
        csv.push_str("10.1.1.1,r4---sn-5hne6nzy.googlevideo.com,1\n");
        csv.push_str(&format!("10.1.1.1,{},2\n", tunnel(0)));
        csv
    };
    let apply = |csv: &str| {
        let answer = unverified_tls_client()
            .post(format!("http://{}/apply", server.address))
            .header("Authorization", TOKEN)
            .json(&escu_envelope_for(csv, "dnsexfil_v7"))
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap();
        let (header, rows) = results_of(&answer);
        assert_eq!(header.last().unwrap(), "suppressed_by");
        rows
    };
    let (open_rows, muted_rows) = (apply(&batch("10.8.4.4")), apply(&batch("10.9.4.4")));
    for i in 0..80 {
        let (open, muted) = (&open_rows[i], &muted_rows[i]);
        assert_eq!(open[5], "");
        assert_eq!(
            open[4], "1.0",
            "the session alerts from an unmuted source: {open:?}"
        );
        assert_eq!(
            muted[5],
            "muted source 10.9.0.0/16 (mutes.txt: red team lab)"
        );
        // Same traffic, same probability: only the label and the reason differ.
        assert_eq!(
            (muted[3].as_str(), muted[4].as_str()),
            (open[3].as_str(), "0.0")
        );
    }
    for rows in [&open_rows, &muted_rows] {
        assert_eq!(
            rows[80][5],
            "allowlist corp-telemetry.example (allow.txt: vendor agent)"
        );
        assert!(
            rows[81][5].starts_with("allowlist googlevideo.com (built-in"),
            "{}",
            rows[81][5]
        );
        assert_eq!(
            rows[82][5], "",
            "history rows are not scored, so never suppressed"
        );
    }

    // The REST API gives the same reasons, with the label forced to 0 and the probability kept.
    for rows in [&open_rows, &muted_rows] {
        let events: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!({"src": r[0], "query": r[1], "rank": r[2].parse::<u32>().unwrap()}))
            .collect();
        let scored = unverified_tls_client()
            .post(format!(
                "http://{}/v1/score?model=dnsexfil_v7",
                server.address
            ))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "events": events }))
            .send()
            .unwrap()
            .json::<serde_json::Value>()
            .unwrap();
        let results = scored["results"].as_array().unwrap();
        assert_eq!(results.len(), rows.len());
        for (i, r) in results.iter().enumerate() {
            let want = rows[i][5].as_str();
            assert_eq!(r["reason"].as_str().unwrap_or(""), want, "event {i}");
            if r["scored"] == true {
                let p = r["probability"].as_f64().unwrap() as f32;
                assert_eq!(p, rows[i][3].parse::<f32>().unwrap(), "event {i}");
                let alert = p >= 0.5 && want.is_empty();
                assert_eq!(r["label"], u8::from(alert), "event {i}");
            }
        }
    }
}

#[test]
fn a_bad_allowlist_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let allowlist = dir.path().join("allow.txt");
    std::fs::write(&allowlist, "good.example\nnot a domain\n").unwrap();
    let out = dnsexfil_command()
        .args([
            "serve",
            "--port",
            "0",
            "--enable-https=false",
            "--allowlist",
        ])
        .arg(&allowlist)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("allow.txt line 2: `not a domain` is not a domain"),
        "{stderr}"
    );
}
