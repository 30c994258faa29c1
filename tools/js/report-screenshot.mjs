// Open an eval report in headless Chromium with every network request refused, wait until each
// <model-viewer> and each splat viewer (canvas.splat-viewer) has loaded its model or failed, write a
// screenshot and print, as JSON:
// {viewers, states: ["loaded" | "error" | null per viewer], boxes: [{x, y, width, height}],
//  splats, splatStates, splatBoxes (the same for the splat viewers),
//  requests: [URLs that were refused], errors: [page errors]}.
// Usage: node report-screenshot.mjs REPORT.html SCREENSHOT.png
// Chromium: $CHROMIUM, else /usr/bin/chromium (Debian's). WebGL runs on SwiftShader (the CPU).
import { chromium } from "playwright-core";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [report, screenshot] = process.argv.slice(2);
if (!report || !screenshot) {
  console.error("usage: node report-screenshot.mjs REPORT.html SCREENSHOT.png");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  const refused = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  // the page must work from the one file: anything but the file itself and data: URIs is refused
  const own = pathToFileURL(path.resolve(report)).href;
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url === own || url.startsWith("data:") || url.startsWith("blob:")) return route.continue();
    refused.push(url);
    return route.abort();
  });
  await page.goto(own);
  const viewers = await page.locator("model-viewer").count();
  if (viewers > 0) {
    await page.waitForFunction(
      () => [...document.querySelectorAll("model-viewer")].every((v) => v.dataset.state), null,
      { timeout: 90000 }).catch(() => {});
    await page.waitForTimeout(1500);  // a few frames after the model appears
  }
  const splats = await page.locator("canvas.splat-viewer").count();
  if (splats > 0) {
    await page.waitForFunction(
      () => [...document.querySelectorAll("canvas.splat-viewer")].every((v) => v.dataset.state), null,
      { timeout: 90000 }).catch(() => {});
    await page.waitForTimeout(500);
  }
  const seen = async (selector) => [
    await page.$$eval(selector, (all) => all.map((v) => v.dataset.state || null)),
    await page.$$eval(selector, (all) => all.map((v) => {
      const r = v.getBoundingClientRect();
      return { x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height };
    }))];
  const [states, boxes] = await seen("model-viewer");
  const [splatStates, splatBoxes] = await seen("canvas.splat-viewer");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ viewers, states, boxes, splats, splatStates, splatBoxes, requests: refused, errors }));
} finally {
  await browser.close();
}
