"""Headless Chromium driven over its DevTools protocol with aiohttp's websocket client: enough to open a
page, read it as a person sees it, click with the mouse, and take a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
from pathlib import Path

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,900", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One Chromium process with one page; every wait is bounded."""

    def __init__(self, proc, http, ws):
        self.proc, self.http, self.ws = proc, http, ws
        self.events: list[tuple[str, dict]] = []
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, profile: Path, timeout: float = 30.0) -> Browser:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        http = aiohttp.ClientSession()
        try:
            port = await _devtools_port(profile / "DevToolsActivePort", timeout)
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t["type"] == "page"]
            ws = await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        except BaseException:
            await http.close()
            await _end(proc)
            raise
        browser = cls(proc, http, ws)
        for domain in ("Page", "Runtime", "Log"):
            await browser.send(f"{domain}.enable")
        return browser

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        await _end(self.proc)

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                reply = self._replies.pop(data["id"], None)
                if reply and not reply.done():
                    reply.set_result(data)
            else:
                self.events.append((data["method"], data.get("params", {})))

    async def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        call_id = next(self._ids)
        reply = self._replies[call_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        data = await asyncio.wait_for(reply, timeout)
        if "error" in data:
            raise BrowserError(f"{method}: {data['error']}")
        return data["result"]

    async def wait_for(self, method: str, after: int, timeout: float = 30.0) -> dict:
        """The first event `method` among those that came after the first `after` events."""
        for _ in range(int(timeout / 0.02)):
            for name, params in self.events[after:]:
                if name == method:
                    return params
            await asyncio.sleep(0.02)
        raise BrowserError(f"no {method} within {timeout} s")

    async def open(self, url: str) -> None:
        mark = len(self.events)
        await self.send("Page.navigate", url=url)
        await self.wait_for("Page.loadEventFired", mark)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def text(self) -> str:
        """The page's text as rendered (what a person reads, not the markup)."""
        return await self.evaluate("document.body.innerText")

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (scrolled into view, as a person would), then the
        load of the page it leads to."""
        box = await self.evaluate(f"(e => e && (e.scrollIntoView({{block: 'center'}}), "
                                  f"JSON.stringify(e.getBoundingClientRect())))"
                                  f"(document.querySelector({json.dumps(selector)}))")
        if not box:
            raise BrowserError(f"nothing to click at {selector} on {await self.evaluate('location.href')}")
        box = json.loads(box)
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        mark = len(self.events)
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
        await self.wait_for("Page.loadEventFired", mark)

    async def fill(self, selector: str, text: str) -> None:
        """Type `text` into a field, as from the keyboard (what was there is replaced)."""
        found = await self.evaluate(f"(e => {{ if (!e) return false; e.focus(); e.select && e.select(); "
                                    f"return true; }})(document.querySelector({json.dumps(selector)}))")
        if not found:
            raise BrowserError(f"no field {selector} on {await self.evaluate('location.href')}")
        await self.send("Input.insertText", text=text)

    async def choose(self, selector: str, value: str) -> None:
        """Pick the option `value` of a select element (as a person would from its list)."""
        chosen = await self.evaluate(
            f"(e => {{ if (!e || ![...e.options].some(o => o.value === {json.dumps(value)})) return false; "
            f"e.value = {json.dumps(value)}; e.dispatchEvent(new Event('change')); return true; }})"
            f"(document.querySelector({json.dumps(selector)}))")
        if not chosen:
            raise BrowserError(f"no option {value!r} in {selector}")

    async def screenshot(self, path: Path) -> None:
        data = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))

    def errors(self) -> list[str]:
        """Console and security errors so far (a CSP that blocked the page's own style shows here)."""
        return [p["entry"]["text"] for name, p in self.events
                if name == "Log.entryAdded" and p["entry"]["level"] == "error"]


async def _devtools_port(path: Path, timeout: float) -> int:
    for _ in range(int(timeout / 0.05)):
        if path.exists():
            first = path.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.05)
    raise BrowserError(f"Chromium did not open its DevTools port within {timeout} s")


async def _end(proc) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
