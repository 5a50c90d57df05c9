// Checks the gateway against the official Pusher libraries: pusher-js (the client, in Node)
// and `pusher` (the Node server SDK, which signs HTTP API calls).
//
// Usage: node compat.mjs <port> [app_id] [app_key] [app_secret]
// Prints progress on stderr and, on success, exactly one line `ok N checks` on stdout.
// Any deviation exits non-zero with a message saying what was expected and what came instead.
// Set COMPAT_DEBUG=1 to see pusher-js's own log.

import PusherClient from "pusher-js";
import {
  api,
  check,
  checkEqual,
  clients,
  describe,
  expectOnce,
  fail,
  finish,
  pass,
  received,
  sleep,
  start,
  subscribe,
  waitEvent,
  waitSubscribed,
  waitUntil,
  QUIET_MS,
  WAIT_MS,
  officialServer,
  target,
} from "./harness.mjs";

const app = target("compat.mjs");
const { port, appKey } = app;

// ---------------------------------------------------------------------------------------------
// The official libraries

const server = officialServer(app);

PusherClient.logToConsole = process.env.COMPAT_DEBUG === "1";

/** Channels whose name starts with this get a wrongly signed authorization. */
const BAD_SIGNATURE_PREFIX = "private-badsig-";

function newClient(label) {
  const client = new PusherClient(appKey, {
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "local",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          const signed = server.authorizeChannel(socketId, channelName);
          if (channelName.startsWith(BAD_SIGNATURE_PREFIX)) {
            // Right shape, right key, wrong HMAC.
            callback(null, { auth: `${appKey}:${"0".repeat(64)}` });
          } else {
            callback(null, signed);
          }
        } catch (error) {
          callback(error, null);
        }
      },
    },
  });
  clients.push(client);
  client.label = label;
  client.states = [];
  client.errors = [];
  client.connection.bind("state_change", ({ current }) => client.states.push(current));
  client.connection.bind("error", (error) => client.errors.push(error));
  return client;
}

// ---------------------------------------------------------------------------------------------
// The checks

const run = Math.random().toString(36).slice(2, 8);
const publicName = `compat-public-${run}`;
const privateName = `private-compat-${run}`;
const otherPublicName = `compat-other-${run}`;
const cacheName = `cache-compat-${run}`;
const neverPublishedCacheName = `cache-compat-never-${run}`;
const badSignatureName = `${BAD_SIGNATURE_PREFIX}${run}`;

// Data that would show up any re-encoding along the way.
const payload = {
  text: 'quotes " and \\ backslash, unicode é ✓ 🚀, <tags> & ampersands',
  number: 12.5,
  list: [1, "two", null, true],
  nested: { empty: {}, zero: 0 },
};

