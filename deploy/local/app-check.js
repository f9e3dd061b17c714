// Drives the account web app (/app) in headless Chromium (Debian's, through
// playwright-core): signs in with an account key, reads the lists, searches contacts,
// imports a CSV file and waits for the job to complete, types a segment expression and
// waits for its count, then a broken one and waits for the error's position, saves the
// segment, saves a screenshot, signs out and in again with another account's key and
// reads what that account sees. Prints one JSON line of what it saw.
//
// usage: node app-check.js BASE_URL KEY CSV_FILE OTHER_KEY SCREENSHOT
// env:   PLAYWRIGHT_CORE  path of the playwright-core package
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const [base, key, csv, otherKey, screenshot] = process.argv.slice(2);

async function signIn(page, key) {
  await page.goto(`${base}/app`);
  const redirectedToLogin = page.url().endsWith("/app/login");
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(`${base}/app`), page.click("button[type=submit]")]);
  await page.waitForSelector("body[data-loaded]", { timeout: 30000 });
  return redirectedToLogin;
}

const texts = (page, selector) => page.locator(selector).allInnerTexts();

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1300, height: 1600 } });
    const errors = [];
    const consoleErrors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    const redirectedToLogin = await signIn(page, key);
    const lists = await texts(page, "#lists tbody tr");

    await page.fill("#search-prefix", "ada");
    await page.click("#search button[type=submit]");
    // (The app's CSP forbids eval, so waits are on selectors, not page functions.)
    await page.waitForSelector('#contacts tbody tr[data-email="bob@ok.test"]', { state: "detached", timeout: 15000 });
    const searched = await page.locator("#contacts tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.email));

    await page.setInputFiles("#import-file", csv);
    await page.click("#import button[type=submit]");
    await page.waitForSelector("#import-status[data-state=completed]", { timeout: 60000 });
    const importStatus = await page.textContent("#import-status");
    const skipped = await texts(page, "#import-skipped tbody tr");
    const listsAfter = await texts(page, "#lists tbody tr");

    await page.fill("#segment-expression", 'attributes.plan = "pro" and in_list("Customers")');
    await page.waitForSelector("#segment-count[data-count]", { timeout: 15000 });
    const count = Number(await page.getAttribute("#segment-count", "data-count"));
    await page.fill("#segment-name", "Pro customers");
    await page.click("#segment-save button[type=submit]");
    await page.waitForSelector("#segments tbody tr", { timeout: 15000 });
    const segments = await texts(page, "#segments tbody tr");
    await page.fill("#segment-expression", 'attributes.plan = "pro" and');
    await page.waitForSelector("#segment-count[data-position]", { timeout: 15000 });
    const position = Number(await page.getAttribute("#segment-count", "data-position"));
    const error = await page.textContent("#segment-count");
    await page.screenshot({ path: screenshot, fullPage: true });

    await Promise.all([page.waitForURL(`${base}/app/login`), page.click("header button[type=submit]")]);
    await signIn(page, otherKey);
    const other = {
      lists: await texts(page, "#lists tbody tr"),
      contacts: await texts(page, "#contacts tbody tr"),
      segments: await texts(page, "#segments tbody tr"),
    };
    console.log(JSON.stringify({ redirectedToLogin, lists, searched, importStatus, skipped, listsAfter, count, segments, position, error, other, errors, consoleErrors }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
