// The xDS fuzz test (issue 14): mutated resources — random field mutations of the shared Istio
// fixtures and of generated resources, truncated and garbage bytes, wrong type URLs, invalid
// addresses and ports, unknown enum numbers, negative durations, huge names and counts, missing
// references, deep nesting — served to a real agent over Delta ADS, and the JSON ones read through
// the file source. The agent never crashes or hangs, every response is answered, whatever is wrong
// by construction is NACKed with its name and a reason, no refusal is a crash in disguise, the good
// resource of each response is applied, and the agent's RSS stays bounded.
// Fixed seed in CI; KERNMESH_FUZZ_CASES=N (and KERNMESH_FUZZ_SEED) for a long run; a failing round is
// written to a replay file, which KERNMESH_FUZZ_REPLAY=<file> serves again alone.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkText } from '../src/cli/check.js';
import { TYPE, type JsonObject } from '../src/xds/types.js';
import { runAgentServing } from './support/cli.js';
import { TestControlPlane } from './support/control-plane.js';
import { edsCluster, getJson, tcpListener, assignment } from './support/control-plane-istiod.js';
import { fixturesMissing, readFixture } from './support/fixtures.js';
import {
  certainlyBad,
  deepStruct,
  encode,
  garbage,
  mutateBytes,
  mutateField,
  pick,
  prng,
  type FuzzCase,
  type Random,
} from './support/fuzz.js';
import { kernelTest } from './support/kernel.js';

const SEED = Number(process.env['KERNMESH_FUZZ_SEED'] ?? 20261202);
const CASES = Number(process.env['KERNMESH_FUZZ_CASES'] ?? 5000);
const REPLAY = process.env['KERNMESH_FUZZ_REPLAY'];
/** Cases per type per round: one response of each type carries this many, plus one good resource. */
const PER_TYPE = 20;
/** EDS names the agent subscribes to: mutated ClusterLoadAssignments are served under these. */
const EDS_NAMES = Array.from({ length: PER_TYPE }, (_, i) => `fuzz-eds-${i}`);
/** A refusal that is a bug in disguise, not a reason. */
const CRASH =
  /validation failed:|Cannot read propert|is not a function|undefined is not|Maximum call stack|RangeError|ERR_[A-Z_]+/;

function fixtureResources(file: string, typeUrl: string): JsonObject[] {
  const out: JsonObject[] = [];
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      if ((v as JsonObject)['@type'] === typeUrl) out.push(v as JsonObject);
      else Object.values(v).forEach(walk);
    }
  };
  walk(readFixture(file));
  return out;
}

interface Bases {
  [typeUrl: string]: JsonObject[];
}

function bases(): Bases {
  const generated = {
    [TYPE.cluster]: [edsCluster('outbound|80||gen.test.svc.cluster.local')],
    [TYPE.listener]: [tcpListener('127.100.90.1', 8080, 'outbound|80||gen.test.svc.cluster.local')],
    [TYPE.endpoint]: [
      assignment('gen', [
        { address: '127.90.0.1', port: 80 },
        { address: '127.90.0.2', port: 80, weight: 3 },
      ]),
    ],
  };
  if (fixturesMissing()) return generated;
  return {
    [TYPE.cluster]: [
      ...generated[TYPE.cluster],
      ...fixtureResources('gateway-route-and-dr-subset-cluster.configdump.json', TYPE.cluster),
      ...fixtureResources('waypoint-full.configdump.json', TYPE.cluster),
    ],
    [TYPE.listener]: [
      ...generated[TYPE.listener],
      ...fixtureResources('sidecar-listeners.configdump.yaml', TYPE.listener).slice(0, 8),
    ],
    [TYPE.endpoint]: [
      ...generated[TYPE.endpoint],
      ...fixtureResources('sidecar-endpoints.configdump.json', TYPE.endpoint).filter((c) =>
        Array.isArray(c['endpoints']),
      ),
    ],
  };
}

function rename(typeUrl: string, json: JsonObject, name: string): JsonObject {
  return typeUrl === TYPE.endpoint ? { ...json, cluster_name: name } : { ...json, name };
}

