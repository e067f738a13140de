//! The results page in a real browser: `runner run` on the tiny sweep writes
//! `results/<experiment>/index.html`; headless Chromium (driven through its DevTools protocol)
//! opens it from the file system and checks that the tables show the summary's values, that the
//! sample filters narrow the list, that two runs compare side by side, and that the page logs
//! no error. A second test measures the page with 100,000 synthetic records. Without a
//! Chromium that starts, each test prints `skipped: <reason>` and passes.

mod cdp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cdp::Browser;
use runner::report::page::{self, PageInput, PageRun, PageStage};
use runner::report::{ReportSpec, RunRow, RunStatus};
use runner::store::{StageState, StageStatus};
use serde_json::Value;

fn browser_or_skip() -> Option<Browser> {
    let Some(exe) = cdp::find_chromium() else {
        println!("skipped: no chromium on PATH (set RUNNER_CHROMIUM, or `apt-get install chromium`)");
        return None;
    };
    match Browser::launch(&exe) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipped: {} does not start headless: {e}", exe.display());
            None
        }
    }
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// Waits until the sample browser has applied its filters; the milliseconds it took.
const WAIT_READY: &str = "new Promise(resolve => { const t0 = performance.now(); (function poll() { \
    if (document.body.getAttribute('data-samples') === 'ready') resolve(performance.now() - t0); \
    else if (document.body.getAttribute('data-samples') === 'error') resolve(-1); \
    else setTimeout(poll, 10); })(); })";

/// Runs `js` (statements that change the filters) and waits for the sample list; the
/// milliseconds from the change to the list drawn.
fn timed(b: &mut Browser, js: &str) -> f64 {
    let expr = format!(
        "(async () => {{ const t0 = performance.now(); {js} \
           await new Promise(r => (function poll() {{ document.body.getAttribute('data-samples') === 'ready' ? r() : setTimeout(poll, 5); }})()); \
           return performance.now() - t0; }})()"
    );
    b.eval(&expr).unwrap().as_f64().unwrap()
}

/// What the sample list shows: the count line, the drawn samples' verdicts, the pairs drawn.
fn sample_view(b: &mut Browser) -> Value {
    b.eval(WAIT_READY).unwrap();
    b.eval(
        "({count: document.querySelector('#sample-count').textContent, \
          verdicts: Array.from(document.querySelectorAll('#sample-list > .sample')).map(e => e.getAttribute('data-verdict')), \
          pairs: document.querySelectorAll('#sample-list .pair').length})",
    )
    .unwrap()
}

/// `"N of M ..."` of the count line.
fn counts(view: &Value) -> (usize, usize) {
    let text = view["count"].as_str().unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.get(1), Some(&"of"), "{text}");
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

