"""Drives the live view in Debian's chromium over WebDriver, making calls with
the official `openai` client while the page is open, and prints what it saw as
one JSON object (the Rust test, tests/live_ui.rs, asserts on it).

    live_ui.py BASE TOKEN CALLS SCREENSHOT

BASE is tokentap's URL, TOKEN its --access-token, CALLS how many calls to make
with the page open, SCREENSHOT where to save a PNG of the page.
"""

import json
import os
import sys
import time

import openai
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

base, token, n_calls, screenshot = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

opts = webdriver.ChromeOptions()
opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps"):
    opts.add_argument(arg)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
# the driver is Debian's: Selenium Manager must not go looking for one online
driver = webdriver.Chrome(service=Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")), options=opts)
wait = WebDriverWait(driver, 30, poll_frequency=0.05)
out = {}
try:
    driver.get(f"{base}/ui?token={token}")
    out["url_after_token"] = driver.current_url
    wait.until(lambda d: d.find_element(By.ID, "conn").text == "live")
    out["rows_before"] = len(driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr"))

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test-not-a-real-key")
    trace_ids = []
    seen_rows = []
    for i in range(n_calls):
        model = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"][i % 3]
        raw = client.chat.completions.with_raw_response.create(
            model=model, stream=(i % 2 == 0),
            messages=[{"role": "user", "content": f"question {i}: what is a span?"}])
        body = raw.parse()
        if i % 2 == 0:
            for _ in body:  # a stream ends (and is recorded) once read to its end
                pass
        trace_ids.append(raw.headers["traceresponse"].split("-")[1])
        # the row appears without a reload, before the next call is made
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#calls tbody tr")) >= out["rows_before"] + i + 1)
        seen_rows.append(len(driver.find_elements(By.CSS_SELECTOR, "#calls tbody tr")))
    out["trace_ids"] = trace_ids
    out["rows_after_each_call"] = seen_rows
    # and a failing one, for the error column and chart
    try:
        client.with_options(max_retries=0).chat.completions.create(
            model="demo-error-429", messages=[{"role": "user", "content": "x"}])
    except openai.RateLimitError:
        pass
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#calls tbody td.error")) >= 1)

    # the table is redrawn as calls arrive: read it in one script, not element by element
    table = driver.execute_script("""
        const rows = [...document.querySelectorAll('#calls tbody tr')];
        return {ids: rows.map(r => r.dataset.traceId), models: rows.map(r => r.cells[2].textContent),
                links: [...document.querySelectorAll('#calls a.trace')].map(a => a.href)};""")
    out["row_trace_ids"] = table["ids"]
    out["row_models"] = table["models"]
    out["trace_links"] = table["links"]

    # a chart with data: the requests line has a point in at least one bucket above zero
    chart = driver.execute_script("""
        const p = document.querySelector('#chart-requests path.s0');
        return {d: p.getAttribute('d'), points: Number(p.dataset.points),
                bars: [...document.querySelectorAll('#chart-cost rect.bar')].map(b => b.dataset.model),
                calls: document.getElementById('t-calls').textContent};""")
    out["chart_requests_points"] = chart["points"]
    out["chart_requests_d"] = chart["d"]
    out["cost_bars"] = chart["bars"]
    out["totals_calls"] = chart["calls"]

    # a row opens its details: every attribute of the call
    target = trace_ids[-1]
    wait.until(lambda d: d.execute_script(
        f"const r = document.querySelector(\"#calls tbody tr[data-trace-id='{target}']\"); if (r) r.click(); return !!r;"))
    wait.until(lambda d: d.find_element(By.ID, "details").is_displayed())
    attrs = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#d-attrs tr"):
        k, v = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        attrs[k] = v
    out["detail_trace_id"] = target
    out["detail_attributes"] = attrs
    out["detail_trace_link"] = driver.find_element(By.ID, "d-trace-link").get_attribute("href")
    out["detail_capture_note"] = driver.find_element(By.ID, "d-capture").text
    driver.find_element(By.ID, "close").click()

    # filters narrow the table (and totals) to matching calls
    def rows_models():
        return driver.execute_script(
            "return [...document.querySelectorAll('#calls tbody tr')].map(r => r.cells[2].textContent)")

    def rows_statuses():
        return driver.execute_script(
            "return [...document.querySelectorAll('#calls tbody tr')].map(r => r.cells[4].className)")
    total = len(out["row_models"])
    Select(driver.find_element(By.ID, "f-model")).select_by_visible_text("gpt-4o")
    wait.until(lambda d: set(rows_models()) == {"gpt-4o"})
    out["filtered_by_model"] = rows_models()
    out["filtered_totals_calls"] = driver.execute_script("return document.getElementById('t-calls').textContent")
    Select(driver.find_element(By.ID, "f-model")).select_by_index(0)
    Select(driver.find_element(By.ID, "f-status")).select_by_visible_text("error")
    wait.until(lambda d: set(rows_statuses()) == {"error"})
    out["filtered_by_status"] = rows_models()
    Select(driver.find_element(By.ID, "f-status")).select_by_index(0)
    wait.until(lambda d: len(rows_models()) == total)

    # the window selector redraws from the same data
    driver.find_element(By.CSS_SELECTOR, "#window option[value='all']").click()
    time.sleep(0.6)  # one render tick, for the screenshot only
    driver.save_screenshot(screenshot)

    out["console"] = [e for e in driver.get_log("browser")]
    requests = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            requests.append(msg["params"]["request"]["url"])
    out["requests"] = requests
finally:
    driver.quit()
print(json.dumps(out))
