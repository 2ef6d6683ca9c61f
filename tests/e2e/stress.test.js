// The delivery guarantee under stress (CONTRACT §3 "Delivery guarantee"):
// four HTTP producers write a few jobs of one workspace at once, single writes
// and batches mixed, while 50 sockets follow them. A third of the sockets are
// dropped at random moments, a few read slowly (each in a worker thread, over
// polling, blocking its event loop on each event, against a small server
// buffer), and the server restarts once on the same port and database. Every
// socket comes back with `since` and must end up with each event of each job
// it follows exactly once, in seq order, from where it started to the end.
'use strict';

const crypto = require('node:crypto');
const { isMainThread, Worker, parentPort, workerData } = require('node:worker_threads');
const { io } = require('socket.io-client');

// ---------------------------------------------------------------------------
// A following socket, used on the main thread and in the slow readers' workers.
//
// It keeps, per job, where it started (the first ack that announced the job,
// or 0 for a job created after its workspace snapshot), the last seq it saw,
// how many events it took, and a digest of their eventIds. An event that is
// not the next seq of its job is a violation. On every (re)connect it
// subscribes again: first `subscribe:job` with `since` = the last seq seen for
// each job it has seen, then the workspace (jobs first seen in the new
// snapshot start from the snapshot's lastSeq).

const STALE = Symbol('stale connection');
const MAX_VIOLATIONS = 20;

class Follower {
  constructor({
    name, url, token, workspaceId, mode, jobIds = [], workspaceFirst = false, transports, blockMs = 0, eventNames,
  }) {
    Object.assign(this, {
      name, url, token, workspaceId, mode, jobIds, workspaceFirst, transports, blockMs, eventNames,
    });
    this.jobs = new Map(); // jobId → { start, last, count, hash }
    this.violations = [];
    this.epoch = 0;
    this.connects = 0;
    this.disconnects = 0;
    this.serverDisconnects = 0;
    this.drops = 0;
    this.received = 0;
    this.lastEventAt = 0;
    this.workspaceActive = false;
    this.ackedJobs = new Set(); // jobs whose subscribe:job this connection has acked
    this.pendingAcks = new Set();
    this.link = { since: Date.now(), pings: 0, packets: 0, lastPacketAt: null };
    this.maxAckMs = 0;
    this.maxBurst = 0;
    this.blocker = blockMs > 0 ? new Int32Array(new SharedArrayBuffer(4)) : null;
  }

  get followsWorkspace() {
    return this.mode !== 'job';
  }

  // Connects; resolves once the first subscriptions are acked.
  start() {
    this.ready = new Promise((resolve) => { this.markReady = resolve; });
    this.socket = io(this.url, {
      forceNew: true,
      auth: { token: this.token },
      transports: this.transports,
      reconnectionDelay: 100,
      reconnectionDelayMax: 1000,
      timeout: 10_000,
    });
    // What reached this connection, to tell a silent server from a dead transport.
    this.socket.io.on('ping', () => { this.link.pings += 1; });
    this.socket.io.on('packet', () => { this.link.packets += 1; this.link.lastPacketAt = Date.now(); });
    this.socket.on('connect', () => {
      this.link = { since: Date.now(), pings: 0, packets: 0, lastPacketAt: null };
      this.epoch += 1;
      this.connects += 1;
      this.workspaceActive = false;
      this.ackedJobs = new Set();
      this.subscribe(this.epoch).then(() => this.markReady(), (err) => {
        if (err !== STALE) this.violation(`subscribing failed: ${err && err.stack}`);
      });
    });
    this.socket.on('disconnect', (reason) => {
      this.disconnects += 1;
      this.workspaceActive = false;
      for (const request of this.pendingAcks) request.reject(STALE);
      this.pendingAcks.clear();
      // socket.io-client reconnects by itself except after a server-side
      // disconnect; a client that resumes with `since` connects again then.
      if (reason === 'io server disconnect') {
        this.serverDisconnects += 1;
        setTimeout(() => this.socket.connect(), 100);
      }
    });
    this.socket.onAny((event, data) => this.onEvent(event, data));
    return this.ready;
  }

  violation(message) {
    if (this.violations.length < MAX_VIOLATIONS) {
      this.violations.push(`${this.name} (connection ${this.epoch}): ${message}`);
    } else if (this.violations.length === MAX_VIOLATIONS) {
      this.violations.push(`${this.name}: more violations not shown`);
    }
  }

