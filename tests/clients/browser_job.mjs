// A person in headless Chromium (Debian's, driven by playwright-core) uses the html services directory:
// opens the task page, fills the form, submits, watches the job page refresh until the job ends, then
// downloads the package through the page's link.
// usage: node browser_job.mjs <taskUrl> '<field values json>' <artifact dir>
// Prints one JSON line: {jobUrl, status, download: {name, bytes}, screenshots} or {error}; exit 1 on failure.
import { chromium } from "playwright-core";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";

const [taskUrl, fieldsJson, outDir] = process.argv.slice(2);
const fields = JSON.parse(fieldsJson);
const TERMINAL = ["esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled"];
const timeoutMs = Number(process.env.BROWSER_JOB_TIMEOUT_MS || 600000);
mkdirSync(outDir, { recursive: true });
const shots = [];
const shot = async (page, name) => {
  const path = join(outDir, name);
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root in a container, and with no network beyond loopback (see the machine notes).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const result = { screenshots: shots };
let page;
try {
  page = await (await browser.newContext({ acceptDownloads: true })).newPage();
  await page.goto(`${taskUrl}?f=html`);
  for (const [name, value] of Object.entries(fields)) {
    const field = page.locator(`form [name="${name}"]`);
    const tag = await field.evaluate((el) => el.tagName);
    if (tag === "SELECT") await field.selectOption(String(value));
    else await field.fill(String(value));
  }
  await shot(page, "1-task-form.png");
  await Promise.all([page.waitForURL(/\/jobs\/j[0-9a-f]{32}/, { timeout: 60000 }),
                     page.click('form button[type="submit"]')]);
  result.jobUrl = page.url();
  const deadline = Date.now() + timeoutMs;
  let status = "";
  let sawRunning = false;
  while (Date.now() < deadline) {
    try {
      // The page reloads itself every 3 s (meta refresh); read whatever the current load shows.
      status = (await page.textContent("td.status", { timeout: 5000 }))?.trim() || "";
    } catch { status = ""; }
    if (status && !TERMINAL.includes(status) && !sawRunning) { sawRunning = true; await shot(page, "2-job-running.png"); }
    if (TERMINAL.includes(status)) break;
    await page.waitForTimeout(1000);
  }
  result.status = status;
  result.sawRunning = sawRunning;
  await shot(page, "3-job-finished.png");
  if (status === "esriJobSucceeded") {
    const [download] = await Promise.all([page.waitForEvent("download", { timeout: 60000 }),
                                          page.click("text=download the .dlpk")]);
    const path = join(outDir, download.suggestedFilename());
    await download.saveAs(path);
    result.download = { name: download.suggestedFilename(), bytes: statSync(path).size, path };
  } else {
    result.messages = await page.locator("tr").allTextContents();
  }
  console.log(JSON.stringify(result));
} catch (err) {
  if (page) { try { await shot(page, "error.png"); } catch {} }
  console.log(JSON.stringify({ ...result, error: String(err && err.message || err) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
