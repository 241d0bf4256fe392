"""The web chat at `/`, driven in headless Chromium against a real `qwenkit serve` (tiny random Qwen3).

Chromium is driven over the Chrome DevTools Protocol through `--remote-debugging-pipe` (JSON
messages, NUL-separated, on fds 3 and 4), so no websocket client is needed. CI installs
Debian's `chromium`; without it the browser test is skipped.

Turns against the real server check streaming, the thinking toggle, the token line, HTTP errors
and Stop. The model's text is random, so for what needs chosen model output (an XSS attempt, a
code fence, SSE events split mid-JSON and mid-UTF-8, a mid-stream error event) the page's `fetch`
is replaced for a turn by a stream the test feeds piece by piece.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
INDEX = Path(__file__).resolve().parents[1] / "src" / "qwenkit" / "serve" / "static" / "index.html"
SCREENSHOT = Path("/tmp/webchat.png")
SCREENSHOT_NARROW = Path("/tmp/webchat-narrow.png")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI: apt-get install -y chromium)"
)


# ----- the page, statically ------------------------------------------------------------------


def test_page_is_self_contained_and_never_parses_html():
    page = INDEX.read_text(encoding="utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page), "no external resources"
    assert "@import" not in page and "url(http" not in page
    script = page[page.index("<script>") :]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, f"the page's script must not use {sink}"


# ----- a server and a browser ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def server(tiny_qwen3, tmp_path_factory):
    """`qwenkit serve` on a free port, as a subprocess; yields its base URL."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI: apt-get install -y chromium)")
    port = _free_port()
    log = tmp_path_factory.mktemp("webchat-server") / "server.log"
    cmd = [
        sys.executable,
        "-c",
        "from qwenkit.cli import main; main()",
        "serve",
        "--model",
        str(tiny_qwen3),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        "2",
        "--ctx",
        "2048",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"qwenkit serve exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if _get(base + "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"qwenkit serve not healthy within 90 s:\n{_tail(log)}")
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class CDP:
    """A minimal Chrome DevTools Protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = to_browser
        self._in = from_browser
        self._cond = threading.Condition()
        self._replies: dict[int, dict] = {}
        self._next_id = 0
        self.events: list[dict] = []
        self.closed = False
        self.session: str | None = None
        threading.Thread(target=self._pump, name="cdp-reader", daemon=True).start()

    def _pump(self) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    break
                buf += chunk
                while (end := buf.find(b"\0")) >= 0:
                    msg = json.loads(bytes(buf[:end]))
                    del buf[: end + 1]
                    with self._cond:
                        if "id" in msg:
                            self._replies[msg["id"]] = msg
                        else:
                            self.events.append(msg)
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def call(self, method: str, timeout: float = 30, browser: bool = False, **params) -> dict:
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg: dict = {"id": mid, "method": method, "params": params}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError(f"no CDP reply to {method} ({'pipe closed' if self.closed else 'timeout'})")
                self._cond.wait(left)
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise AssertionError(f"CDP {method} failed: {reply['error']}")
        return reply.get("result", {})

    def js(self, expression: str, await_promise: bool = False):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}\n{expression}")
        return r["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 60, debug: str = "document.body.innerText"):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; page text:\n{self.js(debug)}")
            time.sleep(0.05)

    def exceptions(self) -> list[str]:
        with self._cond:
            return [
                e["params"]["exceptionDetails"].get("exception", {}).get("description", "")
                or e["params"]["exceptionDetails"].get("text", "")
                for e in self.events
                if e.get("method") == "Runtime.exceptionThrown"
            ]

    # input as a user makes it
    def type(self, text: str) -> None:
        self.call("Input.insertText", text=text)

    def key_enter(self, shift: bool = False) -> None:
        common = {
            "key": "Enter",
            "code": "Enter",
            "windowsVirtualKeyCode": 13,
            "nativeVirtualKeyCode": 13,
            "modifiers": 8 if shift else 0,
        }
        self.call("Input.dispatchKeyEvent", type="keyDown", text="\r", unmodifiedText="\r", **common)
        self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    def click(self, selector: str) -> None:
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, *paths: Path) -> None:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        for path in paths:
            path.write_bytes(data)


def _high_fd(fd: int) -> int:
    """`fd` moved to a number >= 10, so bash's 3<&N 4>&M cannot clobber it (dash takes no fds > 9: use bash)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with one page, attached over a CDP pipe; yields the client."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI: apt-get install -y chromium)")
    cmd_r, cmd_w = os.pipe()  # we write commands; chromium reads them on fd 3
    ev_r, ev_w = os.pipe()  # chromium writes replies and events on fd 4
    cmd_r, ev_w = _high_fd(cmd_r), _high_fd(ev_w)
    profile = tmp_path / "chromium-profile"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--mute-audio",
        "--hide-scrollbars",
        "--window-size=1000,820",
        f"--user-data-dir={profile}",
        "--remote-debugging-pipe",
        "about:blank",
    ]
    shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{ev_w} {cmd_r}<&- {ev_w}>&-'
    log = tmp_path / "chromium.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", shell, CHROMIUM, *flags],
            pass_fds=(cmd_r, ev_w),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    os.close(cmd_r)
    os.close(ev_w)
    cdp = CDP(cmd_w, ev_r)
    try:
        try:
            target = cdp.call("Target.createTarget", url="about:blank", timeout=60)["targetId"]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nchromium log:\n{_tail(log)}") from None
        cdp.session = cdp.call("Target.attachToTarget", targetId=target, flatten=True, browser=True)["sessionId"]
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        yield cdp
    finally:
        try:
            if not cdp.closed and proc.poll() is None:
                cdp.call("Browser.close", browser=True, timeout=5)
        except (AssertionError, OSError):
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # chromium's helpers live in the session started for it
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        os.close(cmd_w)
        os.close(ev_r)


