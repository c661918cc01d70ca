"""Drives the dashboard in a real headless Chromium through chromedriver (WebDriver), over a
finished run and one that trains: the runs table lists both, the loss chart gains points without
a reload, a screenshot is saved, smoothing draws smoothed lines over the raw ones, grouping by
the learning rate (the runs differ in it) draws one mean line per group, and unticking a run
removes its line.

    python3 dashboard_browser.py URL SCREENSHOT.png

Exit status 77 (printing why) when Selenium, chromium or chromedriver is missing: the caller
reports the test as skipped. Run by coordinator/tests/dashboard.rs.
"""

import shutil
import sys

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    print("selenium is not installed (pip install selenium)")
    sys.exit(77)

url, screenshot = sys.argv[1], sys.argv[2]
chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
if not chromium or not chromedriver:
    print("chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    sys.exit(77)

options = webdriver.ChromeOptions()
options.binary_location = chromium
for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"]:
    options.add_argument(argument)
driver = webdriver.Chrome(service=Service(chromedriver), options=options)
POINTS = """
    const chart = document.getElementById('chart');
    return chart.data ? chart.data.reduce((n, trace) => n + trace.x.length, 0) : 0;
"""
TRACES = "return (document.getElementById('chart').data || []).length"
MEANS = "return (document.getElementById('chart').data || []).filter(t => t.meta === 'mean').length"


def choose(driver, select, value):
    """Picks `value` in the <select id=select> (or sets the slider) and tells the page."""
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('change'));",
        select,
        value,
    )


try:
    driver.get(url)
    wait = WebDriverWait(driver, 90)
    rows = wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2
                      and d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
    live = next(r.get_attribute("data-run") for r in rows if "running" in r.text)
    print(f"runs table lists both runs; {live} is running")

    wait.until(lambda d: d.execute_script(TRACES) == 2 and d.execute_script(POINTS) > 0)
    first = driver.execute_script(POINTS)
    # A reload would lose this mark: the points must arrive in the same page.
    driver.execute_script("window.inceptMark = 'same page';")
    wait.until(lambda d: d.execute_script(POINTS) > first)
    assert driver.execute_script("return window.inceptMark") == "same page", "the page reloaded"
    print(f"loss chart grew from {first} to {driver.execute_script(POINTS)} points without a reload")
    driver.save_screenshot(screenshot)

    choose(driver, "smoothing", "0.9")
    wait.until(lambda d: d.execute_script(TRACES) == 4)
    differs = driver.execute_script(
        "const d = document.getElementById('chart').data;"
        "return d[1].y.some((v, i) => Math.abs(v - d[0].y[i]) > 1e-9);"
    )
    assert differs, "the smoothed line equals the raw one"
    print("smoothing draws a smoothed line over each faint raw one")
    choose(driver, "smoothing", "0")

    choose(driver, "group", "train.optimizer.learning_rate")
    wait.until(lambda d: d.execute_script(MEANS) == 2)
    print("grouping by train.optimizer.learning_rate draws one mean line (and band) per group")
    choose(driver, "group", "")

    wait.until(lambda d: d.execute_script(TRACES) == 2)
    # The table is redrawn every 2 s: find and click the box in one step (no stale element).
    driver.execute_script(
        "document.querySelector(`#runs tr[data-run=\"${arguments[0]}\"] input.show`).click();",
        live,
    )
    wait.until(lambda d: d.execute_script(TRACES) == 1)
    print("unticking a run removed its line")
finally:
    driver.quit()