/** One case of a type, named `name`. */
function makeCase(r: Random, typeUrl: string, base: JsonObject, name: string): FuzzCase {
  const named = rename(typeUrl, base, name);
  const roll = r();
  if (roll < 0.35) {
    const bad = certainlyBad(r, typeUrl, named);
    if (bad.any) return { name, typeUrl, mutation: bad.what, any: bad.any, mustRefuse: true };
    return {
      name,
      typeUrl,
      mutation: bad.what,
      any: { type_url: typeUrl, value: encode(typeUrl, bad.json!) },
      json: bad.json!,
      mustRefuse: true,
    };
  }
  if (roll < 0.5) {
    const m = mutateBytes(r, encode(typeUrl, named));
    return { name, typeUrl, mutation: m.what, any: { type_url: typeUrl, value: m.bytes }, mustRefuse: false };
  }
  if (roll < 0.53) {
    const huge = rename(typeUrl, named, name);
    const key = typeUrl === TYPE.endpoint ? 'cluster_name' : 'name';
    // A huge name inside, the served name outside: Delta names it by its wrapper.
    huge[key] = `${name}-${'n'.repeat(64 * 1024)}`;
    return {
      name,
      typeUrl,
      mutation: 'name of 64 KiB',
      any: { type_url: typeUrl, value: encode(typeUrl, huge) },
      json: huge,
      mustRefuse: false,
    };
  }
  if (roll < 0.56) {
    const deep = {
      ...named,
      metadata: { filter_metadata: { fuzz: deepStruct(20 + Math.floor(r() * 200)) } },
    };
    try {
      return {
        name,
        typeUrl,
        mutation: 'metadata nested deep',
        any: { type_url: typeUrl, value: encode(typeUrl, deep) },
        json: deep,
        mustRefuse: false,
      };
    } catch {
      return {
        name,
        typeUrl,
        mutation: 'garbage bytes (deep nesting did not encode)',
        any: { type_url: typeUrl, value: garbage(r) },
        mustRefuse: true,
      };
    }
  }
  if (roll < 0.59 && typeUrl === TYPE.listener) {
    const missing = tcpListener('127.100.91.1', 9000 + Math.floor(r() * 1000), `outbound|1||missing-${name}`);
    const json = rename(typeUrl, missing, name);
    return {
      name,
      typeUrl,
      mutation: 'tcp_proxy to a cluster that does not exist',
      any: { type_url: typeUrl, value: encode(typeUrl, json) },
      json,
      mustRefuse: false,
    };
  }
  for (let i = 0; i < 5; i++) {
    const m = mutateField(r, named);
    if (!m) break;
    try {
      return {
        name,
        typeUrl,
        mutation: m.what,
        any: { type_url: typeUrl, value: encode(typeUrl, m.json) },
        json: m.json,
        mustRefuse: false,
      };
    } catch {
      // The mutation is not even expressible as this message: try another.
    }
  }
  return {
    name,
    typeUrl,
    mutation: 'garbage bytes',
    any: { type_url: typeUrl, value: garbage(r) },
    mustRefuse: true,
  };
}

interface Round {
  index: number;
  cases: FuzzCase[];
  good: Record<string, JsonObject>;
}

function makeRound(seed: number, index: number, b: Bases, perType: number): Round {
  const r = prng(seed ^ Math.imul(index + 1, 0x9e3779b1));
  const cases: FuzzCase[] = [];
  for (const typeUrl of [TYPE.cluster, TYPE.listener, TYPE.endpoint]) {
    for (let j = 0; j < perType; j++) {
      const name =
        typeUrl === TYPE.endpoint
          ? EDS_NAMES[j]!
          : `fuzz-${typeUrl === TYPE.cluster ? 'c' : 'l'}-${index}-${j}`;
      cases.push(makeCase(r, typeUrl, pick(r, b[typeUrl]!), name));
    }
  }
  // Once in a while a ClusterLoadAssignment past the backend map's size: refused unread.
  if (index % 25 === 7) {
    const many = assignment(
      EDS_NAMES[0]!,
      Array.from({ length: 70_000 }, (_, i) => ({
        address: `127.${91 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`,
        port: 80,
      })),
    );
    cases[cases.findIndex((c) => c.name === EDS_NAMES[0])] = {
      name: EDS_NAMES[0]!,
      typeUrl: TYPE.endpoint,
      mutation: '70,000 endpoints',
      any: { type_url: TYPE.endpoint, value: encode(TYPE.endpoint, many) },
      mustRefuse: true,
    };
  }
  const goodCluster = `outbound|80||good-${index}.test.svc.cluster.local`;
  return {
    index,
    cases,
    good: {
      [TYPE.cluster]: edsCluster(goodCluster),
      [TYPE.listener]: tcpListener('127.100.92.1', 7000 + (index % 1000), goodCluster),
      [TYPE.endpoint]: assignment('fuzz-good-eds', [{ address: '127.92.0.1', port: 1000 + (index % 60000) }]),
    },
  };
}

function writeReplay(round: Round, seed: number, why: string): string {
  const file = join(tmpdir(), `kernmesh-fuzz-${seed}-${round.index}.json`);
  const out = {
    why,
    seed,
    round: round.index,
    good: round.good,
    cases: round.cases.map((c) => ({
      ...c,
      any: { type_url: c.any.type_url, value: Buffer.from(c.any.value).toString('base64') },
    })),
  };
  writeFileSync(file, JSON.stringify(out, null, 2));
  return file;
}

