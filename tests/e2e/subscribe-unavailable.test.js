// While the database cannot be reached, a Socket.IO subscribe is acked
// `unavailable` (what HTTP answers with 503 and Retry-After), never
// `internal`; the HTTP reads and streams answer 503 with Retry-After; once
// the database is back, subscribes succeed again. PostgreSQL only: the test
// stops the server's database from taking connections (ALLOW_CONNECTIONS
// false) and ends the ones it has (pg_terminate_backend).
'use strict';

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const { describe, it, before, after } = require('node:test');
const {
  api, assertAckError, assertHttpError, connect, createDatabase, mintToken, requestedDatabase, skipReason, sleep,
  spawnServer,
} = require('./harness');

const WORKSPACE = 'ws-unavailable';
// The pool waits up to 5 s for a connection before it gives up.
const ACK_TIMEOUT_MS = 20_000;

function postgresOnly() {
  if (skipReason()) return skipReason();
  return requestedDatabase() === 'postgres' ? false : 'PostgreSQL only (JOBSTREAM_E2E_DB=postgres)';
}

function sql(statement) {
  execFileSync('psql', [process.env.JOBSTREAM_TEST_POSTGRES_URL, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', statement], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe('subscribing while the database is unreachable', { skip: postgresOnly(), timeout: 120_000 }, () => {
  let database;
  let server;
  let name;
  const allowConnections = (allow) => sql(`ALTER DATABASE ${name} ALLOW_CONNECTIONS ${allow}`);

  before(async () => {
    database = createDatabase();
    name = new URL(database.url).pathname.slice(1);
    server = await spawnServer({ databaseUrl: database.url });
  }, { timeout: 40_000 });

  after(async () => {
    if (name) allowConnections(true);
    if (server) await server.close();
    if (database) await database.drop();
  }, { timeout: 20_000 });

  it('acks unavailable, answers 503 with Retry-After, and recovers', async () => {
    const token = mintToken(server.secret, { workspaces: [WORKSPACE] });
    const client = api(server.url, token);
    const job = (await client.createJob({ workspaceId: WORKSPACE, type: 'build' })).body;
    const socket = await connect(server.url, token);
    const ack = (event, payload) => socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
    try {
      assert.equal((await ack('subscribe:job', { jobId: job.id })).ok, true);
      assert.equal((await ack('unsubscribe:job', { jobId: job.id })).ok, true);

      allowConnections(false);
      sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '${name}'`);

      assertAckError(await ack('subscribe:job', { jobId: job.id }), 'unavailable');
      assertAckError(await ack('subscribe:workspace:jobs', { workspaceId: WORKSPACE }), 'unavailable');
      for (const path of [
        `/api/v1/jobs/${job.id}`,
        `/api/v1/jobs/${job.id}/events/stream?token=${token}`,
        `/api/v1/workspaces/${WORKSPACE}/events/stream?token=${token}`,
        '/readyz',
      ]) {
        const answer = await client.request('GET', path);
        assertHttpError(answer, 503, 'unavailable');
        assert.equal(answer.headers.get('retry-after'), '1', path);
      }
      const write = await client.setStatus(job.id, { status: 'queued' });
      assertHttpError(write, 503, 'unavailable');
      assert.equal(write.headers.get('retry-after'), '1');

      allowConnections(true);
      const until = Date.now() + 30_000;
      let answer;
      for (;;) {
        answer = await ack('subscribe:job', { jobId: job.id });
        if (answer.ok || Date.now() > until) break;
        assert.equal(answer.error.code, 'unavailable', JSON.stringify(answer));
        await sleep(250);
      }
      assert.equal(answer.ok, true, JSON.stringify(answer));
      assert.equal(socket.connected, true);
    } finally {
      socket.close();
    }
  });
});