# ----- the page in a browser ---------------------------------------------------------------------

LAST = "[...document.querySelectorAll('#messages .msg.assistant')].at(-1)"
DONE = (
    f"(() => {{ const m = {LAST};"
    " return !!m && !m.hasAttribute('aria-busy') && !!m.querySelector('.meta, .error'); })()"
)

# Replaces fetch for /v1/chat/completions with a stream the test feeds through window.__feed(bytes).
FAKE_FETCH = """
(() => {
  window.__realFetch = window.__realFetch || window.fetch;
  window.__bodies = [];
  window.fetch = (url, opts) => {
    if (!String(url).includes("chat/completions")) return window.__realFetch(url, opts);
    window.__bodies.push(JSON.parse(opts.body));
    let ctl;
    const stream = new ReadableStream({ start(c) { ctl = c; } });
    window.__feed = (bytes) => ctl.enqueue(new Uint8Array(bytes));
    window.__end = () => { try { ctl.close(); } catch { /* the page cancelled it after [DONE] */ } };
    opts.signal.addEventListener("abort", () => {
      try { ctl.error(new DOMException("stopped", "AbortError")); } catch { /* already closed */ }
    });
    return Promise.resolve(new Response(stream, { status: 200, headers: { "Content-Type": "text/event-stream" } }));
  };
})()
"""


# Passes the real response's first five events through, then holds the rest until the request is aborted.
GATED_FETCH = """
(() => {
  window.__realFetch = window.__realFetch || window.fetch;
  window.fetch = async (url, opts) => {
    const res = await window.__realFetch(url, opts);
    if (!String(url).includes("chat/completions") || !res.ok) return res;
    const source = res.body.getReader();
    const held = new ReadableStream({
      async start(c) {
        opts.signal.addEventListener("abort", () => {
          try { c.error(new DOMException("stopped", "AbortError")); } catch {}
          source.cancel().catch(() => {});
        });
        const decoder = new TextDecoder();
        let seen = "";
        while ((seen.match(/^data: [{]/gm) || []).length < 5) {
          const { value, done } = await source.read();
          if (done) { c.close(); return; }
          seen += decoder.decode(value, { stream: true });
          c.enqueue(value);
        }
      },
    });
    return new Response(held, { status: res.status, headers: res.headers });
  };
})()
"""


def _sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()) + b"\n\n"


def _chunk(**delta) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta}],
    }


