// A person watches a training job in headless Chromium (Debian's, driven by playwright-core): the job page must
// update itself (no reload) while the job runs, draw the loss chart and the progress bar, and once the job has
// finished show its model card; then the item page shows the card too. Screenshots go to <artifact dir>.
// usage: node job_page_look.mjs <jobUrl (f=html)> <artifact dir>
// Prints one JSON line: {running, finished, item, reloads, screenshots} or {error}; exit 1 on failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [jobUrl, outDir] = process.argv.slice(2);
const TERMINAL = ["esriJobSucceeded", "esriJobFailed", "esriJobTimedOut", "esriJobCancelled"];
const timeoutMs = Number(process.env.JOB_PAGE_TIMEOUT_MS || 600000);
mkdirSync(outDir, { recursive: true });
const shots = [];
const shot = async (page, name) => {
  const path = join(outDir, name);
  await page.screenshot({ path, fullPage: true });
  shots.push(path);
};

// What the page shows now: status, progress label and width, charts and their points, the card picture.
const look = (page) => page.evaluate(() => {
  const q = (s) => document.querySelector(s);
  const img = q(".card img");
  return {
    status: (q("td.status")?.textContent || "").trim(),
    progress: (q(".progress .label")?.textContent || "").trim(),
    barWidth: q(".progress .bar")?.style.width || "",
    charts: [...document.querySelectorAll("figure.chart")].map((f) => ({
      title: f.querySelector("figcaption")?.textContent.trim(),
      lines: [...f.querySelectorAll("polyline")].map((p) => p.getAttribute("points").trim().split(/\s+/).length),
      legend: f.querySelector(".legend")?.textContent.trim(),
    })),
    cardImage: img ? { loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth } : null,
    cardLinks: [...document.querySelectorAll(".card a")].map((a) => a.getAttribute("href")),
    itemLink: [...document.querySelectorAll("a")].find((a) => a.textContent.trim() === "item page")?.href || null,
    marker: window.__sameDocument === true,
  };
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const result = { screenshots: shots, reloads: 0 };
let page;
try {
  page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) result.reloads += 1; });
  await page.goto(jobUrl);
  result.reloads = 0;
  await page.evaluate(() => { window.__sameDocument = true; });
  const deadline = Date.now() + timeoutMs;
  let now = await look(page);
  while (Date.now() < deadline && !TERMINAL.includes(now.status)) {
    if (!result.running && now.status === "esriJobExecuting" && now.charts.length
        && now.charts[0].lines.every((n) => n >= 2)) {
      result.running = now;
      await shot(page, "job-running.png");
    }
    await page.waitForTimeout(500);
    now = await look(page);
  }
  await page.waitForTimeout(800); // the card picture loads
  result.finished = await look(page);
  await shot(page, "job-finished.png");
  if (result.finished.cardLinks.length) {
    const card = await page.request.get(new URL(result.finished.cardLinks.find((h) => h.includes("model_metrics.html")),
                                                page.url()).href);
    result.cardHtml = { status: card.status(), type: card.headers()["content-type"],
                        csp: card.headers()["content-security-policy"] || "" };
  }
  result.reloadsWhileWatching = result.reloads;
  if (result.finished.itemLink) {
    await page.goto(result.finished.itemLink);
    await page.waitForLoadState("networkidle");
    const frame = page.frames().find((f) => f.url().includes("model_metrics.html"));
    result.item = await page.evaluate(() => {
      const img = document.querySelector(".card img");
      return { title: document.querySelector("h1")?.textContent.trim(),
               cardImage: img ? img.complete && img.naturalWidth > 0 : false };
    });
    result.item.cardFrameText = frame ? (await frame.textContent("body")).slice(0, 200) : null;
    await shot(page, "item-page.png");
  }
  console.log(JSON.stringify(result));
} catch (err) {
  if (page) { try { await shot(page, "error.png"); } catch {} }
  console.log(JSON.stringify({ ...result, error: String(err && err.message || err) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
