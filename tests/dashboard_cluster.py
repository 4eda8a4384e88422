"""The web dashboard in Debian's Chromium (headless) against a process cluster's gateway
(run by tests/dashboard_cluster.rs). Usage:
dashboard_cluster.py GATEWAY_URL API_KEY BASE_MODEL_DIR SCREENSHOT_DIR

Logs in; the Cluster page names the coordinator leader (and a standby) and lists both
workers; submits a short LoRA job from the form on the datanet the test made and watches it
succeed; chats with the adapter in the playground; waits for its attribution (computed on
the serving worker) and its reward-log entry (the leader's), and re-runs the attribution
in the gateway: the bits match. Prints one JSON line of what it saw (with the job and
request ids for the Rust side); exits non-zero on the first failed check."""

import os
import sys

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_common import (check, chat, finish, launch, log_in, rerun_attribution,  # noqa: E402
                            seen, set_shots, shot, wait_for)

base, key, base_model, shots = sys.argv[1:5]
set_shots(shots)

with sync_playwright() as p:
    browser = launch(p)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, base, key)

    # Cluster: the leader with its fencing token, the standby, both workers.
    def cluster_seen():
        page.goto(base + "/cluster")
        coords = page.inner_text("#coordinators")
        workers = page.inner_text("#workers") if page.locator("#workers").count() else ""
        return ("leader" in coords and "standby" in coords
                and "w1" in workers and "w2" in workers) and (coords, workers)
    coords, workers = wait_for(cluster_seen, 30, "cluster page: leader, standby, w1, w2")
    seen["coordinators"] = coords
    check(page.inner_text("#readiness") == "ready", "cluster ready")
    check(page.inner_text("#etcd-health") == "healthy", "etcd healthy on the cluster page")
    check("raft leader" in page.inner_text("#etcd-members"), "etcd's raft leader marked")
    check(page.inner_text("#store-health") == "reachable", "object store reachable")
    shot(page, "cluster-processes")

    # A job from the form, on the datanet the test made; it runs on the cluster's workers.
    page.goto(base + "/jobs")
    page.fill("#f-base_model", base_model)
    page.fill("#f-data", "datanet://clinic@latest")
    page.fill("#f-name", "clinic-bot")
    page.fill("#f-rank", "4")
    page.fill("#f-alpha", "8")
    page.fill("#f-steps", "4")
    page.fill("#f-batch_size", "8")
    page.fill("#f-lr", "0.01")
    page.fill("#f-eval_fraction", "")
    page.click("button[value=submit]")
    check("/jobs/" in page.url, "job page: " + page.url)
    seen["job"] = page.url.rsplit("/", 1)[1]
    wait_for(lambda: page.locator("#job-state").inner_text() in ("succeeded", "failed"), 90,
             "job finished")
    check(page.locator("#job-state").inner_text() == "succeeded",
          "job succeeded: " + page.inner_text("main")[:500])
    shot(page, "cluster-job")

    # The adapter answers; its attribution (worker) and reward (leader) appear under it.
    answers = chat(page, base, "clinic-bot", None, "Who records blood pressure?", 8)
    check(answers[0] and not answers[0].startswith("error"), "an answer: %s" % answers)
    wait_for(lambda: "Reward-log entry" in page.inner_text("#attr-a"), 60, "attribution and reward")
    panel = page.inner_text("#attr-a")
    check("Whose data" in panel or "No contributor scored" in panel, "attribution panel: " + panel[:300])
    seen["request_id"] = page.get_attribute("#attr-a form.rerun", "data-request")
    # Re-run in the gateway (no model there): the stored bits come back.
    seen["rerun"] = rerun_attribution(page)
    check("bits match" in seen["rerun"], "re-run attribution: " + seen["rerun"])
    shot(page, "cluster-playground")
    check(not errors, "no page errors: %s" % errors)
    browser.close()

finish()