  track(jobId, seq) {
    if (!this.jobs.has(jobId)) {
      this.jobs.set(jobId, { start: seq, last: seq, count: 0, hash: crypto.createHash('sha256') });
    }
  }

  onEvent(event, data) {
    if (this.blocker) Atomics.wait(this.blocker, 0, 0, this.blockMs); // a slow reader
    // Events handled in one turn of the event loop: one polling payload, at most the server's buffer.
    if (!this.inBurst) {
      this.inBurst = true;
      this.burst = 0;
      setImmediate(() => { this.inBurst = false; });
    }
    this.burst += 1;
    this.maxBurst = Math.max(this.maxBurst, this.burst);
    this.received += 1;
    this.lastEventAt = Date.now();
    if (!data || typeof data !== 'object' || typeof data.jobId !== 'string' || !Number.isInteger(data.seq)) {
      this.violation(`${event}: not an event object: ${JSON.stringify(data)}`);
      return;
    }
    if (this.eventNames[data.type] !== event) {
      this.violation(`${data.type} #${data.seq} of job ${data.jobId} came as "${event}"`);
    }
    // The ack comes before any event it announces: on this connection.
    const viaWorkspace = this.workspaceActive && data.workspaceId === this.workspaceId;
    if (!viaWorkspace && !this.ackedJobs.has(data.jobId)) {
      this.violation(`${event} #${data.seq} of job ${data.jobId} before an ack announced it`);
      return;
    }
    let job = this.jobs.get(data.jobId);
    if (!job) {
      // A job created after the workspace snapshot: every event from seq 1.
      this.track(data.jobId, 0);
      job = this.jobs.get(data.jobId);
    }
    if (data.seq !== job.last + 1) {
      const what = data.seq <= job.last ? 'a repeat' : 'a gap';
      this.violation(`job ${data.jobId}: expected seq ${job.last + 1}, got ${data.seq} (${what})`);
      if (data.seq <= job.last) return;
    }
    job.last = data.seq;
    job.count += 1;
    job.hash.update(`${data.eventId}\n`);
  }

  // One subscription request of connection `epoch`; `onAck` runs in the ack
  // callback itself, before any event that follows the ack is handled. The
  // contract sets no time limit on an ack, so a slow one is only noted; one
  // still missing at the end is a failure.
  ask(epoch, event, payload, onAck) {
    return new Promise((resolve, reject) => {
      if (this.epoch !== epoch || !this.socket.connected) {
        reject(STALE);
        return;
      }
      const request = { what: `${event} ${JSON.stringify(payload)}`, sentAt: Date.now(), reject };
      this.pendingAcks.add(request);
      this.socket.emit(event, payload, (ack) => {
        if (!this.pendingAcks.delete(request)) return; // that connection is gone
        this.maxAckMs = Math.max(this.maxAckMs, Date.now() - request.sentAt);
        if (!ack || ack.ok !== true) {
          this.violation(`${request.what} refused: ${JSON.stringify(ack)}`);
          reject(STALE);
          return;
        }
        onAck(ack);
        resolve(ack);
      });
    });
  }

  async subscribe(epoch) {
    const resuming = this.connects > 1;
    const subscribeJobs = () => {
      const jobIds = new Set(this.followsWorkspace && !resuming ? this.jobIds : [...this.jobIds, ...this.jobs.keys()]);
      return Promise.all([...jobIds].map((jobId) => {
        const seen = this.jobs.get(jobId);
        const payload = resuming && seen ? { jobId, since: seen.last } : { jobId };
        return this.ask(epoch, 'subscribe:job', payload, (ack) => {
          this.ackedJobs.add(jobId);
          this.track(jobId, ack.job.lastSeq);
        });
      }));
    };
    const subscribeWorkspace = () => this.ask(epoch, 'subscribe:workspace:jobs', { workspaceId: this.workspaceId },
      (ack) => {
        this.workspaceActive = true;
        for (const job of ack.jobs) this.track(job.id, job.lastSeq);
      });

    if (!this.followsWorkspace) {
      await subscribeJobs();
    } else if (this.workspaceFirst && !resuming) {
      await subscribeWorkspace();
      await subscribeJobs();
    } else {
      // Resuming: the jobs with `since` first, so that the workspace snapshot
      // does not move a job past events this socket has not seen yet.
      await subscribeJobs();
      await subscribeWorkspace();
    }
  }

