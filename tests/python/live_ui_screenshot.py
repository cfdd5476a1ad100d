"""The README's picture of the live view: demo traffic for a while (several
models, streams, a few failures) with the page open in chromium, then a
screenshot. Not a test; run it by hand against `tokentap --demo`:

    tokentap --demo &
    target/tokentap-python/bin/python tests/python/live_ui_screenshot.py http://127.0.0.1:8080 90 docs/ui.png
"""

import os
import random
import sys
import threading
import time

import openai
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-demo", max_retries=0)
models = ["gpt-4o-mini"] * 5 + ["gpt-4o"] * 2 + ["gpt-4.1-mini"] * 2 + ["o4-mini", "demo-error-429"]
questions = ["What is OpenTelemetry?", "What is a span?", "Explain time to first token.",
             "Why do tokens cost money?", "What does a sidecar proxy do?"]


def traffic(until):
    while time.time() < until:
        model = random.choice(models)
        try:
            if random.random() < 0.5:
                for _ in client.chat.completions.create(
                        model=model, stream=True,
                        messages=[{"role": "user", "content": random.choice(questions)}]):
                    pass
            else:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": random.choice(questions)}])
        except openai.APIError:
            pass
        time.sleep(random.uniform(0.05, 0.6))


opts = webdriver.ChromeOptions()
opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
    opts.add_argument(arg)
driver = webdriver.Chrome(service=Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")),
                          options=opts)
try:
    driver.get(f"{base}/ui")
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "conn").text == "live")
    until = time.time() + seconds
    workers = [threading.Thread(target=traffic, args=(until,)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(1)
    driver.save_screenshot(out)
finally:
    driver.quit()