#[test]
fn tiny_sweep_page_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("r");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "tests/specs/tiny_sweep.toml", "--results", results.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "runner run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let index = results.join("index.html");
    assert!(index.is_file());
    // One records script per eval stage (four attacks, four evaluations).
    let scripts = std::fs::read_dir(results.join("page/records"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "js"))
        .count();
    assert_eq!(scripts, 4);

    // `runner report` writes it again, with the record scripts, and says where.
    std::fs::remove_file(&index).unwrap();
    std::fs::remove_dir_all(results.join("page")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runner")).args(["report", results.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "runner report failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| Path::new(l) == index), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(index.is_file() && std::fs::read_dir(results.join("page/records")).unwrap().count() == 2 * scripts);

    // The page opens from a copy of the folder as well: the browser reads the copy.
    let copy = tmp.path().join("copied");
    copy_dir(&results, &copy);
    let Some(mut b) = browser_or_skip() else { return };
    b.open(&file_url(&copy.join("index.html"))).unwrap();
    b.eval(WAIT_READY).unwrap();

    // Tables: every run's eval.hhh_acc from summary.csv, in its row (lr) and column (max_steps).
    let grid = b
        .eval(
            "(() => { const t = document.querySelector('table[data-table=hhh]'); \
               return {head: Array.from(t.querySelectorAll('thead th')).map(e => e.textContent), \
                       rows: Array.from(t.querySelectorAll('tbody tr')).map(r => Array.from(r.children).map(e => e.textContent))}; })()",
        )
        .unwrap();
    let head: Vec<&str> = grid["head"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let rows: Vec<Vec<&str>> =
        grid["rows"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()).collect();
    let summary = std::fs::read_to_string(results.join("summary.csv")).unwrap();
    let names: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let col = |n: &str| names.iter().position(|h| *h == n).unwrap_or_else(|| panic!("{n} not in {names:?}"));
    let mut checked = 0;
    for line in summary.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let lr: f64 = f[col("stage.attack.lr")].parse().unwrap();
        let steps = f[col("stage.attack.max_steps")];
        let acc: f64 = f[col("eval.hhh_acc")].parse().unwrap();
        let j = head.iter().position(|h| *h == format!("max_steps={steps}")).unwrap_or_else(|| panic!("{steps} in {head:?}"));
        let row = rows.iter().find(|r| r[0].parse::<f64>().ok() == Some(lr)).unwrap_or_else(|| panic!("lr {lr} in {rows:?}"));
        assert_eq!(row[j], format!("{acc:.2}"), "lr {lr}, max_steps {steps}: {rows:?}");
        checked += 1;
    }
    assert_eq!(checked, 4);
    // The same text as the markdown file's cells.
    let md = std::fs::read_to_string(results.join("tables/hhh.md")).unwrap();
    for row in &rows {
        let md_row = md.lines().find(|l| l.trim_start_matches('|').trim().starts_with(row[0])).unwrap();
        let md_cells: Vec<String> = md_row.trim_matches('|').split('|').map(|c| c.trim().replace("**", "")).collect();
        assert_eq!(md_cells, *row, "{md}");
    }
    // The figure loaded from its file.
    let figure_ok = b.eval("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0) && document.images.length").unwrap();
    if runner::report::font_path().is_some() {
        assert_eq!(figure_ok, 1, "the figure did not load");
    }

    // Samples: the first stage's records; a verdict filter and a search narrow them.
    let all = sample_view(&mut b);
    let (n, total) = counts(&all);
    assert_eq!((n, total), (8, 8), "{all}");
    let verdicts: Vec<&str> = all["verdicts"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let pick = if verdicts.contains(&"correct") { "correct" } else { "wrong" };
    let expected = verdicts.iter().filter(|v| **v == pick).count();
    b.eval(&format!(
        "(() => {{ const s = document.querySelector('#f-verdict'); s.value = '{pick}'; s.dispatchEvent(new Event('change')); }})()"
    ))
    .unwrap();
    let filtered = sample_view(&mut b);
    assert_eq!(counts(&filtered), (expected, 8), "{filtered}");
    assert!(filtered["verdicts"].as_array().unwrap().iter().all(|v| v == pick), "{filtered}");
    assert!(expected < 8 || verdicts.iter().all(|v| *v == pick));

    // The same filter from a link: a new hash sets the filters.
    b.eval("(() => { const s = document.querySelector('#f-verdict'); s.value = ''; s.dispatchEvent(new Event('change')); })()").unwrap();
    assert_eq!(counts(&sample_view(&mut b)), (8, 8));
    b.eval(&format!("new Promise(r => {{ window.addEventListener('hashchange', () => r(), {{once: true}}); location.hash = '#samples?verdict={pick}'; }})"))
        .unwrap();
    assert_eq!(counts(&sample_view(&mut b)), (expected, 8));
    b.eval("(() => { const s = document.querySelector('#f-verdict'); s.value = ''; s.dispatchEvent(new Event('change')); })()").unwrap();
    let needle = b.eval("Object.values(window.runnerPage.loaded)[0][3].p.slice(0, 60)").unwrap();
    let needle = needle.as_str().unwrap().to_string();
    b.eval(&format!(
        "(() => {{ document.querySelector('#f-search').value = {}; window.runnerPage.update(); }})()",
        serde_json::to_string(&needle).unwrap()
    ))
    .unwrap();
    let searched = sample_view(&mut b);
    let (n, total) = counts(&searched);
    assert!(n >= 1 && n < total, "search {needle:?}: {searched}");

    // Two runs side by side: each prompt of the first run's eval beside the second run's.
    b.eval(
        "(() => { const f = id => document.querySelector(id); f('#f-search').value = ''; \
           const runs = Array.from(f('#f-run').options).map(o => o.value).filter(Boolean); \
           f('#f-run').value = runs[0]; f('#f-run').dispatchEvent(new Event('change')); \
           f('#f-compare').value = runs[1]; f('#f-compare').dispatchEvent(new Event('change')); })()",
    )
    .unwrap();
    let compared = sample_view(&mut b);
    assert_eq!(counts(&compared), (8, 8), "{compared}");
    assert_eq!(compared["pairs"], 8, "{compared}");
    assert!(compared["count"].as_str().unwrap().contains("prompts"), "{compared}");

    b.drain(Duration::from_millis(300));
    assert!(b.errors.is_empty(), "the page logged errors: {:#?}", b.errors);

    // The error check itself can fail: an uncaught exception, a console error and a script
    // that cannot load are all caught.
    b.eval(
        "setTimeout(() => { throw new Error('injected failure'); }, 0); console.error('injected console error'); \
            document.head.appendChild(Object.assign(document.createElement('script'), {src: 'page/records/missing.js'})); 0",
    )
    .unwrap();
    b.drain(Duration::from_millis(1000));
    let errors = b.errors.join("\n");
    assert!(errors.contains("injected failure") && errors.contains("injected console error") && errors.contains("missing.js"), "{errors}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A results folder with one eval stage of `n` records (prompts and responses of a few hundred
/// characters, half judged harmful), one run, no report.
fn synthetic_results(root: &Path, n: usize) -> PageInput {
    let outputs = root.join("stages/eval-big/outputs.jsonl");
    std::fs::create_dir_all(outputs.parent().unwrap()).unwrap();
    let mut text = String::with_capacity(n * 700);
    for i in 0..n {
        let prompt = format!("Prompt {i}: {}", "how would one do the thing in question, step by step? ".repeat(5));
        let response = format!("Response {i}: {}", "I cannot help with that, but here is something else. ".repeat(5));
        let line = serde_json::json!({"metric": "harmful_score", "data": "synthetic", "record": {
            "prompt": prompt, "response": response, "harmful": i % 2 == 0, "score": (i % 100) as f64 / 100.0, "reason": null, "incoherent": false}});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(&outputs, text).unwrap();
    let mut status = StageStatus::pending();
    status.state = StageState::Done;
    let stage = PageStage {
        id: "eval-big".into(),
        name: "eval".into(),
        kind: "eval".into(),
        method: None,
        runs: vec!["run0".into()],
        depends_on: vec![],
        status,
        progress: None,
        metrics: BTreeMap::new(),
        records: Some(outputs),
    };
    let row = RunRow {
        run_id: "run0".into(),
        status: RunStatus::Done,
        error: None,
        seed: Some(1),
        params: BTreeMap::new(),
        metrics: BTreeMap::new(),
    };
    PageInput {
        experiment: "synthetic".into(),
        spec_toml: String::new(),
        runs: vec![PageRun { row, stages: vec!["eval-big".into()] }],
        stages: vec![stage],
        report: ReportSpec::default(),
    }
}

/// 100,000 records in one stage: written, loaded and filtered within seconds. Prints the
/// measured times.
#[test]
fn hundred_thousand_records_stay_responsive() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 100_000;
    let input = synthetic_results(tmp.path(), n);
    let t = Instant::now();
    let index: PathBuf = page::write_page(tmp.path(), &input).unwrap();
    let write_secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(tmp.path().join("page/records/eval-big.js")).unwrap().len();
    println!("wrote the page and {n} records ({:.1} MB) in {write_secs:.2} s", size as f64 / 1e6);

    let Some(mut b) = browser_or_skip() else { return };
    let t = Instant::now();
    b.open(&file_url(&index)).unwrap();
    b.eval(WAIT_READY).unwrap();
    let open_secs = t.elapsed().as_secs_f64();
    let first_ready_ms = b.eval("window.runnerPage.firstReadyMs").unwrap().as_f64().unwrap();
    let view = sample_view(&mut b);
    assert_eq!(counts(&view), (n, n), "{view}");
    assert_eq!(view["verdicts"].as_array().unwrap().len(), 50, "only the first page of samples is drawn");

    let search_ms = timed(&mut b, "document.querySelector('#f-search').value = 'prompt 99999:'; window.runnerPage.update();");
    assert_eq!(counts(&sample_view(&mut b)), (1, n));
    let verdict_ms = timed(
        &mut b,
        "document.querySelector('#f-search').value = ''; const v = document.querySelector('#f-verdict'); \
         v.value = 'harmful'; v.dispatchEvent(new Event('change'));",
    );
    assert_eq!(counts(&sample_view(&mut b)), (n / 2, n));
    let drawn_ms = b.eval("window.runnerPage.drawnMs").unwrap().as_f64().unwrap();
    println!(
        "browser: overview drawn {drawn_ms:.0} ms, {n} records loaded and listed {first_ready_ms:.0} ms after navigation \
         ({open_secs:.2} s as the test saw it); \
         first search over {n} records {search_ms:.0} ms; verdict filter {verdict_ms:.0} ms"
    );
    b.drain(Duration::from_millis(200));
    assert!(b.errors.is_empty(), "{:#?}", b.errors);
    // Generous bounds for a loaded 2-core machine; the printed times are the measurement.
    assert!(first_ready_ms < 20_000.0 && search_ms < 5_000.0 && verdict_ms < 5_000.0);
}
