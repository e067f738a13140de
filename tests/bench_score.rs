//! `runner bench score` on the tiny fixture model: both forms run and score the same choices to
//! the same total log-likelihood (the shared tokens computed once or every sequence whole).

use std::process::Command;

fn bench(extra: &[&str]) -> (String, f64) {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny/llama_gqa");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["bench", "score", "--model", model, "--questions", "3", "--shared-len", "20", "--question-len", "4"])
        .args(["--choices", "3", "--choice-len", "2", "--repeats", "1", "--batch", "2"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let total = stderr
        .split("sum of the log-likelihoods ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no total in {stderr}"));
    (stdout, total)
}

#[test]
fn shared_and_full_scoring_agree() {
    let (cached_line, cached) = bench(&[]);
    let (full_line, full) = bench(&["--full"]);
    assert!(cached_line.starts_with("bench score:") && cached_line.contains("choices/s="), "{cached_line}");
    assert!(full_line.contains("full=true"), "{full_line}");
    assert!(cached < 0.0 && (cached - full).abs() <= 1e-4 * full.abs(), "{cached} vs {full}");
}
