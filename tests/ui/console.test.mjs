// Browser tests of the web console, against the real air-nanny binary on a copy of the demo
// configuration, in Debian's headless Chromium driven by playwright-core.
// Run by tests/ui/run.sh, which builds the binaries and installs Chromium.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const REPO = path.resolve(import.meta.dirname, "../..");
const AIR_NANNY = process.env.AIR_NANNY ?? path.join(REPO, "target/debug/air-nanny");
const DEMO = process.env.DEMO ?? path.join(REPO, "target/debug/demo-service");
const ARTIFACTS = process.env.ARTIFACTS ?? path.join(REPO, "target/ui-artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const DAEMONS = ["timesync", "sensor-bus", "recorder", "telemetry"];

async function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function waitFor(what, fn, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A temp copy of the demo (conf/ with its scripts, a rootpath with the programs) and air-nanny on it. */
async function startDemo({ token, services, yaml: extraYaml = "", files = {} } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "air-nanny-ui-"));
  const conf = path.join(dir, "conf");
  fs.cpSync(path.join(REPO, "conf/demo"), path.join(conf, "demo"), { recursive: true });
  fs.mkdirSync(path.join(dir, "root/bin"), { recursive: true });
  for (const name of [...DAEMONS, "preflight", "camera", "solo"]) fs.copyFileSync(DEMO, path.join(dir, "root/bin", name));
  for (const f of fs.readdirSync(path.join(dir, "root/bin"))) fs.chmodSync(path.join(dir, "root/bin", f), 0o755);
  const port = await freePort();
  // Nothing is shared with a running demo: the API, the sensor-bus program's port (18081 in the
  // demo) and the cgroups are this test's own.
  const busPort = await freePort();
  const busScript = path.join(conf, "demo/sensor-bus/run.sh");
  fs.writeFileSync(busScript, fs.readFileSync(busScript, "utf8").replaceAll("18081", String(busPort)));
  let yaml = `SERVER: ui-test\nPUBLIC_CONF: public.yaml\nSERVER_PORT: ${port}\nLOG_DIR: logs\nWORK_DIR: .\nSTOP_TIMEOUT: 5\n` +
    `CGROUP_BASE: /air-nanny-ui/${process.pid}-${port}\n`;
  if (token) { fs.writeFileSync(path.join(conf, "token"), token + "\n"); yaml += "API_TOKEN_FILE: token\n"; }
  yaml += extraYaml;
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(conf, rel)), { recursive: true });
    fs.writeFileSync(path.join(conf, rel), text, { mode: 0o755 });
  }
  fs.writeFileSync(path.join(conf, "config.yaml"), yaml);
  fs.writeFileSync(path.join(conf, "public.yaml"), `rootpath: ${path.join(dir, "root")}\n`);
  fs.writeFileSync(path.join(conf, "services.json"),
    services ?? fs.readFileSync(path.join(REPO, "conf/services.json"), "utf8").replaceAll("127.0.0.1:18081", `127.0.0.1:${busPort}`));
  const log = fs.openSync(path.join(dir, "nanny.log"), "a");
  const child = spawn(AIR_NANNY, ["run", "--config", path.join(conf, "config.yaml")], { stdio: ["ignore", "ignore", log] });
  const url = `http://127.0.0.1:${port}/`;
  await waitFor("air-nanny's API", async () => (await fetch(url + "health")).ok);
  return {
    dir, url, token, port,
    servicesJson: () => fs.readFileSync(path.join(conf, "services.json"), "utf8"),
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => child.exitCode !== null ? r() : child.once("exit", r));
      fs.rmSync(dir, { recursive: true, force: true });
      removeCgroups(`/air-nanny-ui/${process.pid}-${port}`);
    },
  };
}

// A shutdown leaves the services' empty cgroups for the next start: a test's own are removed.
function removeCgroups(base) {
  const line = fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").find((l) => l.split(" - ")[1]?.startsWith("cgroup2 "));
  if (!line) return;
  const dir = path.join(line.split(" - ")[0].split(" ")[4], base);
  if (!fs.existsSync(dir)) return;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) try { fs.rmdirSync(path.join(dir, e.name)); } catch {}
  }
  try { fs.rmdirSync(dir); } catch {}
}

