"""Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe):
no websocket client or other package needed. Used by the HTML report tests; also a tool:

    python tests/headless.py DIR/report.html shot.png     # prints console errors and plot counts
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-pipe"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _child_fds(read_fd: int, write_fd: int) -> None:
    import fcntl

    # move both ends above 10 first so that placing them on 3 and 4 cannot clobber one another
    r, w = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10), fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(r, 3)
    os.dup2(w, 4)


class Chromium:
    """A browser process; `.call(method, params, session)` sends one CDP command and waits for its answer."""

    def __init__(self, timeout: float = 60.0):
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="edgecompile-chromium-")
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        # the child reads commands on fd 3 and writes answers/events on fd 4
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: _child_fds(to_child_r, from_child_w))
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str | None = None) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, m in enumerate(self.events):
            if m.get("method") == method and (session is None or m.get("sessionId") == session):
                return self.events.pop(i)
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method and (session is None or m.get("sessionId") == session):
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


PROBE_JS = """JSON.stringify({
  title: document.title,
  plots: Array.from(document.querySelectorAll('svg.plot')).map(s => ({
     kind: s.dataset.plot, marks: s.querySelectorAll('rect,line,path,circle').length,
     width: s.getBoundingClientRect().width, height: s.getBoundingClientRect().height})),
  sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent),
  height: document.documentElement.scrollHeight
})"""


def render_page(path: str | Path, screenshot: str | Path | None = None, width: int = 1200,
                clip: tuple[int, int, int, int] | None = None) -> dict:
    """Load a local page; returns {"errors": [...], "page": PROBE_JS result}; optionally a full-page PNG."""
    url = Path(path).resolve().as_uri()
    with Chromium() as br:
        target = br.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = br.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            br.call(f"{domain}.enable", session=s)
        br.call("Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)
        br.call("Page.navigate", {"url": url}, session=s)
        br.wait_event("Page.loadEventFired", s)
        page = json.loads(br.call("Runtime.evaluate", {"expression": PROBE_JS, "returnByValue": True},
                                  session=s)["result"]["value"])
        if screenshot is not None:
            br.call("Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": min(int(page["height"]), 16000), "deviceScaleFactor": 1,
                     "mobile": False}, session=s)
            shot = {"format": "png"}
            if clip:
                shot["clip"] = dict(zip(("x", "y", "width", "height"), clip), scale=1)
            png = br.call("Page.captureScreenshot", shot, session=s)["data"]
            Path(screenshot).write_bytes(base64.b64decode(png))
        br.call("Runtime.evaluate", {"expression": "1"}, session=s)     # flush pending events
        errors = []
        for m in br.events:
            meth, p = m.get("method"), m.get("params", {})
            if meth == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", "")))
                                                                      for a in p.get("args", [])))
            elif meth == "Runtime.exceptionThrown":
                errors.append("exception: " + p["exceptionDetails"].get("text", "") + " " +
                              str(p["exceptionDetails"].get("exception", {}).get("description", "")))
            elif meth == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return {"errors": errors, "page": page}


if __name__ == "__main__":
    clip = tuple(int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else None   # x,y,w,h
    res = render_page(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None, clip=clip)
    print(json.dumps(res, indent=2))
    sys.exit(1 if res["errors"] else 0)
