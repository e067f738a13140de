//! A headless Chromium driven through its DevTools protocol over `--remote-debugging-pipe`:
//! JSON messages ending in a NUL byte, which Chromium reads on fd 3 and writes on fd 4. Enough
//! for the tests: open a page, evaluate JavaScript in it, and collect console errors and
//! uncaught exceptions.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A page in a headless browser.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events of the page not consumed yet.
    events: VecDeque<Value>,
    /// Console errors, uncaught exceptions and error log entries seen so far.
    pub errors: Vec<String>,
    stderr_path: PathBuf,
    _profile: tempfile::TempDir,
}

/// The Chromium executable: `RUNNER_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RUNNER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Browser {
    /// Starts the browser with one blank page, its runtime, log and page events enabled. The
    /// error says why it could not (the caller skips then).
    pub fn launch(exe: &Path) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let stderr_path = profile.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        // Pipes are close-on-exec; dup2 onto fds 3 and 4 in the child clears that for the copies.
        let (ours_read, theirs_write) = std::io::pipe().map_err(|e| e.to_string())?;
        let (theirs_read, ours_write) = std::io::pipe().map_err(|e| e.to_string())?;
        let theirs_read: OwnedFd = theirs_read.into();
        let theirs_write: OwnedFd = theirs_write.into();
        let (r, w) = (theirs_read.as_raw_fd(), theirs_write.as_raw_fd());
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both above 4 first, so neither is overwritten by the other's dup2.
                let r2 = libc::fcntl(r, libc::F_DUPFD, 10);
                let w2 = libc::fcntl(w, libc::F_DUPFD, 10);
                if r2 < 0 || w2 < 0 || libc::dup2(r2, 3) < 0 || libc::dup2(w2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", exe.display()))?;
        drop((theirs_read, theirs_write));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(ours_read);
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        buf.pop_if(|b| *b == 0);
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to_browser: ours_write,
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            events: VecDeque::new(),
            errors: Vec::new(),
            stderr_path,
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"})).map_err(|e| b.explain(&e))?;
        let target_id = target["targetId"].as_str().ok_or("no targetId")?.to_string();
        let attached =
            b.call_browser("Target.attachToTarget", json!({"targetId": target_id, "flatten": true})).map_err(|e| b.explain(&e))?;
        b.session = attached["sessionId"].as_str().ok_or("no sessionId")?.to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(domain, json!({})).map_err(|e| b.explain(&e))?;
        }
        Ok(b)
    }

    fn explain(&self, e: &str) -> String {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
        format!("{e}; browser stderr: {}", tail[tail.len().saturating_sub(5)..].join(" | "))
    }

    fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).map_err(|e| format!("{method}: writing to the browser: {e}"))?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = match self.from_browser.recv_timeout(left) {
                Ok(v) => v,
                Err(RecvTimeoutError::Timeout) => return Err(format!("{method}: no answer within {TIMEOUT:?}")),
                Err(RecvTimeoutError::Disconnected) => return Err(format!("{method}: the browser closed the pipe")),
            };
            if v["id"].as_u64() == Some(id) {
                return match v.get("error") {
                    Some(e) => Err(format!("{method}: {e}")),
                    None => Ok(v["result"].clone()),
                };
            }
            self.note_event(v);
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, false)
    }

    /// A command to the page's session; its result.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, true)
    }

    /// Records errors from an event, and keeps the event for [`Browser::wait_event`].
    fn note_event(&mut self, v: Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"].as_str().or(d["text"].as_str()).unwrap_or("exception");
                self.errors.push(format!("uncaught: {text}"));
            }
            Some("Runtime.consoleAPICalled") if matches!(p["type"].as_str(), Some("error" | "assert")) => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| {
                        a.iter().map(|x| x["value"].as_str().map(str::to_string).unwrap_or_else(|| x["description"].to_string())).collect()
                    })
                    .unwrap_or_default();
                self.errors.push(format!("console.error: {}", args.join(" ")));
            }
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]));
            }
            _ => {}
        }
        self.events.push_back(v);
    }

    /// Waits for an event of the page by name.
    pub fn wait_event(&mut self, method: &str) -> Result<Value, String> {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return Ok(self.events.remove(i).unwrap());
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.from_browser.recv_timeout(left).map_err(|e| format!("waiting for {method}: {e}"))?;
            let hit = v["method"] == method;
            self.note_event(v.clone());
            if hit {
                self.events.pop_back();
                return Ok(v);
            }
        }
    }

    /// Opens `url` and waits for its load event.
    pub fn open(&mut self, url: &str) -> Result<(), String> {
        self.events.clear();
        self.call("Page.navigate", json!({"url": url}))?;
        self.wait_event("Page.loadEventFired")?;
        Ok(())
    }

    /// Evaluates a JavaScript expression (awaiting it if it is a promise); its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "awaitPromise": true, "returnByValue": true}))?;
        if let Some(d) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {}", d["exception"]["description"].as_str().unwrap_or(&d.to_string())));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Lets pending events (console messages of a timer, say) arrive.
    pub fn drain(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok(v) = self.from_browser.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.note_event(v);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call_browser("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