let browser, demo;

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  demo = await startDemo();
});

after(async () => {
  await demo?.stop();
  await browser?.close();
});

async function openConsole(url = demo.url) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(url);
  return page;
}

const row = (page, name) => page.locator(`#tasks tr[data-name="${name}"]`);

test("the overview lists the demo services as running, with the start-order picture", async () => {
  const page = await openConsole();
  for (const name of DAEMONS) {
    await row(page, name).locator('[data-state="2"]').waitFor({ timeout: 20000 });
    assert.notEqual(await row(page, name).locator("td.pids").textContent(), "–");
  }
  // Lanes: init first, then priorities 1, 2, 3, with arrows between.
  const lanes = await page.locator(".lane h3").allTextContents();
  assert.deepEqual(lanes, ["init · priority 0", "priority 1", "priority 2", "priority 3"]);
  assert.equal(await page.locator(".arrow").count(), 3);
  assert.equal(await page.locator('.lane[data-lane="2"] .box').count(), 2);
  await page.locator('.box.s2[data-name="sensor-bus"]').waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, "overview.png"), fullPage: true });
  await page.locator("#lanes").screenshot({ path: path.join(ARTIFACTS, "start-order.png") });
  await page.close();
});

test("restart changes the pid", async () => {
  const page = await openConsole();
  const pids = row(page, "telemetry").locator("td.pids");
  await row(page, "telemetry").locator('[data-state="2"]').waitFor();
  const before = await pids.textContent();
  await row(page, "telemetry").locator('[data-action="restart"]').click();
  await page.locator("#confirm-yes").click();
  await waitFor("a new pid", async () => {
    const now = await pids.textContent();
    return now !== before && /^\d+$/.test(now) && (await row(page, "telemetry").locator('[data-state="2"]').count()) === 1;
  });
  await page.close();
});

test("the editor adds a service, which appears in services.json and runs", async () => {
  const page = await openConsole();
  await page.locator("#add").click();
  await page.locator("#f-name").fill("camera");
  await page.locator("#f-priority").fill("4");
  await page.locator("#f-execPath").fill("");
  await page.locator("#f-programFilePath").fill("/bin/camera");
  await page.locator("#f-args").fill("--heartbeat\n30");
  await page.locator("#edit-save-apply").click();
  await row(page, "camera").locator('[data-state="2"]').waitFor({ timeout: 20000 });
  const saved = JSON.parse(demo.servicesJson()).find((s) => s.name === "camera");
  assert.ok(saved, "camera is in services.json");
  assert.deepEqual(saved.script.args, ["--heartbeat", "30"]);
  assert.equal(saved.priority, 4);
  await page.locator('.lane h3', { hasText: "priority 4" }).waitFor();
  await page.close();
});

test("a bad value shows the API's message next to its field and changes nothing", async () => {
  const page = await openConsole();
  await row(page, "telemetry").locator('[data-action="edit"]').click();
  await page.locator("#f-name").waitFor();
  assert.equal(await page.locator("#f-name").inputValue(), "telemetry");
  const before = demo.servicesJson();
  await page.locator("#f-interval").fill("0");
  await page.locator("#f-priority").fill("high");
  await page.locator("#edit-save-config").click();
  const intervalErr = page.locator('[data-err="healthCheck.interval"]');
  await intervalErr.filter({ hasText: "healthCheck.interval: is 0, but it must be at least 1" }).waitFor();
  assert.match(await page.locator('[data-err="priority"]').textContent(), /priority: expected an integer/);
  assert.ok(await page.locator("#edit-dialog").evaluate((d) => d.open), "the editor stays open");
  assert.equal(demo.servicesJson(), before, "services.json is unchanged");
  await page.screenshot({ path: path.join(ARTIFACTS, "editor-error.png") });
  await page.close();
});

