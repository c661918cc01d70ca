"""Drives the dashboard in a real headless Chromium through chromedriver (WebDriver), while a run
trains: the runs table lists the run, the loss chart gains points without a reload, a screenshot
is saved, and unticking the run removes its line.

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
try:
    driver.get(url)
    wait = WebDriverWait(driver, 90)
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tbody tr"))
    run = rows[0].get_attribute("data-run")
    print(f"runs table lists {run}")

    wait.until(lambda d: d.execute_script(POINTS) > 0)
    first = driver.execute_script(POINTS)
    # A reload would lose this mark: the points must arrive in the same page.
    driver.execute_script("window.inceptMark = 'same page';")
    wait.until(lambda d: d.execute_script(POINTS) > first)
    assert driver.execute_script("return window.inceptMark") == "same page", "the page reloaded"
    print(f"loss chart grew from {first} to {driver.execute_script(POINTS)} points without a reload")
    driver.save_screenshot(screenshot)

    driver.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{run}"] input.show').click()
    wait.until(lambda d: d.execute_script("return document.getElementById('chart').data.length") == 0)
    print("unticking the run removed its line")
finally:
    driver.quit()
