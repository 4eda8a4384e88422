"""The web dashboard in Debian's Chromium (headless), driven by Playwright for Python against a
live `tributary dev` (run by tests/dashboard_browser.rs). Usage:
dashboard_browser.py BASE_URL API_KEY BASE_MODEL_DIR DATA_JSONL SCREENSHOT_DIR

Logs in with the API key, creates a datanet and uploads a JSONL file with bad rows and a
`<script>` row, reads the report, checks the row is shown as text and never runs, previews
and submits a job from the form, watches the loss curve grow, reloads mid-job and sees it
re-attach, overlays two runs, opens the adapter, chats in the playground (streaming, side by
side with the base, attribution panel), opens Rewards and Cluster, checks CSRF and logout.
Writes a screenshot of each page; prints one JSON line of what it saw; exits non-zero on the
first failed check."""

import json
import re
import os
import sys

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_common import (check, chat, finish, launch, rerun_attribution, seen,  # noqa: E402
                            set_shots, shot, wait_for)

base, key, base_model, data, shots = sys.argv[1:6]
set_shots(shots)


good = [line for line in open(data, encoding="utf-8") if line.strip()]
script_row = json.dumps({"messages": [
    {"role": "user", "content": "How do I show HTML?"},
    {"role": "assistant", "content": "<script>window.__xss = 1</script><b>bold</b> is markup"}]})
rows = good + [
    good[0],                                   # an exact duplicate
    "{not json\n",                             # rejected: line 44
    json.dumps({"prompt": "no answer"}) + "\n",  # rejected: line 45
    script_row + "\n",
]

