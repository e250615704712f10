// README's picture of the demo page after Drop connection (examples/demo/screenshot.png), from
// a real run: headless Debian Chromium, as in driver.mjs, against a running `sse-server --demo`.
//
//   ./sse-server --demo & server=$!
//   node tests/browser/screenshot.mjs http://127.0.0.1:8080/ /tmp/demo.png
//   kill $server
//   pngquant --force --output examples/demo/screenshot.png /tmp/demo.png
//
// It lets the page fill for WARM_MS, presses Drop connection, waits until the Bytes column
// holds still on the reconnect and the event log has said what came back, and saves the whole
// page. It prints the numbers the picture shows (retry, events replayed), for the alt text.
import { chromium } from 'playwright-core';

const [url, out] = process.argv.slice(2);
if (!url || !out) {
  console.error('usage: node screenshot.mjs URL OUT.png');
  process.exit(2);
}
const WARM_MS = Number(process.env.WARM_MS || 20000);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
  args: ['--no-sandbox', '--headless', '--disable-gpu', '--no-first-run'] });
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('#state').textContent === 'OPEN');
  await page.waitForTimeout(WARM_MS);
  await page.click('#drop');
  await page.waitForFunction(() => demoState.replayed > 0 &&
    document.querySelector('#moments button[aria-pressed="true"]') &&
    document.querySelector('#log').innerText.includes('nothing was lost'), null, { timeout: 20000 });
  await page.mouse.move(0, 0);
  await page.screenshot({ path: out, fullPage: true });
  const facts = await page.evaluate(() => ({
    retry: document.querySelector('#retry').textContent,
    replayed: demoState.moments[0].replayed,
    reconnects: document.querySelector('#reconnects').textContent
  }));
  console.log(JSON.stringify(facts));
} finally {
  await browser.close();
}
