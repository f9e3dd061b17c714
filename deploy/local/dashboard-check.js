// Drives the operations dashboard in headless Chromium (Debian's, through
// playwright-core): signs in with an operator key, waits for the charts to draw data,
// saves a screenshot, presses Resume on MEMBER and waits for its row to go. Prints one
// JSON line of what it saw.
//
// usage: node dashboard-check.js BASE_URL OPERATOR_KEY SCREENSHOT MEMBER
// env:   PLAYWRIGHT_CORE  path of the playwright-core package
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const [base, key, screenshot, member] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await page.goto(`${base}/dashboard`);
    const redirectedToLogin = page.url().endsWith("/dashboard/login");
    await page.fill("#key", key);
    await Promise.all([page.waitForURL(`${base}/dashboard`), page.click("button[type=submit]")]);
    await page.waitForSelector("body[data-loaded]", { timeout: 30000 });
    const resume = `button.resume[data-member="${member}"]`;
    await page.waitForSelector(resume, { timeout: 30000 });
    const points = await page.evaluate(() => window.sendmillDashboard.points);
    const canvases = await page.locator(".uplot canvas").count();
    const rows = {};
    for (const id of ["table-groups", "table-bounces", "table-paused", "table-alerts"]) {
      rows[id] = await page.locator(`#${id} tbody tr`).count();
    }
    const kpis = await page.locator("#kpis .kpi").allInnerTexts();
    await page.screenshot({ path: screenshot, fullPage: true });
    await page.click(resume);
    await page.waitForSelector(resume, { state: "detached", timeout: 15000 });
    console.log(JSON.stringify({ redirectedToLogin, points, canvases, rows, kpis, errors }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
