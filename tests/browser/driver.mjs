// A headless Chromium the pytest tests steer line by line (tests/test_browser.py).
//
// Debian's /usr/bin/chromium, launched by playwright-core: never a downloaded browser. One JSON
// request per line on stdin, one JSON answer per line on stdout, in order:
//   {"op": "goto", "url": U}                    open U in the page (a fresh page each time)
//   {"op": "eval", "expr": E}                   the value of the JavaScript expression E
//   {"op": "wait", "expr": E, "ms": MS}         wait until E is truthy, answer its value
//   {"op": "screenshot", "path": P}             save a PNG of the whole page
//   {"op": "viewport", "width": W, "height": H} resize the page's viewport (CSS pixels)
//   {"op": "console"}                           the page's console lines and errors so far
//   {"op": "cookies", "cookies": [C, ...]}      add cookies to the browser (context.addCookies)
//   {"op": "clear_cookies"}                     remove every cookie the browser holds
// Answers are {"ok": true, "value": V} or {"ok": false, "error": "..."}. End of stdin closes
// the browser and exits.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--headless', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
let page = null;
let consoleLines = [];

async function handle(req) {
  switch (req.op) {
    case 'goto':
      if (page) await page.close();
      consoleLines = [];
      page = await context.newPage();
      page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
      await page.goto(req.url, { waitUntil: 'load' });
      return page.url();
    case 'eval':
      return page.evaluate(req.expr);
    case 'wait': {
      const handle = await page.waitForFunction(req.expr, null,
        { timeout: req.ms ?? 10000, polling: 50 });
      return handle.jsonValue();
    }
    case 'screenshot':
      await page.screenshot({ path: req.path, fullPage: true });
      return req.path;
    case 'viewport':
      await page.setViewportSize({ width: req.width, height: req.height });
      return page.viewportSize();
    case 'console':
      return consoleLines;
    case 'cookies':
      await context.addCookies(req.cookies);
      return context.cookies();
    case 'clear_cookies':
      await context.clearCookies();
      return null;
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ ok: true, value: browser.version() }) + '\n');
for await (const line of lines) {
  let answer;
  try {
    answer = { ok: true, value: await handle(JSON.parse(line)) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(answer === undefined ? null : answer) + '\n');
}
await browser.close();