with sync_playwright() as p:
    browser = launch(p)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Not logged in: every page sends us to the login form.
    page.goto(base + "/datanets")
    check(page.url.endswith("/login"), "redirect to login")
    page.fill("#key", "trib_wrong")
    page.click("button[type=submit]")
    check("not valid" in page.content(), "a wrong key is refused")
    page.goto(base + "/login")
    shot(page, "login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    check(page.url.endswith("/datanets"), "logged in lands on datanets")
    cookies = {c["name"]: c for c in ctx.cookies()}
    sess = cookies.get("tributary_session", {})
    check(sess.get("httpOnly") and sess.get("sameSite") == "Strict", "session cookie flags")
    check(key not in json.dumps(ctx.cookies()), "the API key is not in a cookie")

    # CSRF: a form post without the session's token is refused.
    r = page.request.post(base + "/datanets", form={"csrf": "0" * 64, "name": "forged"})
    check(r.status == 403, "forged form refused (%d)" % r.status)

    # Create a datanet, upload a file with bad rows, read the report.
    page.fill("#dn-name", "clinic")
    page.fill("#dn-desc", "Clinic Q&A <i>not italic</i>")
    page.click("form[action='/datanets'] button[type=submit]")
    check(page.url.endswith("/datanets/clinic"), "created: " + page.url)
    check(page.locator("i", has_text="not italic").count() == 0, "description escaped")
    page.set_input_files("#file", files=[{"name": "rows.jsonl", "mimeType": "application/x-ndjson",
                                          "buffer": "".join(rows).encode()}])
    page.click("form[enctype='multipart/form-data'] button[type=submit]")
    check("/uploads/u" in page.url, "upload report page: " + page.url)
    seen["report"] = {k: page.inner_text("#" + k) for k in ["rows", "accepted", "duplicates", "rejected"]}
    check(seen["report"]["rejected"] == "2", "two rejected rows")
    check(seen["report"]["duplicates"] == "1", "one duplicate")
    lines = page.locator("table.rejected tbody tr td:first-child").all_inner_texts()
    check(lines == [str(len(good) + 2), str(len(good) + 3)], "rejected line numbers %s" % lines)
    seen["upload_url"] = page.url
    shot(page, "upload-report")

    # The datanet page: versions, contributors, uploads. Then the preview with the <script> row.
    page.goto(base + "/datanets/clinic")
    check(page.locator("#c-h").count() == 1, "contributors section")
    shot(page, "datanet")
    for offset in range(0, 60, 20):
        page.goto(base + "/datanets/clinic/examples?v=latest&offset=%d" % offset)
        if "__xss" in page.inner_text("main"):
            break
    check("<script>window.__xss = 1</script>" in page.inner_text("main"), "script row shown as text")
    check(page.evaluate("typeof window.__xss") == "undefined", "script row did not run")
    check(page.locator("main b", has_text="bold").count() == 0, "markup row not rendered")
    shot(page, "examples")

    # Jobs: preview the spec, submit, watch the curve grow, reload mid-job.
    page.goto(base + "/jobs")
    page.fill("#f-base_model", base_model)
    page.fill("#f-data", "datanet://clinic@latest")
    page.fill("#f-name", "clinic-bot")
    page.fill("#f-steps", "300")
    page.fill("#f-batch_size", "4")
    page.fill("#f-lr", "0.01")
    page.fill("#f-eval_fraction", "0.2")
    page.click("button[value=preview]")
    toml = page.inner_text("#spec-toml")
    check("eval_fraction = 0.2" in toml and "datanet://clinic@latest" in toml, "spec preview: " + toml)
    check("tributary job submit" in page.inner_text("#spec-cli"), "cli preview")
    shot(page, "job-form")
    page.click("button[value=submit]")
    check("/jobs/" in page.url, "job page: " + page.url)
    job_url = page.url
    # Running, a few steps in, and the first loss points stored (the series is written at
    # most every 0.5 s, so the step can be ahead of the curve).
    wait_for(lambda: page.locator("#job-state").inner_text() == "running"
             and int(page.inner_text("#job-step").split("/")[0]) >= 3
             and int(page.get_attribute("#loss-chart", "data-train-points") or 0) >= 1,
             120, "job running with a curve")
    before = int(page.inner_text("#job-step").split("/")[0])
    pts = int(page.get_attribute("#loss-chart", "data-train-points"))
    seen["before_reload"] = {"step": before, "train_points": pts}
    check(pts >= 1 and page.locator("#loss-chart polyline, #loss-chart circle").count() >= 1, "curve drawn")
    shot(page, "job-running")
    page.reload()
    check(page.url == job_url, "same job after reload")
    after = int(page.inner_text("#job-step").split("/")[0])
    check(after >= before, "re-attached at step %d >= %d" % (after, before))
    wait_for(lambda: page.locator("#job-state").inner_text() == "succeeded", 300, "job 1 succeeded")
    seen["job1"] = {"eval_points": int(page.get_attribute("#loss-chart", "data-eval-points")),
                    "train_points": int(page.get_attribute("#loss-chart", "data-train-points")),
                    "steps_seen_live": [before, after]}
    check(seen["job1"]["train_points"] == 300, "300 train points")
    check(seen["job1"]["eval_points"] >= 3, "eval curve")
    shot(page, "job-done")
    job1 = job_url.rsplit("/", 1)[1]

    # A second, shorter run; then overlay the two.
    page.goto(base + "/jobs")
    page.fill("#f-base_model", base_model)
    page.fill("#f-data", "datanet://clinic@latest")
    page.fill("#f-name", "")
    page.fill("#f-steps", "30")
    page.fill("#f-lr", "0.003")
    page.fill("#f-eval_fraction", "0.2")
    page.click("button[value=submit]")
    job2_url = page.url
    wait_for(lambda: page.locator("#job-state").inner_text() == "succeeded", 300, "job 2 succeeded")
    job2 = job2_url.rsplit("/", 1)[1]
    page.goto(base + "/jobs")
    page.check("input[value='%s']" % job1)
    page.check("input[value='%s']" % job2)
    page.click("form[action='/jobs/compare'] button[type=submit]")
    check(int(page.get_attribute("#compare-chart", "data-series")) == 4, "4 overlaid series")
    shot(page, "jobs-compare")
    page.goto(base + "/jobs")
    shot(page, "jobs")

    # Adapters: the trained one, its lineage and a PEFT download.
    page.goto(base + "/adapters")
    check("clinic-bot" in page.inner_text("main"), "adapter listed")
    shot(page, "adapters")
    page.click("tr:has-text('clinic-bot') td:nth-child(2) a")
    check("datanet://clinic@latest" in page.inner_text("main"), "lineage shows the data")
    with page.expect_download() as dl:
        page.click("a:has-text('adapter_config.json')")
    cfg = json.load(open(dl.value.path()))
    check(cfg.get("peft_type") == "LORA", "PEFT config downloaded")
    with page.expect_download() as dl:
        page.click("#gguf-link")
    gguf = open(dl.value.path(), "rb").read()
    check(gguf[:4] == b"GGUF" and dl.value.suggested_filename.endswith("-lora.gguf"),
          "GGUF adapter downloaded: %r %s" % (gguf[:4], dl.value.suggested_filename))
    seen["gguf_bytes"] = len(gguf)
    shot(page, "adapter")

    # Playground: clinic-bot beside the base model, streamed; attribution panel.
    seen["answers"] = chat(page, base, "clinic-bot", 1, "Who records blood pressure?", 12)
    check(all(a and not a.startswith("error") for a in seen["answers"]), "two answers")
    # The record (shares, fee) and then its reward-log entry appear under the answer.
    wait_for(lambda: "Reward-log entry" in page.inner_text("#attr-a"), 90, "attribution and reward")
    panel = page.inner_text("#attr-a")
    check("Fee " in panel and ("Whose data" in panel or "No contributor scored" in panel), "attribution panel: " + panel[:300])
    seen["attribution"] = panel[:300]
    check("not attributed" in page.inner_text("#attr-b"), "the base model's answer is not attributed")
    # Re-run attribution: recomputed from the stored index and features, bit for bit.
    seen["rerun"] = rerun_attribution(page)
    check("bits match" in seen["rerun"], "re-run attribution: " + seen["rerun"])
    shot(page, "playground")

    # The same request's entry on the Rewards page (the panel links to it).
    rid = re.match(r"(\S+)", page.get_attribute("#attr-a form.rerun", "data-request") or "")
    check(rid is not None, "request id in the panel")
    for name in ["rewards", "cluster"]:
        page.goto(base + "/" + name)
        check(page.locator("main h1").inner_text().lower() == name, name + " page")
        shot(page, name)
        if name == "cluster":
            check("leader" in page.inner_text("#coordinators"), "cluster page names the leader")
            check("local-0" in page.inner_text("#workers"), "cluster page lists the worker")
            check("No etcd" in page.inner_text("#etcd-health"), "dev has no etcd and says so")
            check(page.inner_text("#store-health") == "reachable", "dev's object store reachable")
        if name == "rewards":
            check(page.locator("[id='req-%s']" % rid.group(1)).count() == 1, "reward entry of " + rid.group(1))
    check(page.inner_text("#readiness") == "ready", "cluster ready")

    # Phone width: the datanet page without horizontal page scroll.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=ctx.storage_state())
    pp = phone.new_page()
    pp.goto(base + "/datanets/clinic")
    check(pp.evaluate("document.documentElement.scrollWidth") <= 400, "fits a phone")
    shot(pp, "phone-datanet")
    phone.close()

    # Keyboard: the skip link is the first tab stop.
    page.goto(base + "/datanets")
    page.keyboard.press("Tab")
    check(page.evaluate("document.activeElement.textContent") == "Skip to content", "skip link first")

    page.click("header form.logout button")
    check(page.url.endswith("/login"), "logged out")
    page.goto(base + "/jobs")
    check(page.url.endswith("/login"), "session gone after logout")
    check(not errors, "no page errors: %s" % errors)
    browser.close()

finish()