test("with a token set, the page asks for it and then works", async () => {
  const solo = JSON.stringify([{ name: "solo", script: { programFilePath: "/bin/solo", args: ["--heartbeat", "30"] } }]);
  const guarded = await startDemo({ token: "ui-test-token-0123456789", services: solo });
  try {
    const page = await openConsole(guarded.url);
    const dialog = page.locator("#token-dialog");
    await dialog.waitFor({ state: "visible" });
    assert.equal(await row(page, "solo").count(), 0, "nothing is shown without the token");
    await page.locator("#token-input").fill("ui-test-token-0123456789");
    await page.locator("#token-save").click();
    await row(page, "solo").locator('[data-state="2"]').waitFor({ timeout: 20000 });
    await page.close();
  } finally {
    await guarded.stop();
  }
});

/** A call to the demo's API from the test itself (not through the page). */
async function apiCall(d, method, p) {
  const headers = d.token ? { Authorization: "Bearer " + d.token } : {};
  const r = await fetch(d.url + p.replace(/^\//, ""), { method, headers });
  return (await r.json()).data;
}

test("live updates keep the focus, a selected pid, an open dialog and the scroll position", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 500 } });
  await page.goto(demo.url);
  for (const name of ["sensor-bus", "telemetry"]) await row(page, name).locator('[data-state="2"]').waitFor({ timeout: 20000 });
  // Scroll down a little, focus a button, select the text of sensor-bus's pids.
  await page.evaluate(() => window.scrollTo(0, 120));
  const scrolled = await page.evaluate(() => window.scrollY);
  await row(page, "sensor-bus").locator('[data-action="logs"]').focus();
  const pids = await row(page, "sensor-bus").locator("td.pids").textContent();
  await page.evaluate(() => {
    const td = document.querySelector('#tasks tr[data-name="sensor-bus"] td.pids');
    const range = document.createRange();
    range.selectNodeContents(td);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  });
  // 5 s of live updates: telemetry is restarted twice, and uptimes tick.
  const before = await row(page, "telemetry").locator("td.pids").textContent();
  const deadline = Date.now() + 5000;
  await apiCall(demo, "POST", "/task/restart?name=telemetry");
  await waitFor("the new telemetry pid on the page", async () => {
    const now = await row(page, "telemetry").locator("td.pids").textContent();
    return now !== before && /^\d/.test(now);
  });
  await apiCall(demo, "POST", "/task/restart?name=telemetry");
  while (Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await page.evaluate(() => getSelection().toString()), pids, "the selection survived");
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.action + "@" + document.activeElement?.closest("tr")?.dataset.name),
    "logs@sensor-bus", "the focus survived");
  assert.equal(await page.evaluate(() => window.scrollY), scrolled, "the scroll position survived");
  // An open dialog survives too, and follows its service: the history shows the restart.
  await row(page, "telemetry").locator('[data-action="history"]').click();
  const dialog = page.locator("#events-dialog");
  await dialog.locator("li.kind-operator").first().waitFor();
  const count = await dialog.locator("li").count();
  await apiCall(demo, "POST", "/task/restart?name=telemetry");
  await waitFor("a new event in the open history", async () => (await dialog.locator("li").count()) > count);
  assert.ok(await dialog.evaluate((d) => d.open), "the dialog stayed open through the updates");
  assert.match(await dialog.locator("li").first().textContent(), /state|operator|stop|restart/);
  await page.screenshot({ path: path.join(ARTIFACTS, "history.png") });
  await page.locator("#events-close").click();
  await page.close();
});