async function main() {
  // pusher-js connects.
  const alice = newClient("alice");
  await waitUntil(
    () => alice.connection.state === "connected" || ["failed", "unavailable"].includes(alice.connection.state),
    "alice to connect",
  );
  check(
    alice.connection.state === "connected",
    "pusher-js connects",
    `state ${alice.connection.state}, states ${describe(alice.states)}, errors ${describe(alice.errors)}`,
  );
  const aliceId = alice.connection.socket_id;
  check(/^\d+\.\d+$/.test(aliceId ?? ""), "socket_id looks like \\d+.\\d+", `got ${describe(aliceId)}`);

  // A public and a private channel.
  const alicePublic = subscribe(alice, publicName);
  const alicePrivate = subscribe(alice, privateName);
  await waitSubscribed(alice, alicePublic);
  await waitSubscribed(alice, alicePrivate);

  // Server SDK trigger to each channel: delivered once, data intact.
  await api("trigger to the public channel", () => server.trigger(publicName, "public-event", payload));
  await expectOnce(alice, alicePublic, "public-event", payload, "trigger on the public channel");
  await api("trigger to the private channel", () => server.trigger(privateName, "private-event", payload));
  await expectOnce(alice, alicePrivate, "private-event", payload, "trigger on the private channel");

  // trigger with an array of channels.
  await api("trigger to two channels", () =>
    server.trigger([publicName, privateName], "multi-event", { n: 2 }),
  );
  await expectOnce(alice, alicePublic, "multi-event", { n: 2 }, "trigger with channels [public, private] (public)");
  await expectOnce(alice, alicePrivate, "multi-event", { n: 2 }, "trigger with channels [public, private] (private)");

  // triggerBatch.
  const batchAnswer = await api("triggerBatch", () =>
    server.triggerBatch([
      { channel: publicName, name: "batch-a", data: { i: 1 } },
      { channel: privateName, name: "batch-b", data: { i: 2 } },
      { channel: publicName, name: "batch-c", data: "plain string, not JSON" },
    ]),
  );
  check(typeof batchAnswer === "object" && batchAnswer !== null, "triggerBatch answers a JSON object", describe(batchAnswer));
  await expectOnce(alice, alicePublic, "batch-a", { i: 1 }, "triggerBatch item 1");
  await expectOnce(alice, alicePrivate, "batch-b", { i: 2 }, "triggerBatch item 2");
  await expectOnce(alice, alicePublic, "batch-c", "plain string, not JSON", "triggerBatch item 3");

  // A second client on the same channels.
  const bob = newClient("bob");
  await waitUntil(() => bob.connection.state === "connected", "bob to connect");
  check(bob.connection.socket_id !== aliceId, "two clients get different socket ids", `both ${aliceId}`);
  const bobPublic = subscribe(bob, publicName);
  const bobPrivate = subscribe(bob, privateName);
  await waitSubscribed(bob, bobPublic);
  await waitSubscribed(bob, bobPrivate);

  // trigger excluding alice's socket: bob gets it, alice does not (she gets the next event instead,
  // which the gateway sent after the excluded one).
  await api("trigger excluding alice", () =>
    server.trigger(publicName, "excluded-event", { x: 1 }, { socket_id: aliceId }),
  );
  await expectOnce(bob, bobPublic, "excluded-event", { x: 1 }, "trigger with socket_id (other subscriber)");
  await api("trigger after the excluded one", () => server.trigger(publicName, "after-excluded", {}));
  await waitEvent(alice, alicePublic, "after-excluded", "the event after the excluded one");
  await sleep(QUIET_MS);
  checkEqual(received(alicePublic, "excluded-event"), [], "trigger with socket_id is not delivered to that socket");

  // Client events: alice -> bob on the private channel; alice does not get her own.
  const clientData = { from: "alice", payload };
  check(alicePrivate.trigger("client-x", clientData) === true, "pusher-js sends the client event", "send_event returned false");
  await expectOnce(bob, bobPrivate, "client-x", clientData, "client event from alice");
  await api("trigger after the client event", () => server.trigger(privateName, "after-client-event", {}));
  await waitEvent(alice, alicePrivate, "after-client-event", "the event after her client event");
  await sleep(QUIET_MS);
  checkEqual(received(alicePrivate, "client-x"), [], "a client event is not echoed to its sender");

  // A private channel with a bad signature: pusher:subscription_error on the channel.
  const badChannel = subscribe(alice, badSignatureName);
  const errors = await waitEvent(alice, badChannel, "pusher:subscription_error", "bad signature");
  check(!badChannel.subscribed, "a badly signed subscription does not succeed", describe(badChannel.log));
  const error = errors[0].data;
  check(
    error && typeof error === "object" && error.type === "AuthError" && error.status === 401,
    "pusher:subscription_error carries type AuthError and status 401",
    describe(error),
  );
  check(
    received(badChannel, "pusher:subscription_succeeded").length === 0,
    "no pusher:subscription_succeeded for the badly signed channel",
    describe(badChannel.log),
  );
  // The connection survives a refused subscription and still delivers.
  await api("trigger after the refused subscription", () => server.trigger(publicName, "after-refusal", {}));
  await waitEvent(alice, alicePublic, "after-refusal", "the event after the refused subscription");
  check(
    alice.connection.state === "connected" && alice.connection.socket_id === aliceId,
    "the connection stays up after a refused subscription",
    `state ${alice.connection.state}, socket ${alice.connection.socket_id}, states ${describe(alice.states)}`,
  );

  // Another public channel only bob is on, to make the list below less trivial.
  const bobOther = subscribe(bob, otherPublicName);
  await waitSubscribed(bob, bobOther);

  // HTTP API: the channel list and one channel's info.
  const list = await api("GET /channels", () =>
    server.get({ path: "/channels", params: { info: "subscription_count" } }),
  );
  const listed = list && typeof list.channels === "object" && list.channels !== null ? list.channels : null;
  check(listed !== null, "GET /channels has a channels object", describe(list));
  for (const name of [publicName, privateName, otherPublicName]) {
    check(name in listed, `GET /channels lists ${name}`, describe(list));
  }
  check(!(badSignatureName in listed), "GET /channels does not list the refused channel", describe(list));
  const expectedCounts = { [publicName]: 2, [privateName]: 2, [otherPublicName]: 1 };
  for (const [name, count] of Object.entries(expectedCounts)) {
    checkEqual(listed[name], { subscription_count: count }, `GET /channels?info=subscription_count for ${name}`);
  }

  const info = await api(`GET /channels/${privateName}`, () =>
    server.get({ path: `/channels/${privateName}`, params: { info: "subscription_count" } }),
  );
  checkEqual(info?.occupied, true, `GET /channels/${privateName} says occupied`);
  checkEqual(info?.subscription_count, 2, `GET /channels/${privateName} counts 2 subscriptions`);

  const emptyInfo = await api("GET /channels/<never used>", () =>
    server.get({ path: `/channels/compat-nobody-${run}`, params: { info: "subscription_count" } }),
  );
  checkEqual(emptyInfo?.occupied, false, "GET /channels/<never used> says not occupied");

  // Cache channels: the last event is replayed to a new subscriber; no event -> pusher:cache_miss.
  const cached = { cached: true, payload };
  await api("trigger to a cache channel nobody is on", () => server.trigger(cacheName, "cached-event", cached));
  const bobCache = subscribe(bob, cacheName);
  await waitSubscribed(bob, bobCache);
  await expectOnce(bob, bobCache, "cached-event", cached, "cache channel replay");
  const order = bobCache.log.map((entry) => entry.event);
  check(
    order.indexOf("pusher:subscription_succeeded") < order.indexOf("cached-event"),
    "the cached event comes right after pusher:subscription_succeeded",
    describe(order),
  );
  checkEqual(received(bobCache, "pusher:cache_miss"), [], "no pusher:cache_miss on a cache channel with an event");

  const bobNever = subscribe(bob, neverPublishedCacheName);
  await waitSubscribed(bob, bobNever);
  await waitEvent(bob, bobNever, "pusher:cache_miss", "never-published cache channel");
  await sleep(QUIET_MS);
  check(received(bobNever, "pusher:cache_miss").length === 1, "pusher:cache_miss arrives once", describe(bobNever.log));
  checkEqual(
    bobNever.log.map((entry) => entry.event),
    ["pusher:subscription_succeeded", "pusher:cache_miss"],
    "a never-published cache channel gets only subscription_succeeded then pusher:cache_miss",
  );

  // Disconnect cleanly; the gateway then forgets the channels.
  for (const client of [alice, bob]) client.disconnect();
  await waitUntil(
    () => alice.connection.state === "disconnected" && bob.connection.state === "disconnected",
    "both clients to disconnect",
  );
  pass("both pusher-js clients disconnect");
  const ours = [publicName, privateName, otherPublicName, cacheName, neverPublishedCacheName];
  let after;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    after = await api("GET /channels after disconnecting", () => server.get({ path: "/channels" }), {
      counted: false,
    });
    const remaining = ours.filter((name) => after?.channels && name in after.channels);
    if (remaining.length === 0 || Date.now() > deadline) {
      checkEqual(remaining, [], "GET /channels no longer lists our channels after disconnecting");
      break;
    }
    await sleep(50);
  }
}

start();
main().then(finish, (error) => fail(`unexpected error: ${describe(error)}`));
