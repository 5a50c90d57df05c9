// pusher-js in a real browser against the gateway: headless Chromium, driven by playwright-core,
// connects over ws:// to the plaintext port and over wss:// to the TLS port, so Chromium's own
// TLS stack (BoringSSL) meets the gateway's handshake and record layer. The official server SDK
// publishes; a private channel is authorized by the SDK through a function the page calls, and a
// client event sent over wss:// reaches the ws:// client.
//
// usage: node browser.mjs <port> <tls port>; CHROMIUM names the browser (default
// /usr/bin/chromium). Prints `ok N checks` on success, exits non-zero otherwise.

import { chromium } from "playwright-core";
import {
  api,
  check,
  checkEqual,
  describe,
  fail,
  finish,
  officialServer,
  QUIET_MS,
  sleep,
  start,
  WAIT_MS,
} from "./harness.mjs";

const [port, tlsPort] = process.argv.slice(2).map(Number);
if (!Number.isInteger(port) || !Number.isInteger(tlsPort)) {
  console.error("usage: node browser.mjs <port> <tls port>");
  process.exit(2);
}
start();
const server = officialServer({ port, appId: "1", appKey: "app-key", appSecret: "app-secret" });

// The flags Chromium needs on a machine with no network and no display. The development
// certificate is not in the browser's trust store, so certificate checks are off; the TLS
// handshake and every record are still Chromium's own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const closeAndFail = async (message) => {
  await browser.close().catch(() => {});
  fail(message);
};
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
page.on("pageerror", (error) => closeAndFail(`page error: ${describe(error)}`));
await page.exposeFunction("authorize", (socketId, channel) =>
  server.authorizeChannel(socketId, channel),
);
await page.setContent("<!doctype html><title>gateway</title>");
await page.addScriptTag({
  path: new URL("./node_modules/pusher-js/dist/web/pusher.min.js", import.meta.url).pathname,
});

const waitInPage = async (predicate, argument, what) => {
  try {
    await page.waitForFunction(predicate, argument, { timeout: WAIT_MS });
  } catch (error) {
    await closeAndFail(`timed out waiting for ${what}: ${describe(error)}`);
  }
};

await page.evaluate(
  ({ port, tlsPort }) => {
    const transports = {
      ws: { wsHost: "127.0.0.1", wsPort: port, forceTLS: false },
      wss: { wsHost: "localhost", wssPort: tlsPort, forceTLS: true },
    };
    window.seen = {};
    window.clients = {};
    for (const [name, options] of Object.entries(transports)) {
      const client = new Pusher("app-key", {
        ...options,
        cluster: "local",
        enabledTransports: ["ws"],
        channelAuthorization: {
          customHandler: ({ socketId, channelName }, callback) =>
            window.authorize(socketId, channelName).then((auth) => callback(null, auth)),
        },
      });
      const seen = { subscribed: [], greeting: [], large: [], typing: [] };
      for (const channelName of [`browser-${name}`, "private-browser"]) {
        const channel = client.subscribe(channelName);
        channel.bind("pusher:subscription_succeeded", () => seen.subscribed.push(channelName));
        for (const event of ["greeting", "large", "client-typing"]) {
          channel.bind(event, (data) => seen[event.replace("client-", "")].push(data));
        }
      }
      window.clients[name] = client;
      window.seen[name] = seen;
    }
  },
  { port, tlsPort },
);

for (const name of ["ws", "wss"]) {
  await waitInPage(
    (name) => window.seen[name].subscribed.length === 2,
    name,
    `the ${name} client's subscriptions`,
  );
  const socketId = await page.evaluate((name) => window.clients[name].connection.socket_id, name);
  check(/^\d+\.\d+$/.test(socketId), `the browser connects over ${name}://`, socketId);
  checkEqual(
    (await page.evaluate((name) => window.seen[name].subscribed, name)).sort(),
    [`browser-${name}`, "private-browser"],
    `the browser subscribes to a public and a private channel over ${name}://`,
  );
}

const COUNT = 100;
for (let n = 0; n < COUNT; n += 1) {
  await api(`greeting ${n}`, () => server.trigger(["browser-ws", "browser-wss"], "greeting", { n }), {
    counted: false,
  });
}
const large = { text: "x".repeat(9000) };
await api("a 9 KB event", () => server.trigger("browser-wss", "large", large));

for (const name of ["ws", "wss"]) {
  await waitInPage(
    ({ name, count }) => window.seen[name].greeting.length >= count,
    { name, count: COUNT },
    `${COUNT} greetings over ${name}://`,
  );
  const greetings = await page.evaluate((name) => window.seen[name].greeting, name);
  checkEqual(
    greetings.map((data) => data.n),
    [...Array(COUNT).keys()],
    `${COUNT} events arrive once each and in order over ${name}://`,
  );
}
await waitInPage(() => window.seen.wss.large.length === 1, null, "the large event over wss://");
checkEqual(
  await page.evaluate(() => window.seen.wss.large[0]),
  large,
  "a 9 KB event arrives intact over wss://",
);

await page.evaluate(() =>
  window.clients.wss.channel("private-browser").trigger("client-typing", { who: "wss" }),
);
await waitInPage(() => window.seen.ws.typing.length === 1, null, "the client event on ws://");
await sleep(QUIET_MS);
checkEqual(
  await page.evaluate(() => [window.seen.ws.typing, window.seen.wss.typing]),
  [[{ who: "wss" }], []],
  "a client event sent over wss:// reaches the ws:// client and is not echoed",
);

await page.evaluate(() => Object.values(window.clients).forEach((client) => client.disconnect()));
await browser.close();
finish();