test("each condition has its own look, actions fit the state, and nothing overflows at 1400, 800 and 390 px", async () => {
  const failing = "#!/bin/sh\necho 'cannot open /dev/ttyS9' >&2\nexit 1\n";
  const services = JSON.stringify([
    { name: "ok", priority: 0, script: { programFilePath: "/bin/solo", args: ["--heartbeat", "30"] } },
    { name: "held", priority: 0, script: { programFilePath: "/bin/camera", args: ["--heartbeat", "30"] } },
    { name: "sick", priority: 1, script: { programFilePath: "/bin/preflight", args: ["--ignore-term"], stopTimeout: 30 },
      healthCheck: { isHealthCheck: true, interval: 1, timeout: 2, retries: 1, test: ["CMD-SHELL", "echo sensor offline; exit 1"] } },
    { name: "crashy", priority: 1, script: { programFilePath: "/bin/timesync", args: ["--exit-after", "0", "--exit-code", "3"] } },
    { name: "job", priority: 0, isDaemon: false, script: { programFilePath: "/bin/recorder", args: ["--exit-after", "0"] } },
    { name: "broken", priority: 0, isDaemon: false, script: { execPath: "bad/run.sh", programFilePath: "/bin/telemetry" } },
  ]);
  // A long backoff keeps crashy visibly waiting; sick ignores SIGTERM, so it is seen unhealthy
  // for the whole stop timeout before its restart.
  const d = await startDemo({ services, yaml: "RESTART_BACKOFF_BASE_MS: 60000\n", files: { "bad/run.sh": failing } });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(d.url);
    const lookOf = (name) => row(page, name).locator(".pill").getAttribute("data-look");
    await row(page, "held").locator('[data-state="2"]').waitFor({ timeout: 20000 });
    await row(page, "held").locator('[data-action="stop"]').click();
    await page.locator("#confirm-yes").click();
    const want = { ok: "running", held: "held", sick: "unhealthy", crashy: "backoff", job: "exited", broken: "failed" };
    let seen = {};
    await waitFor("every look", async () => {
      seen = {};
      for (const name of Object.keys(want)) seen[name] = await lookOf(name);
      return Object.entries(want).every(([name, cls]) => seen[name] === cls);
    }, 40000).catch((e) => { throw new Error(`${e.message}: saw ${JSON.stringify(seen)}, want ${JSON.stringify(want)}`); });
    const text = async (name) => (await row(page, name).locator("td.state").textContent()).trim();
    assert.match(await text("held"), /stopped by operator/);
    assert.match(await text("sick"), /unhealthy.*1 check failed in a row: check exit status 1/);
    assert.match(await text("crashy"), /backoff.*next try in \d+(s|m\d+s).*the program ended/);
    assert.match(await text("job"), /exited.*exit status 0/);
    assert.match(await text("broken"), /failed.*exit status 1/);
    // The looks differ in colour too.
    const colours = new Set();
    for (const name of Object.keys(want)) {
      colours.add(await row(page, name).locator(".pill").evaluate((e) => getComputedStyle(e).backgroundColor + getComputedStyle(e).borderColor));
    }
    assert.equal(colours.size, Object.keys(want).length, "a colour per look");
    // Actions only where they make sense.
    const enabled = async (name, action) => row(page, name).locator(`[data-action="${action}"]`).isEnabled();
    assert.deepEqual([await enabled("ok", "start"), await enabled("ok", "stop"), await enabled("ok", "restart")], [false, true, true]);
    assert.deepEqual([await enabled("held", "start"), await enabled("held", "stop"), await enabled("held", "restart")], [true, false, false]);
    assert.deepEqual([await enabled("crashy", "start"), await enabled("crashy", "stop")], [true, true]);
    assert.deepEqual([await enabled("job", "start"), await enabled("job", "stop")], [true, false]);
    // The summary line counts each condition.
    const summary = await page.locator("#summary").textContent();
    for (const part of ["1/6 running", "1 unhealthy", "1 in backoff", "1 failed", "1 exited", "1 stopped by operator"]) {
      assert.ok(summary.includes(part), `${part} in ${summary}`);
    }
    for (const width of [1400, 800, 390]) {
      await page.setViewportSize({ width, height: 900 });
      await page.waitForTimeout(0);
      const overflow = await page.evaluate(() => {
        const wide = [...document.querySelectorAll("body *")].filter((e) => {
          const r = e.getBoundingClientRect();
          return r.width > 0 && r.right > document.documentElement.clientWidth + 1 && !e.closest(".lanes");
        }).map((e) => e.tagName + "." + e.className);
        return { scroll: document.documentElement.scrollWidth - document.documentElement.clientWidth, wide: wide.slice(0, 5) };
      });
      assert.deepEqual(overflow, { scroll: 0, wide: [] }, `no overflow at ${width} px`);
      await page.screenshot({ path: path.join(ARTIFACTS, `looks-${width}.png`), fullPage: true });
    }
    await page.close();
  } finally {
    await d.stop();
  }
});
