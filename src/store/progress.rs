//! Progress of the units of work inside a stage (training steps, generation batches), for the
//! person at a terminal, for logs, and for the runner that started the stage.
//!
//! On a terminal the stage shows a progress bar. When stderr is not a terminal (the scheduler's
//! `stderr.log`, nohup, CI, Slurm) it prints a plain line at a steady interval instead, and at
//! the end: `stage align: step 12/48 loss 1.2345 412 tok/s eta 3m05s`. Either way it keeps
//! `progress.json` in the stage directory current (at most once a second, and at the end), which
//! the parent runner reads to report every running stage.

use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{read_json, write_json};

/// How often plain progress lines are printed unless `RUNNER_PROGRESS_SECS` says otherwise.
pub const DEFAULT_LINE_INTERVAL: Duration = Duration::from_secs(30);

/// `progress.json` is rewritten at most this often (and once more at the end).
const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The content of `progress.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    /// The stage's name in the spec (e.g. `align`).
    pub stage: String,
    /// What is counted, singular (`step`, `batch`).
    pub unit: String,
    pub done: u64,
    pub total: u64,
    /// The loss of the last unit that reported one.
    pub loss: Option<f64>,
    /// Tokens processed per second since the start; none before any token was counted.
    pub tokens_per_sec: Option<f64>,
    pub elapsed_secs: f64,
    /// Time left at the rate so far; none before the first unit is done.
    pub eta_secs: Option<f64>,
    /// Written by [`StepProgress::finish`].
    pub finished: bool,
}

impl ProgressSnapshot {
    /// The snapshot in a stage directory, if the stage has written one.
    pub fn read(stage_dir: &Path) -> Option<Self> {
        let path = super::StageDir::new(stage_dir).progress();
        path.exists().then(|| read_json(&path).ok()).flatten()
    }

    /// One plain line: `stage LABEL: step 12/48 loss 1.2345 412 tok/s eta 3m05s`.
    pub fn line(&self, label: &str) -> String {
        let mut s = format!("stage {label}: {} {}/{}", self.unit, self.done, self.total);
        if let Some(loss) = self.loss {
            s.push_str(&format!(" loss {loss:.4}"));
        }
        if let Some(rate) = self.tokens_per_sec {
            s.push_str(&format!(" {rate:.0} tok/s"));
        }
        match (self.finished, self.eta_secs) {
            (true, _) => s.push_str(&format!(" done in {}", format_duration(self.elapsed_secs))),
            (false, Some(eta)) => s.push_str(&format!(" eta {}", format_duration(eta))),
            (false, None) => {}
        }
        s
    }
}

/// A duration as people read it in logs: `45s`, `3m05s`, `2h07m`.
pub fn format_duration(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 { secs.round() as u64 } else { 0 };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The plain-line interval from `RUNNER_PROGRESS_SECS` (seconds, may be fractional); the
/// default when unset or not a non-negative number.
pub fn line_interval(var: Option<&str>) -> Duration {
    var.and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_LINE_INTERVAL)
}

/// Where progress is shown besides `progress.json`.
enum Display {
    Bar(indicatif::ProgressBar),
    Lines { every: Duration },
}

struct Counters {
    /// Where plain lines go (stderr; a buffer in tests).
    sink: Box<dyn Write + Send>,
    done: u64,
    tokens: u64,
    loss: Option<f64>,
    last_write: Option<Instant>,
    last_line: Instant,
}

/// Progress of one stage's units of work. `step` is cheap: it writes the file at most once a
/// second and prints at the line interval.
pub struct StepProgress {
    dir: PathBuf,
    stage: String,
    unit: String,
    total: u64,
    start: Instant,
    display: Display,
    counters: Mutex<Counters>,
}

impl StepProgress {
    /// Progress of `total` units for the stage in `stage_dir`: a bar when stderr is a terminal,
    /// plain lines every `RUNNER_PROGRESS_SECS` (default 30) seconds when it is not.
    pub fn new(stage_dir: &Path, stage_name: &str, total: u64, unit: &str) -> StepProgress {
        let display = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            let template = format!("{{prefix}} [{{elapsed_precise}}] {{bar:30}} {unit} {{pos}}/{{len}} {{per_sec}} {{msg}}");
            bar.set_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"));
            bar.set_prefix(stage_name.to_string());
            Display::Bar(bar)
        } else {
            let every = line_interval(std::env::var("RUNNER_PROGRESS_SECS").ok().as_deref());
            Display::Lines { every }
        };
        Self::with_display(stage_dir, stage_name, total, unit, display, Box::new(std::io::stderr()))
    }

    fn with_display(
        stage_dir: &Path,
        stage_name: &str,
        total: u64,
        unit: &str,
        display: Display,
        sink: Box<dyn Write + Send>,
    ) -> StepProgress {
        let now = Instant::now();
        let p = StepProgress {
            dir: stage_dir.to_path_buf(),
            stage: stage_name.to_string(),
            unit: unit.to_string(),
            total,
            start: now,
            display,
            counters: Mutex::new(Counters { sink, done: 0, tokens: 0, loss: None, last_write: None, last_line: now }),
        };
        // The parent sees the total from the start.
        let mut c = p.counters.lock().expect("progress counters");
        p.write(&mut c, false);
        drop(c);
        p
    }

    /// One unit done, with its loss (if it has one) and the tokens it processed.
    pub fn step(&self, loss: Option<f64>, tokens: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.done += 1;
        c.tokens += tokens;
        if loss.is_some() {
            c.loss = loss;
        }
        match &self.display {
            Display::Bar(bar) => {
                bar.inc(1);
                if let Some(l) = loss {
                    bar.set_message(format!("loss {l:.4}"));
                }
            }
            Display::Lines { every } => {
                if c.last_line.elapsed() >= *every {
                    c.last_line = Instant::now();
                    self.print_line(&mut c, false);
                }
            }
        }
        if c.last_write.is_none_or(|t| t.elapsed() >= WRITE_INTERVAL) {
            self.write(&mut c, false);
        }
    }

    /// The last line and the final `progress.json`.
    pub fn finish(self) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match &self.display {
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Lines { .. } => self.print_line(&mut c, true),
        }
        self.write(&mut c, true);
    }

    fn snapshot(&self, c: &Counters, finished: bool) -> ProgressSnapshot {
        let elapsed = self.start.elapsed().as_secs_f64();
        let tokens_per_sec = (c.tokens > 0 && elapsed > 0.0).then(|| c.tokens as f64 / elapsed);
        let eta_secs = (c.done > 0).then(|| elapsed / c.done as f64 * self.total.saturating_sub(c.done) as f64);
        ProgressSnapshot {
            stage: self.stage.clone(),
            unit: self.unit.clone(),
            done: c.done,
            total: self.total,
            loss: c.loss,
            tokens_per_sec,
            elapsed_secs: elapsed,
            eta_secs,
            finished,
        }
    }

    fn print_line(&self, c: &mut Counters, finished: bool) {
        let line = self.snapshot(c, finished).line(&self.stage);
        // A closed stderr must not stop the stage.
        let _ = writeln!(c.sink, "{line}");
    }

    fn write(&self, c: &mut Counters, finished: bool) {
        c.last_write = Some(Instant::now());
        // Progress is advisory: a full disk shows up where the stage writes its outputs.
        if let Err(e) = write_json(&super::StageDir::new(&self.dir).progress(), &self.snapshot(c, finished)) {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn snapshot(done: u64, loss: Option<f64>, rate: Option<f64>, eta: Option<f64>, finished: bool) -> ProgressSnapshot {
        ProgressSnapshot {
            stage: "align".into(),
            unit: "step".into(),
            done,
            total: 48,
            loss,
            tokens_per_sec: rate,
            elapsed_secs: 125.0,
            eta_secs: eta,
            finished,
        }
    }

    #[test]
    fn plain_line_format() {
        assert_eq!(
            snapshot(12, Some(1.23451), Some(412.4), Some(185.0), false).line("align"),
            "stage align: step 12/48 loss 1.2345 412 tok/s eta 3m05s"
        );
        assert_eq!(snapshot(0, None, None, None, false).line("align-1f"), "stage align-1f: step 0/48");
        assert_eq!(snapshot(48, Some(0.5), None, Some(0.0), true).line("align"), "stage align: step 48/48 loss 0.5000 done in 2m05s");
    }

    #[test]
    fn durations_and_interval() {
        assert_eq!(format_duration(0.4), "0s");
        assert_eq!(format_duration(59.6), "1m00s");
        assert_eq!(format_duration(7620.0), "2h07m");
        assert_eq!(format_duration(f64::NAN), "0s");
        assert_eq!(line_interval(None), DEFAULT_LINE_INTERVAL);
        assert_eq!(line_interval(Some("5")), Duration::from_secs(5));
        assert_eq!(line_interval(Some("0.5")), Duration::from_millis(500));
        assert_eq!(line_interval(Some("-1")), DEFAULT_LINE_INTERVAL);
        assert_eq!(line_interval(Some("often")), DEFAULT_LINE_INTERVAL);
    }

    #[test]
    fn writes_progress_json_and_plain_lines() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Shared::default();
        let display = Display::Lines { every: Duration::ZERO };
        let p = StepProgress::with_display(dir.path(), "attack", 4, "step", display, Box::new(sink.clone()));
        let first = ProgressSnapshot::read(dir.path()).unwrap();
        assert_eq!((first.done, first.total, first.finished, first.eta_secs), (0, 4, false, None));
        p.step(Some(2.0), 100);
        p.step(None, 50);
        p.step(Some(1.5), 50);
        // The file is rewritten at most once a second: it still holds the start.
        let mid = ProgressSnapshot::read(dir.path()).unwrap();
        assert_eq!((mid.done, mid.loss), (0, None));
        p.finish();
        let end = ProgressSnapshot::read(dir.path()).unwrap();
        assert_eq!((end.done, end.total, end.loss, end.finished), (3, 4, Some(1.5), true));
        assert_eq!(end.unit, "step");
        assert_eq!(end.stage, "attack");
        let rate = end.tokens_per_sec.unwrap();
        assert!((rate - 200.0 / end.elapsed_secs).abs() < 1e-6 * rate, "{rate}");
        assert!(end.eta_secs.unwrap() > 0.0, "one step is left");
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "a line per step at interval 0, and the last: {text}");
        assert!(lines[0].starts_with("stage attack: step 1/4 loss 2.0000 ") && lines[0].contains(" tok/s eta "), "{text}");
        assert!(lines[1].starts_with("stage attack: step 2/4 loss 2.0000 "), "the last loss is kept: {text}");
        assert!(lines[3].starts_with("stage attack: step 3/4 loss 1.5000 ") && lines[3].contains(" done in "), "{text}");
    }

    #[test]
    fn lines_wait_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Shared::default();
        let display = Display::Lines { every: Duration::from_secs(3600) };
        let p = StepProgress::with_display(dir.path(), "eval", 10, "batch", display, Box::new(sink.clone()));
        for _ in 0..10 {
            p.step(None, 0);
        }
        assert!(sink.0.lock().unwrap().is_empty(), "no line before the interval");
        p.finish();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("stage eval: batch 10/10 done in ") && text.lines().count() == 1, "{text}");
    }
}
