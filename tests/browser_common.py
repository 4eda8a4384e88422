"""What the browser tests share (tests/dashboard_browser.py against `tributary dev`,
tests/dashboard_cluster.py against a process cluster): launching Debian's Chromium headless
through Playwright for Python, checks that print what was seen and exit non-zero, waits,
screenshots, logging in, and the playground's chat and attribution panel."""

import json
import os
import sys
import time

seen = {}
_shots = {"dir": "."}
T0 = time.time()


def set_shots(path):
    os.makedirs(path, exist_ok=True)
    _shots["dir"] = path


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "seen": seen}, default=str))
        sys.exit(1)


def shot(page, name):
    page.screenshot(path=os.path.join(_shots["dir"], name + ".png"), full_page=True)


def wait_for(fn, secs, what):
    end = time.time() + secs
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.25)
    check(False, what)


def launch(p):
    return p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                             args=["--no-sandbox", "--disable-dev-shm-usage"])


def log_in(page, base, key):
    page.goto(base + "/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    check(page.url.endswith("/datanets"), "logged in lands on datanets: " + page.url)


def chat(page, base, model_a, model_b_index, prompt, max_tokens):
    """Sends `prompt` to model A (and model B's option at that index, when given) and waits
    for the streamed answers."""
    page.goto(base + "/playground")
    page.select_option("#model-a", model_a)
    if model_b_index is not None:
        opt = page.locator("#model-b option").nth(model_b_index).get_attribute("value")
        page.select_option("#model-b", opt)
    page.fill("#prompt", prompt)
    page.fill("#max_tokens", str(max_tokens))
    page.click("#chat button[type=submit]")
    sides = ["a"] + (["b"] if model_b_index is not None else [])
    wait_for(lambda: all(page.get_attribute("#answer-" + s, "aria-busy") == "false" for s in sides),
             120, "answers streamed")
    return [page.inner_text("#answer-" + s) for s in sides]


def rerun_attribution(page, panel="#attr-a"):
    """Clicks "Re-run attribution" under an answer; returns the result's text once shown."""
    page.click(panel + " form.rerun button")
    wait_for(lambda: page.locator(panel + " .rerun-result[role=status]").count() == 1,
             60, "re-run result")
    return page.inner_text(panel + " .rerun-result")


def finish():
    seen["ok"] = True
    seen["secs"] = round(time.time() - T0, 1)
    print(json.dumps(seen, default=str))