  // Drops the connection: the transport (socket.io-client reconnects by
  // itself), or a disconnect() and a connect() a moment later.
  drop(how, pauseMs = 200) {
    this.drops += 1;
    if (how === 'engine') {
      if (this.socket.io.engine) this.socket.io.engine.close();
    } else {
      this.socket.disconnect();
      setTimeout(() => this.socket.connect(), pauseMs);
    }
  }

  report() {
    return {
      name: this.name,
      mode: this.mode,
      jobIds: this.jobIds,
      connects: this.connects,
      disconnects: this.disconnects,
      serverDisconnects: this.serverDisconnects,
      drops: this.drops,
      received: this.received,
      lastEventAt: this.lastEventAt,
      connected: Boolean(this.socket && this.socket.connected),
      socketId: this.socket && this.socket.id,
      transport: this.socket && this.socket.io.engine && this.socket.io.engine.transport
        && this.socket.io.engine.transport.name,
      violations: [...this.violations],
      maxAckMs: this.maxAckMs,
      maxBurst: this.maxBurst,
      pendingAcks: [...this.pendingAcks].map((r) => `${r.what}, sent ${Date.now() - r.sentAt} ms ago`),
      link: `${this.link.packets} packets and ${this.link.pings} pings in the ${Date.now() - this.link.since} ms `
        + 'since it connected, the last one '
        + `${this.link.lastPacketAt ? Date.now() - this.link.lastPacketAt : '—'} ms ago`,
      jobs: [...this.jobs].map(([jobId, j]) => [jobId, { start: j.start, last: j.last, count: j.count }]),
    };
  }

  digests() {
    return Object.fromEntries([...this.jobs].map(([jobId, j]) => [jobId, j.hash.copy().digest('hex')]));
  }

  close() {
    if (this.socket) this.socket.close();
  }
}

// ---------------------------------------------------------------------------
// A slow reader's worker: its own event loop, blocked a few ms per event.

if (!isMainThread) {
  const followers = workerData.followers.map((spec) => new Follower({
    ...spec, url: workerData.url, token: workerData.token, workspaceId: workerData.workspaceId,
    eventNames: workerData.eventNames, transports: ['polling'],
  }));
  const byName = new Map(followers.map((f) => [f.name, f]));
  parentPort.on('message', (message) => {
    if (message.type === 'drop') byName.get(message.name).drop(message.how, message.pauseMs);
    if (message.type === 'report') {
      parentPort.postMessage({
        type: 'report',
        id: message.id,
        reports: followers.map((f) => ({ ...f.report(), digests: message.digests ? f.digests() : undefined })),
      });
    }
    if (message.type === 'close') {
      followers.forEach((f) => f.close());
      parentPort.close();
    }
  });
  Promise.all(followers.map((f) => f.start())).then(() => parentPort.postMessage({ type: 'ready' }));
}

// ---------------------------------------------------------------------------
// The test (main thread).