function readReplay(file: string): Round {
  const r = JSON.parse(readFileSync(file, 'utf8')) as {
    round: number;
    good: Record<string, JsonObject>;
    cases: (Omit<FuzzCase, 'any'> & { any: { type_url: string; value: string } })[];
  };
  return {
    index: r.round,
    good: r.good,
    cases: r.cases.map((c) => ({
      ...c,
      any: { type_url: c.any.type_url, value: Buffer.from(c.any.value, 'base64') },
    })),
  };
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Math.round(Number(m?.[1] ?? 0) / 1024);
}

function text(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function nackMessage(j: JsonObject): string {
  const m = (j['error_detail'] as JsonObject | undefined)?.['message'];
  return typeof m === 'string' ? m : '';
}

/** Every object named `name` in the agent's /debug/xds, with its status. */
function statusOf(debug: unknown, name: string): string | undefined {
  let found: string | undefined;
  const walk = (v: unknown): void => {
    if (found !== undefined) return;
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      if (o['name'] === name && typeof o['status'] === 'string') found = o['status'];
      else Object.values(o).forEach(walk);
    }
  };
  walk(debug);
  return found;
}

kernelTest(
  `fuzzed xDS over Delta ADS and the file source (seed ${SEED}, ${REPLAY ? 'replay' : `${CASES} cases`})`,
  async (_t, env) => {
    const b = bases();
    const cp = await TestControlPlane.start();
    env.defer(() => cp.stop());
    // The good resources' cluster and the EDS names mutated CLAs are served under.
    const stable: JsonObject[] = [...EDS_NAMES, 'fuzz-good-eds'].map((n) => {
      const c = edsCluster(n);
      (c['eds_cluster_config'] as JsonObject)['service_name'] = n;
      return c;
    });
    cp.setResources(TYPE.cluster, stable);
    cp.setResources(TYPE.listener, []);
    cp.setResources(TYPE.endpoint, [assignment('fuzz-good-eds', [{ address: '127.92.0.1', port: 999 }])]);
    const { agent, admin } = await runAgentServing(env, [
      '--xds-address',
      cp.address,
      '--pod-name',
      'kernmesh-fuzz',
      '--pod-namespace',
      'test',
      '--instance-ip',
      '10.1.2.3',
      '--log-level',
      'info',
    ]);
    await cp.waitForAck(TYPE.endpoint, { timeoutMs: 30_000 });

    // Enough rounds for CASES sent cases (a case equal to the last one under its name is not resent).
    const rounds = REPLAY ? 1 : Math.ceil((CASES * 1.1) / (3 * PER_TYPE)) + 5;
    const counts = {
      cases: 0,
      unchanged: 0,
      mustRefuse: 0,
      refused: 0,
      accepted: 0,
      fileCases: 0,
      fileRefused: 0,
      responses: 0,
    };
    const byMutation = new Map<string, number>();
    let rssWarm = 0;
    let rssMax = 0;
    const started = Date.now();
    for (let i = 0; i < rounds; i++) {
      const round = REPLAY ? readReplay(REPLAY) : makeRound(SEED, i, b, PER_TYPE);
      try {
        for (const typeUrl of [TYPE.cluster, TYPE.listener, TYPE.endpoint]) {
          const cases = round.cases.filter((c) => c.typeUrl === typeUrl);
          const from = cp.requests.length;
          const served = [
            ...(typeUrl === TYPE.cluster ? stable : []),
            round.good[typeUrl]!,
            ...cases.map((c) => ({ name: c.name, any: c.any })),
          ];
          cp.setResources(typeUrl, served);
          const nonce = cp.lastNonce(typeUrl);
          counts.responses++;
          const answer = await cp.waitFor(
            (req) =>
              req.typeUrl === typeUrl &&
              (req.kind === 'ack' || req.kind === 'nack') &&
              req.json['response_nonce'] === nonce,
            { from, timeoutMs: 20_000 },
          );
          assert.equal(agent.exitCode, null, `the agent exited: ${agent.stderrText().slice(-2000)}`);
          const message = answer.kind === 'nack' ? nackMessage(answer.json) : '';
          const lines = message ? message.split('\n') : [];
          const refusedNames = new Set(lines.map((l) => l.slice(0, l.indexOf(': '))));
          for (const l of lines) {
            assert.ok(l.indexOf(': ') > 0, `a NACK line names a resource and a reason: ${l.slice(0, 300)}`);
            assert.doesNotMatch(l, CRASH, `a refusal that is a crash: ${l.slice(0, 500)}`);
          }
          const goodName = typeUrl === TYPE.endpoint ? 'fuzz-good-eds' : text(round.good[typeUrl]!['name']);
          assert.ok(!refusedNames.has(goodName), `the good ${typeUrl} was refused: ${message.slice(0, 500)}`);
          // Delta sends only what changed: a case equal to what its name held before was not resent.
          const sent = new Set(cp.responses.find((x) => x.nonce === nonce)?.names ?? []);
          for (const c of cases) {
            if (!sent.has(c.name)) {
              counts.unchanged++;
              continue;
            }
            counts.cases++;
            const refused = [...refusedNames].some((n) => n === c.name || n.startsWith(`${c.name}-nnnn`));
            if (refused) counts.refused++;
            else counts.accepted++;
            byMutation.set(
              c.mutation.replace(/[\d.]+/g, 'N').slice(0, 40),
              (byMutation.get(c.mutation.replace(/[\d.]+/g, 'N').slice(0, 40)) ?? 0) + 1,
            );
            if (c.mustRefuse) {
              counts.mustRefuse++;
              assert.ok(
                refused,
                `${c.name} (${c.mutation}) is wrong by construction and was not NACKed: ${message.slice(0, 500)}`,
              );
            }
          }
        }
        // The same JSON cases through the file source (what has a JSON form), each type in one file.
        const jsonCases = round.cases.filter((c) => c.json);
        if (jsonCases.length > 0) {
          const resources = [
            ...stable,
            ...Object.values(round.good),
            ...jsonCases.map((c) => ({ '@type': c.typeUrl, ...rename(c.typeUrl, c.json!, c.name) })),
          ];
          const report = checkText(JSON.stringify({ resources }), `fuzz-${round.index}.json`);
          const refused = new Set(report.rejected.map((x) => x.name));
          for (const x of report.rejected)
            assert.doesNotMatch(x.reason, CRASH, `file source: ${x.name}: ${x.reason.slice(0, 500)}`);
          for (const c of jsonCases) {
            counts.fileCases++;
            if (refused.has(c.name)) counts.fileRefused++;
            else if (c.mustRefuse) assert.fail(`file source: ${c.name} (${c.mutation}) was not refused`);
          }
          for (const g of Object.values(round.good)) {
            const n = text(g['name'] ?? g['cluster_name']);
            assert.ok(!refused.has(n), `file source refused the good ${n}`);
          }
        }
        if (i % 20 === 19 || i === rounds - 1) {
          const debug = (await getJson<unknown>(admin, '/debug/xds')).body;
          assert.equal(
            statusOf(debug, text(round.good[TYPE.cluster]!['name'])),
            'ACKED',
            'the good cluster is applied',
          );
          assert.equal(
            statusOf(debug, text(round.good[TYPE.listener]!['name'])),
            'ACKED',
            'the good listener is applied',
          );
          assert.equal(statusOf(debug, 'fuzz-good-eds'), 'ACKED', 'the good endpoints are applied');
        }
        const rss = rssMiB(agent.pid!);
        rssMax = Math.max(rssMax, rss);
        if (i === 4) rssWarm = rss;
      } catch (err) {
        const file = writeReplay(round, SEED, (err as Error).message);
        console.log(
          `# fuzz round ${round.index} failed; replay: KERNMESH_FUZZ_REPLAY=${file} node scripts/run-tests.mjs fuzz-xds`,
        );
        throw err;
      }
    }
    const rssEnd = rssMiB(agent.pid!);
    console.log(
      `# fuzz seed ${SEED}: ${counts.cases} cases in ${counts.responses} responses (${((Date.now() - started) / 1000).toFixed(0)} s): ` +
        `${counts.refused} NACKed (${counts.mustRefuse} wrong by construction, all NACKed), ${counts.accepted} accepted; ` +
        `file source ${counts.fileCases} cases, ${counts.fileRefused} refused; agent RSS ${rssWarm || rssEnd} MiB after warm-up, ${rssMax} MiB max, ${rssEnd} MiB at the end`,
    );
    console.log(
      `# mutations: ${JSON.stringify(Object.fromEntries([...byMutation].sort((a, b2) => b2[1] - a[1]).slice(0, 15)))}`,
    );
    if (!REPLAY) assert.ok(counts.cases >= Math.min(CASES, 5000), `${counts.cases} cases`);
    // Generous: the 70,000-endpoint responses and fixtures held in memory come and go; growth past this is a leak.
    if (rssWarm > 0)
      assert.ok(rssMax < rssWarm + 300, `agent RSS ${rssMax} MiB against ${rssWarm} MiB after warm-up`);
  },
);