@needs_chromium
def test_web_chat(server, browser, tmp_path):
    cdp = browser
    _, body = _get(server + "/v1/models")
    model_id = json.loads(body)["data"][0]["id"]

    cdp.call("Page.navigate", url=server + "/")
    cdp.wait("document.readyState === 'complete' && !!document.getElementById('input')", "the page to load", 30)
    cdp.js(
        "window.__csp = [];"
        " document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective))"
    )
    cdp.wait(
        f"document.getElementById('model').textContent === {json.dumps(model_id)}",
        "the model name",
        30,
        debug="document.getElementById('model').textContent",
    )
    assert cdp.js("document.activeElement.id") == "input"
    assert cdp.js("document.getElementById('think').checked") is False

    def set_max_tokens(n) -> None:
        cdp.js(
            f"(() => {{ const i = document.getElementById('max-tokens'); i.value = {json.dumps(str(n))};"
            " i.dispatchEvent(new Event('change')); })()"
        )

    def n_assistant() -> int:
        return cdp.js("document.querySelectorAll('#messages .msg.assistant').length")

    # 1. thinking off: Enter sends, the answer streams into the answer area, a token line follows
    set_max_tokens(24)
    cdp.js("document.getElementById('input').focus()")
    cdp.type("Hello <b>there</b>")
    cdp.key_enter(shift=True)  # Shift+Enter: a new line, not a send
    cdp.type("second line")
    assert n_assistant() == 0
    assert cdp.js("document.getElementById('input').value") == "Hello <b>there</b>\nsecond line"
    cdp.key_enter()
    cdp.wait(DONE, "the first answer")
    user = cdp.js(
        "(() => { const u = document.querySelector('#messages .msg.user');"
        " return [u.textContent, u.children.length]; })()"
    )
    assert user == ["Hello <b>there</b>\nsecond line", 0]
    first = cdp.js(
        f"(() => {{ const m = {LAST}; return {{answer: m.querySelector('.answer').textContent,"
        " reasoning: !!m.querySelector('details'), meta: m.querySelector('.meta').textContent,"
        " error: !!m.querySelector('.error')}; })()"
    )
    assert first["answer"].strip(), first
    assert not first["reasoning"] and not first["error"], first
    meta = r"\d+ tokens? · ([\d.]+ tok/s · )?first token [\d.]+ s · prompt \d+( · cut at the token limit)?"
    assert re.fullmatch(meta, first["meta"]), first["meta"]
    assert cdp.js("document.getElementById('input').value") == ""

    # 2. thinking on (with room to think: a small max_tokens turns thinking off): the random
    # model's reasoning, closed by the budget, shows in a collapsed <details>
    set_max_tokens(160)
    cdp.click("#think")
    assert cdp.js("document.getElementById('think').checked") is True
    cdp.js("document.getElementById('input').focus()")
    cdp.type("Think about it")
    cdp.key_enter()
    cdp.wait(DONE, "the thinking answer")
    think = cdp.js(
        f"(() => {{ const d = {LAST}.querySelector('details.reasoning');"
        " return d && {open: d.open, summary: d.querySelector('summary').textContent,"
        " text: d.querySelector('.reasoning-text').textContent}; })()"
    )
    assert think, "no reasoning <details> block"
    assert think["open"] is False
    assert re.fullmatch(r"Thought for [\d.]+ s \(\d+ tokens?\)", think["summary"]), think
    assert think["text"].strip()

    # 3. an HTTP error shows the server's message; the text comes back to the input
    set_max_tokens(100000)
    cdp.js("document.getElementById('input').focus()")
    cdp.type("too long please")
    cdp.key_enter()
    cdp.wait(DONE, "the HTTP error")
    error = cdp.js(f"{LAST}.querySelector('.error').textContent")
    assert error.startswith("HTTP 400") and "max_tokens" in error and "8192" in error, error
    assert cdp.js("document.getElementById('input').value") == "too long please"
    assert cdp.js("document.querySelectorAll('#messages .msg.user.failed').length") == 1
    cdp.js("document.getElementById('input').value = ''")

    # 4. Stop: text shows while the answer is still streaming, and Stop aborts the request. The
    #    response is held after its first events (however fast the machine), until the abort.
    cdp.click("#think")  # off again
    set_max_tokens(1000)
    cdp.js(GATED_FETCH)
    cdp.js("document.getElementById('input').focus()")
    cdp.type("Tell me a long story")
    cdp.key_enter()
    cdp.wait(
        f"(() => {{ const m = {LAST}; return m.hasAttribute('aria-busy')"
        " && m.querySelector('.answer').textContent.trim().length > 0; })()",
        "streamed text before the end",
    )
    assert cdp.js("document.getElementById('send').textContent") == "Stop"
    cdp.click("#send")
    cdp.wait(DONE, "the stopped answer", 15)
    assert cdp.js("document.getElementById('send').textContent") == "Send"
    stopped = cdp.js(f"{LAST}.querySelector('.meta').textContent")
    assert stopped.startswith("≈") and stopped.endswith("stopped"), stopped
    deadline = time.monotonic() + 15  # the server noticed and freed the slot
    while b"qwenkit_requests_running 0.0" not in _get(server + "/metrics")[1]:
        assert time.monotonic() < deadline, "the stopped request still runs on the server"
        time.sleep(0.1)
    cdp.js("window.fetch = window.__realFetch")

    # 5. chosen model output through a fed stream: split events, markup as text, code fences, history
    cdp.click("#think")  # on
    set_max_tokens(64)
    cdp.js(FAKE_FETCH)
    cdp.js("document.getElementById('input').focus()")
    cdp.type("show me")
    cdp.key_enter()
    cdp.wait("!!window.__feed", "the fake stream")

    def feed(data: bytes) -> None:
        cdp.js(f"window.__feed({list(data)})")

    reasoning = "I must not run <b>this</b> & that"
    feed(_sse(_chunk(role="assistant", content="")) + _sse(_chunk(reasoning_content=reasoning, reasoning=reasoning)))
    cdp.wait(f"{LAST}.querySelector('details.reasoning.live summary')?.textContent === 'Thinking…'", "Thinking…")
    assert cdp.js(f"{LAST}.querySelector('.reasoning-text').textContent") == reasoning

    answer = (
        'Look:\n<script>window.__xss = 1</script>\n<img src=x onerror="window.__xss = 2">\n'
        "```html\n<script>window.__xss = 3</script>\n<p>hi</p>\n```\nnaïve 漢字 ✓ done"
    )
    first_half, second_half = answer[:60], answer[60:]
    event1 = _sse(_chunk(content=first_half))
    event2 = _sse(_chunk(content=second_half)).replace(b"\n\n", b"\r\n\r\n")  # CRLF lines are SSE too
    cut = event2.index("漢".encode()) + 1  # in the middle of a UTF-8 sequence
    feed(event1[:25])  # an event split mid-JSON
    time.sleep(0.2)
    assert cdp.js(f"{LAST}.querySelector('.answer').textContent") == ""
    feed(event1[25:] + event2[:cut])
    cdp.wait(f"{LAST}.querySelector('.answer').textContent.startsWith('Look:')", "the first half")
    assert cdp.js(f"{LAST}.querySelector('details.reasoning summary').textContent").startswith("Thought for")
    feed(event2[cut:-1])  # all but the final \n: the event is not complete yet
    time.sleep(0.2)
    assert "done" not in cdp.js(f"{LAST}.querySelector('.answer').textContent")
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 42,
        "total_tokens": 52,
        "completion_tokens_details": {"reasoning_tokens": 7},
    }
    feed(
        event2[-1:]
        + _sse(dict(_chunk(), choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        + _sse(dict(_chunk(), choices=[], usage=usage))
        + _sse(b"[DONE]")
    )
    cdp.js("window.__end()")
    cdp.wait(DONE, "the fed answer")
    fed = cdp.js(f"""(() => {{
        const m = {LAST};
        return {{
          xss: window.__xss === undefined ? null : window.__xss,
          dangerous: document.querySelectorAll(
            '#messages script, #messages img, #messages b, #messages p:not(#empty), #messages [onerror]').length,
          texts: [...m.querySelectorAll('.answer .text')].map(t => t.textContent),
          code: [...m.querySelectorAll('.answer pre code')].map(c => [c.dataset.lang, c.textContent]),
          summary: m.querySelector('details.reasoning summary').textContent,
          meta: m.querySelector('.meta').textContent,
        }};
    }})()""")
    assert fed["xss"] is None and fed["dangerous"] == 0, fed
    assert fed["texts"] == [
        'Look:\n<script>window.__xss = 1</script>\n<img src=x onerror="window.__xss = 2">',
        "naïve 漢字 ✓ done",
    ], fed
    assert fed["code"] == [["html", "<script>window.__xss = 3</script>\n<p>hi</p>"]], fed
    assert re.fullmatch(r"Thought for [\d.]+ s \(7 tokens\)", fed["summary"]), fed
    assert fed["meta"].startswith("42 tokens · ") and "prompt 10" in fed["meta"], fed

    # the next request carries the history: answers without their reasoning, the failed turn left out
    cdp.js("document.getElementById('input').focus()")
    cdp.type("and again")
    cdp.key_enter()
    cdp.wait("window.__bodies.length === 2", "the second fed request")
    sent = cdp.js("window.__bodies[1]")
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["chat_template_kwargs"] == {"enable_thinking": True} and sent["max_tokens"] == 64
    assert sent["model"] == model_id
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["user", "assistant"] * 4 + ["user"], roles
    contents = [m["content"] for m in sent["messages"]]
    assert contents[0] == "Hello <b>there</b>\nsecond line" and contents[2] == "Think about it"
    assert contents[4] == "Tell me a long story" and contents[6:] == ["show me", answer, "and again"]
    assert all(set(m) == {"role", "content"} for m in sent["messages"])
    assert not any(reasoning in c or think["text"] in c for c in contents)

    # a mid-stream error event shows, keeping what had arrived
    feed(
        _sse(_chunk(content="partial answer"))
        + _sse({"error": {"message": "generation failed: boom", "type": "server_unavailable"}})
        + _sse(b"[DONE]")
    )
    cdp.js("window.__end()")
    cdp.wait(DONE, "the mid-stream error")
    assert cdp.js(f"{LAST}.querySelector('.error').textContent") == "generation failed: boom"
    assert cdp.js(f"{LAST}.querySelector('.answer').textContent") == "partial answer"
    cdp.js("window.fetch = window.__realFetch")

    assert cdp.js("window.__csp") == []
    assert cdp.exceptions() == []
    cdp.js("document.getElementById('scroller').scrollTop = 1e9")
    cdp.screenshot(tmp_path / "webchat.png", SCREENSHOT)

    # a narrow screen: nothing overflows sideways, the composer stays usable
    cdp.call("Emulation.setDeviceMetricsOverride", width=390, height=760, deviceScaleFactor=1, mobile=True)
    try:
        time.sleep(0.2)
        layout = cdp.js("""(() => {
            const r = document.getElementById('send').getBoundingClientRect();
            return {overflow: document.documentElement.scrollWidth - window.innerWidth,
                    send: [r.left >= 0, r.right <= window.innerWidth, r.bottom <= window.innerHeight]}; })()""")
        assert layout == {"overflow": 0, "send": [True, True, True]}, layout
        cdp.screenshot(tmp_path / "webchat-narrow.png", SCREENSHOT_NARROW)
    finally:
        cdp.call("Emulation.clearDeviceMetricsOverride")

    # New chat: an empty conversation, and the next request sends only the new message
    cdp.click("#new-chat")
    assert cdp.js("document.querySelectorAll('#messages .msg').length") == 0
    assert cdp.js("document.getElementById('empty').hidden") is False
    cdp.js(
        "window.__bodies = []; window.fetch = (u, o) => {"
        " if (String(u).includes('chat/completions')) window.__bodies.push([JSON.parse(o.body), o.headers]);"
        " return window.__realFetch(u, o); }"
    )
    cdp.js(
        "(() => { const k = document.getElementById('api-key'); k.value = ' sk-local ';"
        " k.dispatchEvent(new Event('change')); })()"
    )
    assert cdp.js("localStorage.getItem('qwenkit.apiKey')") == "sk-local"
    cdp.click("#think")  # off
    set_max_tokens(8)
    cdp.js("document.getElementById('input').focus()")
    cdp.type("fresh start")
    cdp.key_enter()
    cdp.wait(DONE, "the answer in the new chat")
    assert cdp.js("window.__bodies.map(([b]) => b.messages)") == [[{"role": "user", "content": "fresh start"}]]
    assert cdp.js("window.__bodies[0][1].Authorization") == "Bearer sk-local"
    assert re.match(r"\d+ tokens? · ", cdp.js(f"{LAST}.querySelector('.meta').textContent"))
    assert cdp.exceptions() == []
