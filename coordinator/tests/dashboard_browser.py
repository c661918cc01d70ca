"""Drives the dashboard in a real headless Chromium through chromedriver (WebDriver), over a
finished run and one that trains: the runs table lists both, the loss chart gains points without
a reload, a screenshot is saved, smoothing draws smoothed lines over the raw ones, grouping by
the learning rate (the runs differ in it) draws one mean line per group, and unticking a run
removes its line. Then, over the finished run: x by epoch gives fractional epochs below the
steps, "ignore outliers" fixes the y range (and unticking it autoranges again), the step time
by rank chart stacks data, compute and all-reduce with one bar per worker; ticking the training
run back, each run has a full-resolution JSON download beside its CSV one.

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
for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1320"]:
    options.add_argument(argument)
driver = webdriver.Chrome(service=Service(chromedriver), options=options)
POINTS = """
    const chart = document.getElementById('chart');
    return chart.data ? chart.data.reduce((n, trace) => n + trace.x.length, 0) : 0;
"""
TRACES = "return (document.getElementById('chart').data || []).length"
MEANS = "return (document.getElementById('chart').data || []).filter(t => t.meta === 'mean').length"
# The first trace's x values and the x axis' title, read together (one drawing).
FIRST_X = """
    const chart = document.getElementById('chart');
    const title = chart.layout.xaxis.title;
    return [title && (title.text || title), Array.from(chart.data[0].x)];
"""
Y_AXIS = """
    const chart = document.getElementById('chart'), y = chart.layout.yaxis;
    return [y.autorange, y.range ? Array.from(y.range) : null,
            chart.data.flatMap(t => Array.from(t.y)).filter(v => Number.isFinite(v))];
"""
RANKS = """
    const ranks = document.getElementById('ranks');
    return [(ranks.data || []).map(t => [t.name, t.orientation, t.y.length]),
            document.getElementById('ranks-note').textContent];
"""
RUNS = """
    const done = arguments[arguments.length - 1];
    fetch('/api/runs').then(r => r.json())
        .then(d => done(d.runs.map(r => [r.id, r.world_size])), e => done(String(e)));
"""
DOWNLOADS = """
    return [...document.querySelectorAll('#downloads a')]
        .map(a => [a.textContent, a.getAttribute('href')]);
"""


def tick(driver, box, on):
    """Ticks or unticks the checkbox <input id=box> and tells the page."""
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.checked = arguments[1];"
        "e.dispatchEvent(new Event('change'));",
        box,
        on,
    )


def click_show(driver, run):
    """Clicks the run's show box. The table is redrawn every 2 s: find and click it in one step
    (no stale element)."""
    driver.execute_script(
        "document.querySelector(`#runs tr[data-run=\"${arguments[0]}\"] input.show`).click();",
        run,
    )


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
    # The screenshot shows the step time by rank too.
    wait.until(lambda d: len(d.execute_script(RANKS)[0]) == 3)
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
    click_show(driver, live)
    wait.until(lambda d: d.execute_script(TRACES) == 1)
    print("unticking a run removed its line")

    # From here on the chart shows the finished run only: its points no longer change.
    title, steps = driver.execute_script(FIRST_X)
    assert title == "step", title
    choose(driver, "x", "epoch")
    wait.until(lambda d: d.execute_script(FIRST_X)[0] == "epoch", "the x axis never became epoch")
    epochs = driver.execute_script(FIRST_X)[1]
    assert len(epochs) == len(steps) > 0, (epochs, steps)
    assert all(isinstance(e, (int, float)) for e in epochs), epochs
    assert all(a <= b for a, b in zip(epochs, epochs[1:])), f"epochs decrease: {epochs}"
    assert any(e != int(e) for e in epochs), f"no fractional epoch: {epochs}"
    assert all(e < s if s > 0 else e <= s for e, s in zip(epochs, steps)), (epochs, steps)
    print(f"x by epoch: {len(epochs)} fractional epochs from {epochs[0]:.3g} to {epochs[-1]:.3g}"
          f", below the steps ({steps[0]} to {steps[-1]})")

    def fixed_range(d):
        autorange, span, _ = d.execute_script(Y_AXIS)
        return autorange is False and span and len(span) == 2 and span[0] < span[1] and span

    tick(driver, "outliers", True)
    low, high = wait.until(fixed_range, "ignoring outliers set no y range")
    values = driver.execute_script(Y_AXIS)[2]
    # Percentiles lie within the values; the padding is 5 % of a span no wider than theirs.
    pad = 0.05 * (max(values) - min(values)) + 1e-12
    assert min(values) - pad <= low < high <= max(values) + pad, (low, high, values)
    tick(driver, "outliers", False)
    wait.until(lambda d: d.execute_script(Y_AXIS)[0] is True, "unticked, the y axis kept its range")
    print(f"ignoring outliers fixed the y range to [{low:.4g}, {high:.4g}]; unticked, it autoranges")

    listed = driver.execute_async_script(RUNS)
    assert isinstance(listed, list), listed
    first, world_size = next((run, size) for run, size in listed if run != live)
    expected = [[name, "h", world_size] for name in ["data", "compute", "all-reduce"]]
    wait.until(
        lambda d: (lambda bars, note: bars == expected and first in note)(*d.execute_script(RANKS)),
        f"no step time by rank chart of {first} with {world_size} bars per part",
    )
    print(f"step time by rank stacks data, compute and all-reduce for {first}'s {world_size}"
          f" ranks: {driver.execute_script(RANKS)[1]}")

    click_show(driver, live)
    runs = [run for run, _ in listed]

    def json_links(d):
        links = dict(d.execute_script(DOWNLOADS))
        return all(f"{run}.csv" in links and "format=json" in links.get(f"{run}.json", "")
                   and "points=all" in links[f"{run}.json"] for run in runs) and links

    links = wait.until(json_links, "a run lacks its JSON (or CSV) download")
    print("each run has a full-resolution JSON download beside its CSV one: "
          + ", ".join(links[f"{run}.json"] for run in runs))
finally:
    driver.quit()
