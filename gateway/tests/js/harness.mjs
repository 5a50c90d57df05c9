// What the SDK compatibility scripts share: counting checks, failing with a clear message, waiting
// for events, and recording what a pusher-js channel emits.
//
// A script calls `start()` first and `finish()` when every check has passed; on success it prints
// exactly one line `ok N checks` on stdout. Any deviation exits non-zero with a message saying what
// was expected and what came instead.

import { isDeepStrictEqual, inspect } from "node:util";
import PusherServer from "pusher";

export const TOTAL_TIMEOUT_MS = 60_000; // the whole run
export const WAIT_MS = 5_000; // one expected event
export const QUIET_MS = 400; // how long to watch for duplicates or events that must not arrive

let checks = 0;
let overall = null;

/** pusher-js clients to disconnect when the run fails. */
export const clients = [];

export function fail(message) {
  console.error(`FAIL: ${message}`);
  for (const client of clients) {
    try {
      client.disconnect();
    } catch {
      // Failing anyway.
    }
  }
  process.exit(1);
}

/** Arms the whole-run timeout and turns stray errors into failures. */
export function start() {
  overall = setTimeout(
    () => fail(`timed out after ${TOTAL_TIMEOUT_MS / 1000} s (last passed check: #${checks})`),
    TOTAL_TIMEOUT_MS,
  );
  process.on("unhandledRejection", (error) => fail(`unhandled rejection: ${describe(error)}`));
  process.on("uncaughtException", (error) => fail(`uncaught exception: ${describe(error)}`));
}

/** Reports success: the one line on stdout. */
export function finish() {
  clearTimeout(overall);
  console.log(`ok ${checks} checks`);
  process.exit(0);
}

export function describe(value) {
  if (value instanceof Error) {
    const extra = [];
    if (value.status !== undefined) extra.push(`status ${value.status}`);
    if (value.body !== undefined) extra.push(`body ${JSON.stringify(value.body)}`);
    if (value.url !== undefined) extra.push(`url ${value.url}`);
    if (value.error) extra.push(`cause ${describe(value.error)}`);
    return `${value.message}${extra.length ? ` (${extra.join(", ")})` : ""}`;
  }
  return inspect(value, { depth: 6, breakLength: Infinity });
}

export function pass(what) {
  checks += 1;
  console.error(`  ok ${checks} - ${what}`);
}

export function check(condition, what, detail) {
  if (!condition) fail(`${what}${detail === undefined ? "" : `: ${detail}`}`);
  pass(what);
}

export function checkEqual(actual, expected, what) {
  check(
    isDeepStrictEqual(actual, expected),
    what,
    `expected ${describe(expected)}, got ${describe(actual)}`,
  );
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitUntil(predicate, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Runs a server SDK call; a rejection (non-2xx answer or network error) fails the run. */
export async function api(what, call, { counted = true } = {}) {
  let response;
  try {
    response = await call();
  } catch (error) {
    fail(`${what}: the server SDK call failed: ${describe(error)}`);
  }
  if (response.status !== 200) fail(`${what}: expected status 200, got ${response.status}`);
  if (counted) pass(`${what} answers 200`);
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    fail(`${what}: the answer is not JSON: ${JSON.stringify(text)}`);
  }
}

/**
 * Subscribes and records, in order, every event the channel emits (including pusher:* ones such as
 * pusher:subscription_succeeded, pusher:subscription_error and pusher:cache_miss).
 */
export function subscribe(client, name) {
  const channel = client.subscribe(name);
  channel.log = [];
  channel.bind_global((event, data) => channel.log.push({ event, data }));
  return channel;
}

export const received = (channel, event) => channel.log.filter((entry) => entry.event === event);

export async function waitSubscribed(client, channel) {
  await waitUntil(
    () => channel.subscribed || received(channel, "pusher:subscription_error").length > 0,
    `${client.label}: subscription to ${channel.name} to succeed`,
  );
  const errors = received(channel, "pusher:subscription_error");
  check(
    channel.subscribed && errors.length === 0,
    `${client.label} subscribes to ${channel.name}`,
    `got pusher:subscription_error ${describe(errors[0]?.data)}`,
  );
}

export async function waitEvent(client, channel, event, what) {
  await waitUntil(
    () => received(channel, event).length > 0,
    `${client.label} to receive ${event} on ${channel.name} (${what})`,
  );
  return received(channel, event);
}

/** Waits for the event, then a little longer, and checks it came exactly once with this data. */
export async function expectOnce(client, channel, event, data, what) {
  await waitEvent(client, channel, event, what);
  await sleep(QUIET_MS);
  const got = received(channel, event);
  check(got.length === 1, `${what}: delivered exactly once to ${client.label}`, `got it ${got.length} times`);
  checkEqual(got[0].data, data, `${what}: data intact at ${client.label}`);
}

/**
 * The gateway and app a script runs against, from its command line:
 * `<port> [app_id] [app_key] [app_secret]`, the development app by default.
 */
export function target(script) {
  const [portArg, appId = "1", appKey = "app-key", appSecret = "app-secret"] = process.argv.slice(2);
  const port = Number(portArg);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error(`usage: node ${script} <port> [app_id] [app_key] [app_secret]`);
    process.exit(2);
  }
  return { port, appId, appKey, appSecret };
}

/** The official server SDK for the target app, over plain HTTP; `options` adds to its settings. */
export function officialServer({ port, appId, appKey, appSecret }, options = {}) {
  return new PusherServer({
    appId,
    key: appKey,
    secret: appSecret,
    host: "127.0.0.1",
    port: String(port),
    useTLS: false,
    timeout: WAIT_MS,
    ...options,
  });
}
