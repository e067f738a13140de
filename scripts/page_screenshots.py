#!/usr/bin/env python3
"""Screenshots of a results page for the README (docs/img/results-page-*.png).

Usage: python3 scripts/page_screenshots.py RESULTS_DIR OUT_DIR [CHROMIUM]

Opens RESULTS_DIR/index.html in headless Chromium through its DevTools protocol over
--remote-debugging-pipe (JSON messages ending in NUL, read by Chromium on fd 3, written on fd 4)
and captures the overview and the sample browser (two runs side by side, where their verdicts
differ). Standard library only.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time


class Page:
    def __init__(self, exe):
        self.profile = tempfile.mkdtemp()
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()

        def fds():
            # Move both above 4 first, so neither overwrites the other (close_fds=False: subprocess
            # would close fds 3 and 4 after this runs).
            os.dup2(to_r, 10)
            os.dup2(from_w, 11)
            os.dup2(10, 3)
            os.dup2(11, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--remote-debugging-pipe", "--user-data-dir=" + self.profile, "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self.buf = b""
        self.next_id = 0
        self.session = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", {})

    def message(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def eval(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        return r["result"].get("value")

    def shot(self, url, path, width, height, top_selector=None):
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        # about:blank first: a URL that differs only in its hash would not load the page again.
        self.call("Page.navigate", {"url": "about:blank"})
        self.call("Page.navigate", {"url": url})
        self.eval("new Promise(r => (function p() { document.body && document.body.getAttribute('data-samples') === 'ready' ? r() : setTimeout(p, 20); })())")
        top = 0
        if top_selector:
            top = self.eval(f"document.querySelector({json.dumps(top_selector)}).getBoundingClientRect().top + window.scrollY")
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": top, "width": width, "height": height, "scale": 1}})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        print(f"{path}: {os.path.getsize(path)} bytes")

    def close(self):
        try:
            self.call("Browser.close", {})
        except Exception:
            pass
        self.proc.wait(timeout=10)


def main():
    results, out = os.path.abspath(sys.argv[1]), sys.argv[2]
    exe = sys.argv[3] if len(sys.argv) > 3 else "chromium"
    os.makedirs(out, exist_ok=True)
    index = "file://" + os.path.join(results, "index.html")
    with open(os.path.join(results, "index.html")) as f:
        html = f.read()
    start = html.index("window.RUNNER_PAGE = ") + len("window.RUNNER_PAGE = ")
    data = json.loads(html[start:html.index(";\n</script>", start)])
    runs = data["runs"]
    first, last = runs[0], [r for r in runs if r["params"].get("stage.align.method") == runs[0]["params"].get("stage.align.method")][-1]
    stage = next(s["id"] for s in data["stages"] if s["id"] in first["stages"] and s.get("records"))
    page = Page(exe)
    try:
        page.shot(index, os.path.join(out, "results-page-overview.png"), 1100, 1150)
        view = f"#samples?run={first['run_id']}&stage={stage}&compare={last['run_id']}&differ=1"
        page.shot(index + view, os.path.join(out, "results-page-samples.png"), 1100, 900, "#samples")
    finally:
        page.close()


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"done in {time.time() - t:.1f} s")
