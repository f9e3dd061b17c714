// Drives the campaigns page of the account web app (/app/campaigns) in headless Chromium
// (Debian's, through playwright-core): signs in with an account key, writes a campaign in
// the editor (a sender off the account's domains first, and reads the error), picks the
// list, saves it, previews it for a chosen contact, schedules it from the list and waits
// for it to be sent, opens its report and waits for the deliveries and for a person's
// click (the test clicks the delivered link meanwhile); then a throttled campaign with an
// A/B test set up in the editor is paused, resumed and cancelled from the list. Saves a screenshot and prints one JSON
// line of what it saw.
//
// usage: node campaign-check.js BASE_URL KEY LIST_ID FROM_DOMAIN PREVIEW_EMAIL SCREENSHOT
// env:   PLAYWRIGHT_CORE  path of the playwright-core package
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const [base, key, listId, domain, previewEmail, screenshot] = process.argv.slice(2);

const row = (name) => `#campaigns tbody tr:has(td:first-child:text-is("${name}"))`;

async function write(page, name, throttle, abSubject) {
  await page.click("#editor-new");
  await page.fill("#c-name", name);
  await page.fill("#c-from", `news@${domain}`);
  await page.fill("#c-from-name", "News");
  await page.fill("#c-subject", "Hello {{name}}");
  await page.fill("#c-html", '<p>Hi {{name}}, <a href="https://shop.example/{{plan}}">shop</a></p>');
  await page.selectOption("#c-lists", [listId]);
  if (throttle) await page.fill("#c-throttle", String(throttle));
  if (abSubject) {
    await page.check("#ab-on");
    await page.fill("#ab-b", abSubject);
    await page.fill("#ab-percent", "50");
    await page.selectOption("#ab-metric", "clicks");
    await page.fill("#ab-wait", "30");
  }
  await page.click("#editor button[type=submit]");
  await page.waitForSelector("#editor-status[data-saved]", { timeout: 15000 });
  return page.getAttribute("#editor-status", "data-saved");
}

async function stateOf(page, name, state) {
  await page.waitForSelector(`${row(name)}[data-state=${state}]`, { timeout: 60000 });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1300, height: 1800 } });
    const errors = [];
    const consoleErrors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    await page.goto(`${base}/app/campaigns`);
    const redirectedToLogin = page.url().endsWith("/app/login");
    await page.fill("#key", key);
    await Promise.all([page.waitForURL(`${base}/app`), page.click("button[type=submit]")]);
    await page.goto(`${base}/app/campaigns`);
    await page.waitForSelector("body[data-loaded]", { timeout: 30000 });

    // A sender off the account's domains: the API's error, shown with its field.
    await page.fill("#c-name", "Refused");
    await page.fill("#c-from", "news@not-ours.test");
    await page.fill("#c-subject", "x");
    await page.fill("#c-html", "<p>x</p>");
    await page.selectOption("#c-lists", [listId]);
    await page.click("#editor button[type=submit]");
    await page.waitForSelector("#editor-status[data-field]", { timeout: 15000 });
    const refusedField = await page.getAttribute("#editor-status", "data-field");
    const refused = await page.textContent("#editor-status");

    const id = await write(page, "Welcome");
    await page.fill("#preview-email", previewEmail);
    await page.click("#preview-form button[type=submit]");
    await page.waitForSelector("#preview-subject[data-subject]", { timeout: 15000 });
    const previewSubject = await page.getAttribute("#preview-subject", "data-subject");
    const previewHtml = await page.frameLocator("#preview-html").locator("body").innerText();

    await stateOf(page, "Welcome", "draft");
    await page.click(`${row("Welcome")} button[data-action=schedule]`);
    await stateOf(page, "Welcome", "sent");
    await page.click(`${row("Welcome")} button[data-action=report]`);
    await page.waitForSelector("#report-section[data-delivered='3']", { timeout: 60000 });
    // The test clicks the delivered link as a person meanwhile; the report refreshes.
    await page.waitForSelector("#report-section[data-clicked='1']", { timeout: 90000 });
    const links = await page.locator("#links tbody tr").allInnerTexts();
    const funnel = await page.locator("#funnel b").evaluateAll((bs) => Object.fromEntries(bs.map((b) => [b.dataset.figure, b.textContent])));
    const bars = await page.locator("#timeline rect").count();

    // Throttled to one message an hour, with an A/B test of the subject: pause, resume
    // and cancel from the list.
    await write(page, "Slow", 1, "Offer B for {{name}}");
    await stateOf(page, "Slow", "draft");
    await page.click(`${row("Slow")} button[data-action=schedule]`);
    await stateOf(page, "Slow", "sending");
    await page.click(`${row("Slow")} button[data-action=pause]`);
    await stateOf(page, "Slow", "paused");
    await page.click(`${row("Slow")} button[data-action=resume]`);
    await stateOf(page, "Slow", "sending");
    await page.click(`${row("Slow")} button[data-action=cancel]`);
    await stateOf(page, "Slow", "cancelled");
    await page.click(`${row("Slow")} button[data-action=report]`);
    await page.waitForSelector("#report-title:has-text('Slow')", { timeout: 15000 });
    const slow = await page.locator("#funnel b").evaluateAll((bs) => Object.fromEntries(bs.map((b) => [b.dataset.figure, b.textContent])));
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ redirectedToLogin, refusedField, refused, id, previewSubject, previewHtml, links, funnel, bars, slow, errors, consoleErrors }));
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