if (isMainThread) {
  const assert = require('node:assert/strict');
  const { describe, it, before, after } = require('node:test');
  const {
    EVENT_NAME_BY_TYPE, api, mintToken, skipReason, sleep, useServer,
  } = require('./harness');

  const SOCKETS = 50;
  const SLOW_SOCKETS = 4;
  const DROPPED_SOCKETS = 17; // a third
  const PRODUCERS = 4;
  const PRODUCE_MS = 12_000;
  const RESTART_AT = 0.45; // of PRODUCE_MS
  const LATE_JOB_AT = 0.3;
  const CATCH_UP_LIMIT_MS = 20_000;
  const WRITE_RETRY_MS = 15_000;
  const SERVER_BUFFER = 32;

  // A seeded generator, so that a failing run's choices can be looked at again.
  const seed = Number(process.env.JOBSTREAM_STRESS_SEED) || crypto.randomInt(1, 2 ** 31);
  const random = (() => {
    let a = seed;
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  })();
  const randomInt = (min, max) => min + Math.floor(random() * (max - min + 1));
  const pick = (list) => list[Math.floor(random() * list.length)];

  describe('delivery under stress: concurrent producers, dropped and slow sockets, a server restart',
    { skip: skipReason(), timeout: 120_000 }, () => {
      const ctx = useServer({
        env: {
          JOBSTREAM_SOCKET_BUFFER: String(SERVER_BUFFER),
          RUST_LOG: process.env.RUST_LOG
            || 'info,jobstream_server=debug,jobstream_job_events=debug,socketioxide::client=debug',
        },
      });
      const workspaceId = crypto.randomUUID();
      const followers = [];
      const slowReaders = [];
      let mainJob;
      let otherJobs;
      let lateJobId;
      let finals;          // jobId → lastSeq at the end
      let stored;          // jobId → [eventId by seq - 1]
      let reports;         // every follower's report once caught up
      let caughtUp;        // whether every follower caught up in time
      let productionEndedAt;
      let restartMs;
      let writesDone = 0;

      // -- the slow readers, each a worker ------------------------------------------
      const startSlowReader = (spec, common) => {
        const worker = new Worker(__filename, { workerData: { ...common, followers: [spec] } });
        const pending = new Map();
        let nextId = 1;
        const ready = new Promise((resolve, reject) => {
          worker.on('message', (message) => {
            if (message.type === 'ready') resolve();
            if (message.type === 'report' && pending.has(message.id)) pending.get(message.id)(message.reports[0]);
          });
          worker.on('error', reject);
        });
        const reader = {
          name: spec.name,
          ready,
          drop: (how, pauseMs) => worker.postMessage({ type: 'drop', name: spec.name, how, pauseMs }),
          report: (digests) => new Promise((resolve, reject) => {
            const id = nextId;
            nextId += 1;
            const timer = setTimeout(() => {
              pending.delete(id);
              reject(new Error(`${spec.name}: its worker did not report within 10 s`));
            }, 10_000);
            pending.set(id, (report) => { clearTimeout(timer); pending.delete(id); resolve(report); });
            worker.postMessage({ type: 'report', id, digests });
          }),
          close: async () => {
            worker.postMessage({ type: 'close' });
            await Promise.race([new Promise((resolve) => worker.once('exit', resolve)), sleep(2000)]);
            await worker.terminate();
          },
        };
        slowReaders.push(reader);
        return reader;
      };
      const allReports = async (digests = false) => {
        const own = followers.map((f) => ({ ...f.report(), digests: digests ? f.digests() : undefined }));
        return [...own, ...(await Promise.all(slowReaders.map((r) => r.report(digests))))];
      };

      // -- producers ---------------------------------------------------------------
      // A write, retried while the server is away (restart). A retry answered 409
      // means the first try was committed before its answer was lost.
      const write = async (what, call, okStatus) => {
        const ok = [okStatus].flat();
        const deadline = Date.now() + WRITE_RETRY_MS;
        for (let attempt = 1; ; attempt += 1) {
          let response;
          try {
            response = await call();
          } catch (err) {
            if (Date.now() > deadline) throw new Error(`${what}: server unreachable: ${err.message}`);
            await sleep(100);
            continue;
          }
          if (ok.includes(response.status)) {
            writesDone += 1;
            return response.body;
          }
          if (response.status === 503 && Date.now() < deadline) {
            await sleep(100);
            continue;
          }
          if (response.status === 409 && attempt > 1) return null;
          throw new Error(`${what}: HTTP ${response.status} ${JSON.stringify(response.body)}`);
        }
      };

      // One random item for a job: job-level writes, or writes to this
      // producer's own step of the job when it has one.
      const randomItem = (job, stepId, producer, n) => {
        const kinds = stepId
          ? ['output', 'output', 'output', 'step_progress', 'progress', 'event']
          : ['progress', 'event'];
        const kind = pick(kinds);
        switch (kind) {
          case 'output':
            return { jobId: job, kind, stepId, chunk: `producer ${producer} line ${n}\n`,
              stream: random() < 0.2 ? 'stderr' : 'stdout' };
          case 'step_progress':
            return { jobId: job, kind, stepId, progress: randomInt(0, 100) };
          case 'progress':
            return { jobId: job, kind, progress: randomInt(0, 100), message: `producer ${producer}` };
          default:
            return { jobId: job, kind, type: pick(['ai.tool_called', 'ai.tokens_used', 'gate.started']),
              stepId: stepId || null, payload: { producer, n } };
        }
      };
      const single = (producerApi, item) => {
        const { jobId, kind, stepId, ...body } = item;
        switch (kind) {
          case 'output': return () => producerApi.stepOutput(jobId, stepId, body);
          case 'step_progress': return () => producerApi.stepProgress(jobId, stepId, body);
          case 'progress': return () => producerApi.setProgress(jobId, body);
          default: return () => producerApi.addEvent(jobId, { ...body, stepId });
        }
      };

      const runJob = async (producerApi, jobId) => {
        await write(`queue ${jobId}`, () => producerApi.setStatus(jobId, { status: 'queued' }), 200);
        await write(`start ${jobId}`, () => producerApi.setStatus(jobId, { status: 'running' }), 200);
      };

      before(async () => {
        const { secret, url } = ctx.server;
        const producerApi = api(url, mintToken(secret, { sub: 'producer', workspaces: [workspaceId] }));
        const token = mintToken(secret, { sub: 'follower', workspaces: [workspaceId], scope: 'subscribe' });

        // Arrange: the jobs, running, each with one step per producer.
        const jobs = [];
        for (let i = 0; i < 4; i += 1) {
          const created = await producerApi.createJob({ workspaceId, type: i === 0 ? 'stress.main' : 'stress.other' });
          assert.equal(created.status, 201, JSON.stringify(created.body));
          jobs.push(created.body.id);
          await runJob(producerApi, created.body.id);
        }
        [mainJob, ...otherJobs] = jobs;
        const stepOf = Array.from({ length: PRODUCERS }, () => new Map()); // producer → jobId → stepId
        for (let p = 0; p < PRODUCERS; p += 1) {
          for (const jobId of jobs) {
            const answer = await write('start step', () => producerApi.startStep(jobId,
              { name: `producer ${p}`, phase: 'execution', stepType: 'command' }), 201);
            stepOf[p].set(jobId, answer.step.id);
          }
        }

        // Arrange: the sockets. Modes rotate job / workspace / both; the slow
        // ones live in workers; a third of all are picked to be dropped.
        const specs = Array.from({ length: SOCKETS }, (_, i) => {
          const mode = ['job', 'workspace', 'both'][i % 3];
          return {
            name: `socket-${i}${i >= SOCKETS - SLOW_SOCKETS ? '-slow' : ''}`,
            mode,
            jobIds: mode === 'workspace' ? [] : (i % 2 ? [mainJob] : [mainJob, otherJobs[0]]),
            workspaceFirst: i % 2 === 0,
            slow: i >= SOCKETS - SLOW_SOCKETS,
            transports: i % 4 === 0 ? ['websocket'] : undefined,
            blockMs: mode === 'job' ? 3 : 2,
          };
        });
        const dropped = new Set();
        while (dropped.size < DROPPED_SOCKETS) dropped.add(specs[randomInt(0, SOCKETS - 1)].name);

        const fast = specs.filter((s) => !s.slow);
        for (const spec of fast) {
          followers.push(new Follower({
            name: spec.name, url, token, workspaceId, mode: spec.mode, jobIds: spec.jobIds,
            workspaceFirst: spec.workspaceFirst, transports: spec.transports, eventNames: EVENT_NAME_BY_TYPE,
          }));
        }
        const common = { url, token, workspaceId, eventNames: EVENT_NAME_BY_TYPE };
        for (const spec of specs.filter((s) => s.slow)) {
          startSlowReader({
            name: spec.name, mode: spec.mode, jobIds: spec.jobIds, workspaceFirst: spec.workspaceFirst,
            blockMs: spec.blockMs,
          }, common);
        }
        let readyTimer;
        await Promise.race([
          Promise.all([...followers.map((f) => f.start()), ...slowReaders.map((r) => r.ready)]),
          new Promise((_, reject) => {
            readyTimer = setTimeout(() => reject(new Error('sockets not subscribed within 20 s')), 20_000);
          }),
        ]).finally(() => clearTimeout(readyTimer));

        // Act: producers, drops and the restart, all at once.
        const startedAt = Date.now();
        const endAt = startedAt + PRODUCE_MS;
        const liveJobs = [...jobs];
        const dropTimers = [];
        for (const name of dropped) {
          for (let d = randomInt(1, 2); d > 0; d -= 1) {
            const at = randomInt(PRODUCE_MS * 0.05, PRODUCE_MS * 0.95);
            const how = random() < 0.5 ? 'engine' : 'disconnect';
            const pauseMs = randomInt(50, 500);
            dropTimers.push(setTimeout(() => {
              [...followers, ...slowReaders].find((f) => f.name === name).drop(how, pauseMs);
            }, at));
          }
        }

        const producer = async (p) => {
          let n = 0;
          let lateCreated = p !== 0;
          while (Date.now() < endAt) {
            if (!lateCreated && Date.now() >= startedAt + PRODUCE_MS * LATE_JOB_AT) {
              // A job created mid-run: workspace sockets get it from seq 1.
              lateCreated = true;
              const id = crypto.randomUUID();
              // (A retry of a committed create answers 200 with the job.)
              await write('create the late job',
                () => producerApi.createJob({ id, workspaceId, type: 'stress.late' }), [201, 200]);
              await runJob(producerApi, id);
              lateJobId = id;
              liveJobs.push(id);
            }
            const pickJob = () => (random() < 0.5 ? mainJob : pick(liveJobs));
            n += 1;
            if (random() < 0.3) {
              const items = Array.from({ length: randomInt(5, 40) }, (_, k) => {
                const jobId = pickJob();
                return randomItem(jobId, stepOf[p].get(jobId), p, `${n}.${k}`);
              });
              await write('batch', () => producerApi.batch({ events: items }), 200);
            } else {
              const jobId = pickJob();
              const item = randomItem(jobId, stepOf[p].get(jobId), p, n);
              await write(`${item.kind} write`, single(producerApi, item), item.kind === 'event' ? 201 : 200);
            }
            await sleep(randomInt(40, 120));
          }
          for (const [jobId, stepId] of stepOf[p]) {
            await write('complete step', () => producerApi.completeStep(jobId, stepId, { status: 'completed' }), 200);
          }
        };
        const restart = (async () => {
          await sleep(PRODUCE_MS * RESTART_AT);
          const t = Date.now();
          await ctx.server.restart({ samePort: true });
          restartMs = Date.now() - t;
        })();
        await Promise.all([...Array.from({ length: PRODUCERS }, (_, p) => producer(p)), restart]);
        dropTimers.forEach(clearTimeout);

        // Act: the jobs end; one gets an event after its end (allowed for job:event types).
        const ends = [
          [mainJob, { status: 'completed', result: { lines: writesDone } }],
          [otherJobs[0], { status: 'completed', result: null }],
          [otherJobs[1], { status: 'failed', error: 'stress: failed on purpose' }],
          [otherJobs[2], { status: 'cancelled', error: 'stress: cancelled on purpose' }],
          [lateJobId, { status: 'completed' }],
        ];
        for (const [jobId, body] of ends) {
          await write(`end ${jobId}`, () => producerApi.setStatus(jobId, body), 200);
        }
        await write('event after the end', () => producerApi.addEvent(otherJobs[0],
          { type: 'gate.passed', payload: { after: 'completion' } }), 201);
        productionEndedAt = Date.now();

        // The job's final lastSeq and stored events.
        finals = new Map();
        stored = new Map();
        for (const jobId of liveJobs) {
          const job = await producerApi.getJob(jobId);
          assert.equal(job.status, 200, JSON.stringify(job.body));
          finals.set(jobId, job.body.lastSeq);
          const ids = [];
          for (let since = 0; since < job.body.lastSeq;) {
            const page = await producerApi.events(jobId, { since, limit: 10_000 });
            assert.equal(page.status, 200, JSON.stringify(page.body));
            assert.ok(page.body.events.length > 0, `stored events of ${jobId} after ${since}`);
            for (const event of page.body.events) {
              assert.equal(event.seq, ids.length + 1, `stored seq of job ${jobId}`);
              ids.push(event.eventId);
            }
            since = ids.length;
          }
          stored.set(jobId, ids);
        }

        // Wait until every socket has, for every job it follows, the last seq.
        const expectedJobs = (report) => (report.mode === 'job' ? report.jobIds : [...finals.keys()]);
        const isCaughtUp = (report) => expectedJobs(report).every((jobId) => {
          const job = report.jobs.find(([id]) => id === jobId);
          return job && job[1].last >= finals.get(jobId);
        });
        const limit = Date.now() + CATCH_UP_LIMIT_MS;
        for (;;) {
          reports = await allReports(false);
          caughtUp = reports.every(isCaughtUp);
          if (caughtUp || Date.now() > limit) break;
          await sleep(200);
        }
        await sleep(500); // time for a late repeat to show up
        reports = await allReports(true);
        reports.forEach((r) => { r.expectedJobs = expectedJobs(r); });

        const received = reports.reduce((sum, r) => sum + r.received, 0);
        const reconnects = reports.reduce((sum, r) => sum + r.connects - 1, 0);
        const serverDisconnects = reports.reduce((sum, r) => sum + r.serverDisconnects, 0);
        const catchUp = Math.max(0, ...reports.map((r) => r.lastEventAt - productionEndedAt));
        const slow = reports.filter((r) => r.name.endsWith('-slow'));
        const slowCatchUp = Math.max(0, ...slow.map((r) => r.lastEventAt - productionEndedAt));
        process.stdout.write(`stress summary (seed ${seed}): ${writesDone} writes, `
          + `${[...finals.values()].reduce((a, b) => a + b, 0)} stored events in ${finals.size} jobs `
          + `(main job: ${finals.get(mainJob)}); ${reports.length} sockets received ${received} events; `
          + `${reconnects} reconnects (${reports.reduce((s, r) => s + r.drops, 0)} drops, `
          + `${serverDisconnects} server-side disconnects); restart took ${restartMs} ms; `
          + `max time to catch up after the last write: ${catchUp} ms (slow readers: ${slowCatchUp} ms); `
          + `slowest ack: ${Math.max(...reports.map((r) => r.maxAckMs))} ms; most events in one polling payload `
          + `of a slow reader: ${Math.max(...slow.map((r) => r.maxBurst))}\n`);
      }, { timeout: 55_000 });

      after(async () => {
        followers.forEach((f) => f.close());
        await Promise.all(slowReaders.map((r) => r.close()));
      });

      it('reconnects every socket by itself after the server restart, and ends with all of them connected', () => {
        const missing = reports.filter((r) => r.connects < 2)
          .map((r) => `${r.name}: ${r.connects} connects, ${r.drops} drops`);
        const disconnected = reports.filter((r) => !r.connected).map((r) => r.name);

        assert.deepEqual(missing, [], 'sockets that did not come back after the restart');
        assert.deepEqual(disconnected, [], 'sockets not connected at the end');
      });

      it('brings every socket up to the last seq of every job it follows', () => {
        const behind = reports.flatMap((r) => r.pendingAcks.map((what) => `${r.name} (${r.socketId}): `
          + `no ack for ${what}; ${r.link}`));
        for (const r of reports) {
          for (const jobId of r.expectedJobs) {
            const job = r.jobs.find(([id]) => id === jobId);
            const last = job ? job[1].last : 'nothing';
            if (!job || job[1].last !== finals.get(jobId)) {
              behind.push(`${r.name} (${r.mode}, ${r.socketId} over ${r.transport}): job ${jobId} `
                + `at ${last} of ${finals.get(jobId)}`);
            }
          }
        }

        assert.deepEqual(behind, [], `not caught up within ${CATCH_UP_LIMIT_MS} ms of the last write`);
      });

      it('delivers to every socket each event from its starting point once and in seq order, across reconnects',
        () => {
          const violations = reports.flatMap((r) => r.violations);
          const miscounted = [];
          for (const r of reports) {
            for (const [jobId, job] of r.jobs) {
              const final = finals.get(jobId);
              if (final === undefined) {
                miscounted.push(`${r.name}: events of job ${jobId}, not of this workspace`);
              } else if (job.count !== job.last - job.start || job.start < 0 || job.start > final) {
                miscounted.push(`${r.name}: job ${jobId} started at ${job.start}, at ${job.last}, `
                  + `${job.count} events received`);
              }
            }
          }

          assert.deepEqual(violations, [], 'events out of order, repeated or skipped');
          assert.deepEqual(miscounted, [], 'received counts that do not match the range');
        });

      it('delivers the stored events themselves (same eventIds, seq by seq)', () => {
        const digestOf = (jobId, from, to) => {
          const hash = crypto.createHash('sha256');
          for (const eventId of stored.get(jobId).slice(from, to)) hash.update(`${eventId}\n`);
          return hash.digest('hex');
        };
        const different = [];
        for (const r of reports) {
          for (const [jobId, job] of r.jobs) {
            if (!stored.has(jobId)) continue;
            if (r.digests[jobId] !== digestOf(jobId, job.start, job.last)) {
              different.push(`${r.name}: job ${jobId} seq ${job.start + 1}..${job.last}`);
            }
          }
        }

        assert.deepEqual(different, []);
      });

      it('gives a workspace socket the job created during the run', () => {
        const withoutLateJob = reports.filter((r) => r.mode !== 'job')
          .filter((r) => !r.jobs.some(([id]) => id === lateJobId)).map((r) => r.name);

        assert.ok(lateJobId, 'the late job was created');
        assert.deepEqual(withoutLateJob, []);
      });
    });
}
