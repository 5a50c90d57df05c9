// Checks presence channels, client events with user_id, user sign-in with watchlists,
// sendToUser, terminateUserConnections and encrypted channels against the official Pusher
// libraries: pusher-js (the client, in Node) and `pusher` (the Node server SDK), whose
// authorizeChannel and authenticateUser produce every auth string used here.
//
// Usage: node presence.mjs <port> [app_id] [app_key] [app_secret]
// Prints progress on stderr and, on success, exactly one line `ok N checks` on stdout.
// Set COMPAT_DEBUG=1 to see pusher-js's own log.

import { randomBytes } from "node:crypto";
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

const app = target("presence.mjs");
const { port, appKey } = app;

// ---------------------------------------------------------------------------------------------
// The official libraries

const server = officialServer(app, {
  // End-to-end encryption: the gateway never sees this key.
  encryptionMasterKeyBase64: randomBytes(32).toString("base64"),
});

PusherClient.logToConsole = process.env.COMPAT_DEBUG === "1";

/**
 * A pusher-js client for one user. Its app server is the SDK: presence channels are authorized
 * with the user's channel_data (or, with `presenceFromSignin`, without it, so that pusher-js uses
 * the signed-in user), and sign-in with the user's data and watchlist.
 */
function newClient(label, user) {
  const client = new PusherClient(appKey, {
    wsHost: "127.0.0.1",
    wsPort: port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "local",
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        try {
          const member =
            channelName.startsWith("presence-") && !user.presenceFromSignin
              ? { user_id: user.id, user_info: user.info }
              : undefined;
          callback(null, server.authorizeChannel(socketId, channelName, member));
        } catch (error) {
          callback(error, null);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        try {
          const data = { id: user.id, user_info: user.info, watchlist: user.watchlist ?? [] };
          callback(null, server.authenticateUser(socketId, data));
        } catch (error) {
          callback(error, null);
        }
      },
    },
  });
  clients.push(client);
  client.label = label;
  client.errors = [];
  client.watched = [];
  client.connection.bind("error", (error) => client.errors.push(error));
  client.user.watchlist.bind("online", (event) => client.watched.push(event));
  client.user.watchlist.bind("offline", (event) => client.watched.push(event));
  return client;
}

async function connected(client) {
  await waitUntil(() => client.connection.state === "connected", `${client.label} to connect`);
}

/** Signs a client in and waits until pusher-js says it is. */
async function signedIn(client, id) {
  client.signin();
  await waitUntil(() => client.user.user_data?.id === id, `${client.label} to sign in`);
  pass(`${client.label} signs in with authenticateUser's auth (pusher:signin_success)`);
}

/** Waits for a watchlist event, then checks the ones seen so far. */
async function watchedEquals(client, expected, what) {
  await waitUntil(() => client.watched.length >= expected.length, `${client.label}: ${what}`);
  await sleep(QUIET_MS);
  checkEqual(
    client.watched.map(({ name, user_ids }) => ({ name, user_ids: [...user_ids].sort() })),
    expected,
    what,
  );
}

// ---------------------------------------------------------------------------------------------
// The checks

const run = Math.random().toString(36).slice(2, 8);
const roomName = `presence-room-${run}`;
const signedRoomName = `presence-signed-${run}`;
const vaultName = `private-encrypted-vault-${run}`;
const aliceInfo = { name: "Alice", tags: ["é", "✓"] };
const bobInfo = { name: "Bob" };

// Data that would show up any re-encoding along the way.
const payload = {
  text: 'quotes " and \\ backslash, unicode é ✓ 🚀, <tags> & ampersands',
  list: [1, "two", null, true],
};

async function presence() {
  const alice = newClient("alice", { id: "alice", info: aliceInfo });
  await connected(alice);
  const aliceRoom = subscribe(alice, roomName);
  await waitSubscribed(alice, aliceRoom);
  checkEqual(aliceRoom.members.count, 1, "alice is the only member at first");
  checkEqual(aliceRoom.members.me, { id: "alice", info: aliceInfo }, "members.me is alice with her info");

  const bob = newClient("bob", { id: "bob", info: bobInfo });
  await connected(bob);
  const bobRoom = subscribe(bob, roomName);
  await waitSubscribed(bob, bobRoom);
  checkEqual(bobRoom.members.count, 2, "bob sees two members");
  checkEqual(bobRoom.members.get("alice"), { id: "alice", info: aliceInfo }, "bob sees alice with her info");
  await expectOnce(alice, aliceRoom, "pusher:member_added", { id: "bob", info: bobInfo }, "member_added for bob");
  checkEqual(aliceRoom.members.count, 2, "alice's member count follows");

  // A client event: bob gets it with alice's user_id; alice does not get her own. (pusher-js
  // passes the user_id to an event's own handlers, not to bind_global ones.)
  const senders = [];
  bobRoom.bind("client-hello", (data, metadata) => senders.push(metadata));
  check(aliceRoom.trigger("client-hello", payload), "alice sends a client event on the presence channel");
  await expectOnce(bob, bobRoom, "client-hello", payload, "client event from alice");
  checkEqual(senders, [{ user_id: "alice" }], "the client event names alice");
  await api("trigger after the client event", () => server.trigger(roomName, "after-hello", {}));
  await waitEvent(alice, aliceRoom, "after-hello", "the event after her client event");
  checkEqual(received(aliceRoom, "client-hello"), [], "a client event is not echoed to its sender");

  // The HTTP API through the SDK.
  const users = await api("GET users of the presence channel", () =>
    server.get({ path: `/channels/${roomName}/users` }),
  );
  checkEqual(users.users.map((u) => u.id).sort(), ["alice", "bob"], "GET .../users lists both");
  const info = await api("GET the presence channel with user_count", () =>
    server.get({ path: `/channels/${roomName}`, params: { info: "user_count" } }),
  );
  checkEqual(info, { occupied: true, user_count: 2 }, "user_count is 2");
  const triggered = await api("trigger with info", () =>
    server.trigger(roomName, "counted", {}, { info: "user_count,subscription_count" }),
  );
  checkEqual(
    triggered,
    { channels: { [roomName]: { user_count: 2, subscription_count: 2 } } },
    "trigger answers the channel's counts",
  );

  // alice leaves and comes back: bob is told each time, once.
  alice.unsubscribe(roomName);
  await expectOnce(bob, bobRoom, "pusher:member_removed", { id: "alice", info: aliceInfo }, "member_removed for alice");
  checkEqual(bobRoom.members.count, 1, "bob is alone while alice is away");
  const aliceBack = subscribe(alice, roomName);
  await waitSubscribed(alice, aliceBack);
  await expectOnce(bob, bobRoom, "pusher:member_added", { id: "alice", info: aliceInfo }, "member_added for alice");
  checkEqual(aliceBack.members.count, 2, "alice sees bob again");

  // bob leaves: alice is told once.
  bob.disconnect();
  await expectOnce(alice, aliceBack, "pusher:member_removed", { id: "bob", info: bobInfo }, "member_removed for bob");
  checkEqual(aliceBack.members.count, 1, "alice is alone again");
  return alice;
}

async function encrypted(alice) {
  const vault = subscribe(alice, vaultName);
  await waitSubscribed(alice, vault);
  // The SDK encrypts; pusher-js decrypts with the shared_secret from authorizeChannel. Any change
  // to the ciphertext or nonce on the way would fail the decryption.
  await api("trigger to the encrypted channel", () => server.trigger(vaultName, "sealed", payload));
  await expectOnce(alice, vault, "sealed", payload, "encrypted event decrypted by pusher-js");
}

async function users() {
  const carol = newClient("carol", { id: "carol", info: { name: "Carol" }, watchlist: ["dave"] });
  await connected(carol);
  await signedIn(carol, "carol");
  await watchedEquals(carol, [{ name: "offline", user_ids: ["dave"] }], "carol is told dave is offline");

  const dave = newClient("dave", { id: "dave" });
  await connected(dave);
  await signedIn(dave, "dave");
  await watchedEquals(
    carol,
    [
      { name: "offline", user_ids: ["dave"] },
      { name: "online", user_ids: ["dave"] },
    ],
    "carol is told dave came online",
  );

  // sendToUser reaches carol, not dave.
  const notes = { carol: [], dave: [] };
  carol.user.bind("note", (data) => notes.carol.push(data));
  dave.user.bind("note", (data) => notes.dave.push(data));
  await api("sendToUser carol", () => server.sendToUser("carol", "note", payload));
  await waitUntil(() => notes.carol.length > 0, "carol's note");
  await sleep(QUIET_MS);
  checkEqual(notes.carol, [payload], "sendToUser reaches carol once, data intact");
  checkEqual(notes.dave, [], "sendToUser does not reach another user");

  // A presence channel authorized without channel_data: pusher-js joins as the signed-in user.
  const erin = newClient("erin", { id: "erin", info: { name: "Erin" }, presenceFromSignin: true });
  await connected(erin);
  await signedIn(erin, "erin");
  const erinRoom = subscribe(erin, signedRoomName);
  await waitSubscribed(erin, erinRoom);
  checkEqual(erinRoom.members.me, { id: "erin", info: { name: "Erin" } }, "a signed-in user joins as itself");

  dave.disconnect();
  await watchedEquals(
    carol,
    [
      { name: "offline", user_ids: ["dave"] },
      { name: "online", user_ids: ["dave"] },
      { name: "offline", user_ids: ["dave"] },
    ],
    "carol is told dave went offline",
  );

  // terminateUserConnections closes carol's connection with 4009, which pusher-js does not retry.
  await api("terminateUserConnections carol", () => server.terminateUserConnections("carol"));
  await waitUntil(() => carol.connection.state === "disconnected", "carol to be disconnected");
  check(
    JSON.stringify(carol.errors).includes("4009"),
    "carol's connection was closed with 4009",
    describe(carol.errors),
  );
  await sleep(QUIET_MS);
  checkEqual(erin.connection.state, "connected", "other users stay connected");
}

async function main() {
  const alice = await presence();
  await encrypted(alice);
  await users();
}

start();
main().then(finish, (error) => fail(`unexpected error: ${describe(error)}`));
