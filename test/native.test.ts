// Kernel tests of the libbpf binding (native/), each against real programs from test/bpf/native_test.bpf.c.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';

import {
  BpfLink,
  BpfMap,
  BpfObject,
  RingBuffer,
  attachedPrograms,
  btfEnum,
  btfStruct,
  detachCgroupAll,
  enableStats,
  isBpfError,
  possibleCpus,
  type BpfError,
  type OpenOptions,
} from '../native/index.js';
import { kernelTest, removeCgroup, runInCgroup, spawnInCgroup } from './support/kernel.js';
import { eventually } from './support/wait.js';

const OBJECT = fileURLToPath(new URL('./bpf/native_test.bpf.o', import.meta.url));
const NATIVE_INDEX = fileURLToPath(new URL('../native/index.ts', import.meta.url));

// Slots of km_test_counters (test/bpf/native_test.h).
const COUNTER_CONNECT = 0;
const COUNTER_SOCKHASH_INSERT = 1;
const COUNTER_MSG = 2;

function openTestObject(pinDir: string, extra: Pick<OpenOptions, 'maxEntries' | 'check'> = {}): BpfObject {
  assert.ok(existsSync(OBJECT), `${OBJECT} is missing: run \`npm run build:bpf\``);
  return BpfObject.open(OBJECT, { pinDir, ...extra });
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}
function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

function counter(counters: BpfMap, slot: number): bigint {
  const v = counters.lookup(u32(slot));
  assert.ok(v, `counter slot ${slot} missing`);
  return v.readBigUInt64LE(0);
}

/** Asserts fn throws a BpfError and returns it for field checks. */
function bpfErrorOf(fn: () => unknown): BpfError {
  try {
    fn();
  } catch (e) {
    assert.ok(isBpfError(e), `expected a BpfError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected an error');
}

/** A TCP listener on 127.0.0.1 that records what each connection sent. */
async function listener(): Promise<{ server: Server; port: number; received: string[] }> {
  const received: string[] = [];
  const server = createServer((sock) => {
    let data = '';
    sock.on('data', (d: Buffer) => (data += d.toString()));
    sock.on('end', () => {
      received.push(data);
      sock.end();
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, received };
}

// The child connects, sends its payload, waits for the server to close, and prints its pid.
const CLIENT = `
const s = require('net').connect(Number(process.argv[1]), '127.0.0.1', () => s.end(process.argv[2] ?? ''));
s.on('data', () => {});
s.on('close', () => console.log(process.pid));
s.on('error', (e) => { console.error(e.message); process.exit(2); });
`;

/** Connects from a process inside `cgroup` to 127.0.0.1:port; returns the client's pid. */
async function connectFrom(cgroup: string, port: number, payload = 'ping'): Promise<number> {
  const r = await runInCgroup(cgroup, process.execPath, ['-e', CLIENT, String(port), payload]);
  assert.equal(r.code, 0, `client in cgroup failed: ${r.stderr}`);
  return Number(r.stdout.trim());
}

kernelTest(
  'maps pinned in the pin directory survive the process and a new process reuses them',
  async (_t, env) => {
    const obj = openTestObject(env.pinDir);
    obj.map('km_test_hash').update(u32(7), u64(0xdeadbeefn));
    obj.close();
    assert.ok(existsSync(join(env.pinDir, 'km_test_hash')), 'km_test_hash is pinned by name');

    // A new process loads the same object from the same pin directory, finds the entry, adds its own.
    const script = `
    const { BpfObject } = await import(${JSON.stringify(NATIVE_INDEX)});
    const obj = BpfObject.open(process.argv[1], { pinDir: process.argv[2] });
    const m = obj.map('km_test_hash');
    const k = Buffer.alloc(4);
    k.writeUInt32LE(7);
    console.log(m.lookup(k)?.readBigUInt64LE(0).toString(16) ?? 'missing');
    k.writeUInt32LE(8);
    m.update(k, Buffer.alloc(8, 1));
    obj.close();`;
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script, OBJECT, env.pinDir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 0, err);
    assert.equal(out.trim(), 'deadbeef');

    const pinned = BpfMap.openPinned(join(env.pinDir, 'km_test_hash'), 'km_test_hash');
    try {
      assert.equal(pinned.name, 'km_test_hash');
      assert.equal(pinned.type, 'hash');
      assert.deepEqual(pinned.lookup(u32(8)), Buffer.alloc(8, 1), "the child's write is in the pinned map");
    } finally {
      pinned.close();
    }
  },
);

kernelTest('map operations: misses, update flags, delete, iteration, per-CPU values', (_t, env) => {
  const obj = openTestObject(env.pinDir);
  try {
    const m = obj.map('km_test_hash');
    assert.deepEqual([m.keySize, m.valueSize, m.maxEntries, m.type], [4, 8, 64, 'hash']);
    assert.equal(m.lookup(u32(1)), undefined);

    m.update(u32(1), u64(10n), 'noexist');
    const exists = bpfErrorOf(() => m.update(u32(1), u64(11n), 'noexist'));
    assert.deepEqual([exists.code, exists.errno, exists.map], ['EEXIST', 17, 'km_test_hash']);
    assert.match(exists.message, /bpf_map_update_elem km_test_hash: EEXIST/);
    const absent = bpfErrorOf(() => m.update(u32(2), u64(20n), 'exist'));
    assert.deepEqual([absent.code, absent.errno, absent.map], ['ENOENT', 2, 'km_test_hash']);
    m.update(u32(1), u64(12n), 'exist');
    m.update(u32(3), u64(30n));
    assert.deepEqual(m.lookup(u32(1)), u64(12n));

    const keys = m.keys().map((k) => k.readUInt32LE(0));
    assert.deepEqual(keys.sort(), [1, 3]);
    const entries = m.entries().map(([k, v]) => [k.readUInt32LE(0), v.readBigUInt64LE(0)] as const);
    assert.deepEqual(
      entries.sort((a, b) => a[0] - b[0]),
      [
        [1, 12n],
        [3, 30n],
      ],
    );

    assert.equal(m.delete(u32(1)), true);
    assert.equal(m.delete(u32(1)), false);
    assert.equal(m.lookup(u32(1)), undefined);

    // An array has every key; a per-CPU value comes as one 8-byte-aligned slot per possible CPU.
    assert.equal(obj.map('km_test_counters').keys().length, 4);
    const percpu = obj.map('km_test_percpu');
    const slots = Buffer.alloc(possibleCpus() * 8);
    slots.writeUInt32LE(5, 0);
    percpu.update(u32(0), slots);
    assert.deepEqual(percpu.lookup(u32(0)), slots);
  } finally {
    obj.close();
  }
});

kernelTest('batch update, lookup and delete on a hash map; unsupported maps say EOPNOTSUPP', (_t, env) => {
  const obj = openTestObject(env.pinDir);
  try {
    const m = obj.map('km_test_hash');
    assert.equal(m.supportsBatch, true);
    const n = 40;
    const keys = Array.from({ length: n }, (_, i) => u32(i + 100));
    const values = Array.from({ length: n }, (_, i) => u64(BigInt(i) * 3n));
    m.updateBatch(keys, values);

    // A small batch size makes the lookup take several rounds through the kernel's cursor.
    const all = m.lookupBatch(7).map(([k, v]) => [k.readUInt32LE(0), v.readBigUInt64LE(0)] as const);
    assert.equal(all.length, n);
    for (const [k, v] of all) assert.equal(v, BigInt(k - 100) * 3n);

    // The kernel takes no per-element flags in a batch; a full map stops the batch part-way.
    const flagged = bpfErrorOf(() => m.updateBatch(keys.slice(0, 2), values.slice(0, 2), 'noexist'));
    assert.deepEqual(
      [flagged.code, flagged.map, flagged.syscall],
      ['EINVAL', 'km_test_hash', 'bpf_map_update_batch'],
    );
    const small = obj.map('km_test_small');
    const six = [0, 1, 2, 3, 4, 5].map(u32);
    const full = bpfErrorOf(() => small.updateBatch(six, six));
    assert.deepEqual([full.code, full.map], ['E2BIG', 'km_test_small']);
    assert.match(full.message, /4 of 6 entries written before the failure/);
    assert.equal(small.keys().length, 4);

    assert.equal(m.deleteBatch(keys.slice(0, 30)), 30);
    assert.deepEqual(
      m
        .keys()
        .map((k) => k.readUInt32LE(0))
        .sort(),
      [...Array(10).keys()].map((i) => i + 130),
    );
    const gone = bpfErrorOf(() => m.deleteBatch([u32(100)]));
    assert.deepEqual([gone.code, gone.map], ['ENOENT', 'km_test_hash']);

    // Arrays batch too (the kernel's generic implementation), per-CPU values included.
    assert.equal(obj.map('km_test_counters').lookupBatch().length, 4);
    const percpu = obj.map('km_test_percpu').lookupBatch();
    assert.deepEqual(
      percpu.map(([, v]) => v.length),
      [possibleCpus() * 8],
    );

    const sockhash = obj.map('km_test_sockhash');
    assert.equal(sockhash.supportsBatch, false);
    const unsupported = bpfErrorOf(() => sockhash.lookupBatch());
    assert.deepEqual([unsupported.code, unsupported.map], ['EOPNOTSUPP', 'km_test_sockhash']);
  } finally {
    obj.close();
  }
});

kernelTest('errors carry the map name and errno: wrong-size key, full map; maxEntries resizes', (_t, env) => {
  const obj = openTestObject(env.pinDir);
  try {
    const small = obj.map('km_test_small');
    const wrongKey = bpfErrorOf(() => small.lookup(Buffer.alloc(3)));
    assert.deepEqual([wrongKey.code, wrongKey.errno, wrongKey.map], ['EINVAL', 22, 'km_test_small']);
    assert.match(wrongKey.message, /km_test_small: EINVAL .*key is 3 bytes/);
    const wrongValue = bpfErrorOf(() => small.update(u32(1), Buffer.alloc(8)));
    assert.deepEqual([wrongValue.code, wrongValue.map], ['EINVAL', 'km_test_small']);

    for (let i = 0; i < 4; i++) small.update(u32(i), u32(i));
    for (const flag of ['noexist', 'any'] as const) {
      const full = bpfErrorOf(() => small.update(u32(4), u32(4), flag));
      assert.deepEqual(
        [full.code, full.errno, full.map, full.syscall],
        ['E2BIG', 7, 'km_test_small', 'bpf_map_update_elem'],
      );
      assert.match(full.message, /^bpf_map_update_elem km_test_small: E2BIG \(Argument list too long\)/);
    }
  } finally {
    obj.close();
  }

  // A different size cannot reuse the pinned map, and the load error says which map and why.
  const logLines: { level: number; msg: string }[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(JSON.parse(s) as never) });
  const mismatch = bpfErrorOf(() =>
    BpfObject.open(OBJECT, { pinDir: env.pinDir, maxEntries: { km_test_small: 8 }, log }),
  );
  assert.deepEqual([mismatch.syscall, mismatch.object], ['bpf_object__load', 'native_test.bpf.o']);
  assert.match(mismatch.message, /km_test_small/);
  assert.ok(
    logLines.some((l) => l.level === 40 && /km_test_small/.test(l.msg)),
    "libbpf's warning reached pino",
  );
  assert.ok(
    logLines.some((l) => l.level === 20),
    "libbpf's debug output reached pino",
  );

  const resized = openTestObject(join(env.pinDir, 'resized'), { maxEntries: { km_test_small: 8 } });
  try {
    const small = resized.map('km_test_small');
    assert.equal(small.maxEntries, 8);
    for (let i = 0; i < 8; i++) small.update(u32(i), u32(i));
    assert.equal(bpfErrorOf(() => small.update(u32(8), u32(8))).code, 'E2BIG');
  } finally {
    resized.close();
  }

  const unknown = bpfErrorOf(() =>
    openTestObject(join(env.pinDir, 'x'), { maxEntries: { km_no_such_map: 8 } }),
  );
  assert.deepEqual([unknown.code, unknown.map], ['ENOENT', 'km_no_such_map']);
  const missing = bpfErrorOf(() =>
    BpfObject.open('/nonexistent/x.bpf.o', { pinDir: join(env.pinDir, 'y'), log }),
  );
  assert.deepEqual(
    [missing.code, missing.object, missing.syscall],
    ['ENOENT', 'x.bpf.o', 'bpf_object__open_file'],
  );
  assert.match(missing.message, /failed to open \/nonexistent\/x.bpf.o/);
});

kernelTest(
  'ring buffer records from connect4 reach the TypeScript callback with the destination',
  async (_t, env) => {
    const obj = openTestObject(env.pinDir);
    const { server, port } = await listener();
    env.defer(() => void server.close());
    env.defer(() => obj.close());
    const link = obj.program('test_connect4').attachCgroup(env.cgroup);
    env.defer(() => link.close());

    const records: { pid: number; ip: string; port: number; family: number; seq: number }[] = [];
    let waiting: (() => void) | undefined;
    const rb = new RingBuffer(obj.map('km_test_events'), (r) => {
      assert.equal(r.length, 16);
      records.push({
        pid: r.readUInt32LE(0),
        ip: [...r.subarray(4, 8)].join('.'),
        port: r.readUInt16LE(8),
        family: r.readUInt16LE(10),
        seq: r.readUInt32LE(12),
      });
      waiting?.();
    });
    env.defer(() => rb.close());
    // Records arrive from the event loop; the guard only stops a broken binding from hanging the suite.
    const nextRecord = (count: number) =>
      new Promise<void>((resolve, reject) => {
        if (records.length >= count) return resolve();
        const guard = setTimeout(
          () => reject(new Error(`no ring buffer record ${count} after 30 s`)),
          30_000,
        );
        waiting = () => {
          if (records.length >= count) {
            clearTimeout(guard);
            resolve();
          }
        };
      });

    const pid = await connectFrom(env.cgroup, port);
    await nextRecord(1);
    assert.deepEqual(records[0], { pid, ip: '127.0.0.1', port, family: 2, seq: 1 });

    // A connect from outside the cgroup is not seen; the next one from inside is record number 2.
    await new Promise<void>((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => s.end());
      s.on('close', () => resolve());
      s.on('error', reject);
    });
    const pid2 = await connectFrom(env.cgroup, port);
    await nextRecord(2);
    assert.equal(records.length, 2);
    assert.deepEqual(records[1], { pid: pid2, ip: '127.0.0.1', port, family: 2, seq: 2 });
  },
);

kernelTest(
  'a pinned link keeps the program running after its object is closed; detach stops it',
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    const linkPath = join(env.pinDir, 'test_connect4_link');
    const obj = openTestObject(env.pinDir);
    const link = obj.program('test_connect4').attachCgroup(env.cgroup, { pinPath: linkPath });
    assert.equal(link.pinned, linkPath);
    assert.equal(link.legacy, false);
    assert.ok(link.fd >= 0);
    link.close();
    obj.close();

    const counters = BpfMap.openPinned(join(env.pinDir, 'km_test_counters'));
    env.defer(() => counters.close());
    await connectFrom(env.cgroup, port);
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 2n, 'the pinned link still runs the program');

    const reopened = BpfLink.openPinned(linkPath);
    reopened.detach();
    reopened.unpin();
    reopened.close();
    assert.equal(existsSync(linkPath), false);
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 2n, 'a detached program no longer runs');
  },
);

kernelTest(
  'BPF_PROG_ATTACH fallback attaches and detaches; detachCgroupAll removes both kinds',
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    const obj = openTestObject(env.pinDir);
    env.defer(() => obj.close());
    const counters = obj.map('km_test_counters');
    const prog = obj.program('test_connect4');

    const legacy = prog.attachCgroup(env.cgroup, { forceProgAttach: true });
    env.defer(() => legacy.close());
    assert.equal(legacy.legacy, true);
    const pinErr = bpfErrorOf(() => legacy.pin(join(env.pinDir, 'nope')));
    assert.equal(pinErr.code, 'EOPNOTSUPP');
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 1n);
    legacy.detach();
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 1n, 'detached through BPF_PROG_DETACH');

    // One attachment of each kind: each connect runs the program twice until both are removed.
    const viaLink = prog.attachCgroup(env.cgroup);
    env.defer(() => viaLink.close());
    prog.attachCgroup(env.cgroup, { forceProgAttach: true }).close();
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 3n);
    // a name prefix that is not this program's leaves both attachments in place
    assert.equal(detachCgroupAll(env.cgroup, 'cgroup/connect4', 'km_'), 0);
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 5n);
    assert.equal(detachCgroupAll(env.cgroup, 'cgroup/connect4', 'test_'), 2);
    await connectFrom(env.cgroup, port);
    assert.equal(counter(counters, COUNTER_CONNECT), 5n);
  },
);

kernelTest(
  'an sk_msg program on a sockhash sees the messages of sockets sockops put there',
  async (_t, env) => {
    const { server, port, received } = await listener();
    env.defer(() => void server.close());
    const obj = openTestObject(env.pinDir);
    env.defer(() => obj.close());
    const counters = obj.map('km_test_counters');
    const sockhash = obj.map('km_test_sockhash');
    const skMsg = obj.program('test_sk_msg');
    assert.equal(skMsg.type, 'sk_msg');

    const sockops = obj.program('test_sockops').attachCgroup(env.cgroup);
    env.defer(() => sockops.close());
    skMsg.attachSockmap(sockhash);
    await connectFrom(env.cgroup, port, 'hello through sk_msg');
    assert.equal(
      counter(counters, COUNTER_SOCKHASH_INSERT),
      1n,
      "the client's socket went into the sockhash",
    );
    assert.ok(counter(counters, COUNTER_MSG) >= 1n, 'sk_msg ran on its sendmsg');
    assert.ok(received.includes('hello through sk_msg'), 'the bytes passed through unchanged');

    skMsg.detachSockmap(sockhash);
    const before = counter(counters, COUNTER_MSG);
    await connectFrom(env.cgroup, port, 'after detach');
    assert.equal(counter(counters, COUNTER_SOCKHASH_INSERT), 2n);
    assert.equal(counter(counters, COUNTER_MSG), before, 'no sk_msg once detached');
    assert.equal(bpfErrorOf(() => skMsg.detachSockmap(sockhash)).program, 'test_sk_msg');
  },
);

kernelTest('enableStats lets program.stats() count the runs of a program', async (_t, env) => {
  const { server, port } = await listener();
  env.defer(() => void server.close());
  const obj = openTestObject(env.pinDir);
  env.defer(() => obj.close());
  const prog = obj.program('test_connect4');
  assert.ok(prog.id > 0);
  const link = prog.attachCgroup(env.cgroup);
  env.defer(() => link.close());

  const stats = enableStats();
  try {
    const before = prog.stats();
    await connectFrom(env.cgroup, port);
    await connectFrom(env.cgroup, port);
    const after = prog.stats();
    assert.equal(after.runCount - before.runCount, 2n);
    assert.ok(after.runTimeNs > before.runTimeNs, 'run time accumulates while stats are enabled');
  } finally {
    stats.close();
  }
});

// No privileges needed: BTF is read from the ELF file.
void test('btfStruct reads a struct layout from the object and names what is missing', () => {
  const event = btfStruct(OBJECT, 'test_connect_event');
  assert.equal(event.size, 16);
  assert.deepEqual(
    event.members.map((m) => [m.name, m.offset, m.size]),
    [
      ['pid', 0, 4],
      ['dst_ip4', 4, 4],
      ['dst_port', 8, 2],
      ['family', 10, 2],
      ['seq', 12, 4],
    ],
  );
  const missing = bpfErrorOf(() => btfStruct(OBJECT, 'no_such_struct'));
  assert.deepEqual([missing.code, missing.object], ['ENOENT', 'native_test.bpf.o']);
  assert.match(missing.message, /no struct no_such_struct/);
});

void test('btfEnum reads an enum’s values from the object and names what is missing', () => {
  assert.deepEqual(btfEnum(OBJECT, 'test_counter').values, {
    COUNTER_CONNECT: 0,
    COUNTER_SOCKHASH_INSERT: 1,
    COUNTER_MSG: 2,
    COUNTER_MAX: 4,
  });
  const missing = bpfErrorOf(() => btfEnum(OBJECT, 'no_such_enum'));
  assert.deepEqual([missing.code, missing.object], ['ENOENT', 'native_test.bpf.o']);
  assert.match(missing.message, /no enum no_such_enum/);
});

kernelTest(
  'open’s check reads the object’s BTF before the load; a loaded object answers the same, undefined for what it lacks',
  (_t, env) => {
    const seen: unknown[] = [];
    const o = openTestObject(env.pinDir, {
      check: (btf) => {
        seen.push(
          btf.object,
          btf.struct('test_connect_event')?.size,
          btf.enum('test_counter')?.values.COUNTER_MAX,
        );
        seen.push(btf.struct('no_such_struct'), btf.enum('no_such_enum'));
      },
    });
    env.defer(() => o.close());
    assert.deepEqual(seen, ['native_test.bpf.o', 16, 4, undefined, undefined]);
    assert.equal(o.btfStruct('test_connect_event')?.members.length, 5);
    assert.equal(o.btfEnum('test_counter')?.values.COUNTER_MSG, 2);
    assert.equal(o.btfEnum('no_such_enum'), undefined);
    const refusedDir = join(env.pinDir, 'refused');
    assert.throws(
      () =>
        openTestObject(refusedDir, {
          check: () => {
            throw new Error('not this one');
          },
        }),
      /not this one/,
    );
    assert.deepEqual(readdirSync(refusedDir), [], 'a refused object pins nothing');
  },
);

kernelTest(
  'a pinned link updated in place runs the new object instance; BPF_F_REPLACE refuses a wrong expectation',
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    const linkPath = join(env.pinDir, 'test_connect4_link');
    const first = openTestObject(env.pinDir);
    const firstId = first.program('test_connect4').id;
    first.program('test_connect4').attachCgroup(env.cgroup, { pinPath: linkPath }).close();
    first.close();

    // the next run: maps reused from the pins, programs loaded afresh
    const second = openTestObject(env.pinDir);
    env.defer(() => second.close());
    const prog = second.program('test_connect4');
    assert.notEqual(prog.id, firstId);
    const link = BpfLink.openPinned(linkPath);
    env.defer(() => link.close());
    assert.equal(link.info().programId, firstId);
    assert.equal(link.info().type, 'cgroup');
    assert.equal(link.info().attachType, 'cgroup_inet4_connect');

    const wrong = bpfErrorOf(() => link.update(prog, { expectedProgramId: prog.id }));
    assert.deepEqual([wrong.code, wrong.syscall, wrong.link], ['EPERM', 'bpf_link_update', linkPath]);
    assert.equal(link.info().programId, firstId, 'a refused update changes nothing');

    const stats = enableStats();
    env.defer(() => stats.close());
    assert.equal(link.update(prog, { expectedProgramId: firstId }), firstId);
    assert.equal(link.info().programId, prog.id);
    assert.deepEqual(
      attachedPrograms(env.cgroup, 'cgroup/connect4').map((p) => [p.id, p.via]),
      [[prog.id, 'bpf_link']],
      'one program on the hook: the new one, through the same link',
    );
    const runs = prog.stats().runCount;
    const counters = second.map('km_test_counters');
    const connects = counter(counters, COUNTER_CONNECT);
    await connectFrom(env.cgroup, port);
    assert.equal(prog.stats().runCount - runs, 1n, 'the new instance counts the run');
    assert.equal(counter(counters, COUNTER_CONNECT) - connects, 1n, 'exactly one program ran');

    // a program of another type cannot take the link over
    const wrongType = bpfErrorOf(() => link.update(second.program('test_sockops')));
    assert.deepEqual([wrongType.code, wrongType.link], ['EINVAL', linkPath]);
  },
);

kernelTest(
  'attachOrUpdateCgroup: a new pinned link, then the next run updates it, and a defunct pin is replaced',
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    const linkPath = join(env.pinDir, 'link_connect4');
    const first = openTestObject(env.pinDir);
    const a = first.program('test_connect4').attachOrUpdateCgroup(env.cgroup, linkPath);
    assert.equal(a.via, 'bpf_link');
    assert.equal(a.replacedProgramId, undefined);
    const firstId = first.program('test_connect4').id;
    a.link.close();
    first.close();

    const second = openTestObject(env.pinDir);
    env.defer(() => second.close());
    const b = second.program('test_connect4').attachOrUpdateCgroup(env.cgroup, linkPath);
    env.defer(() => b.link.close());
    assert.equal(b.via, 'existing bpf_link');
    assert.equal(b.replacedProgramId, firstId);
    assert.equal(b.link.info().programId, second.program('test_connect4').id);
    await connectFrom(env.cgroup, port);
    assert.equal(counter(second.map('km_test_counters'), COUNTER_CONNECT), 1n);

    // A link whose cgroup is gone is defunct: the pin at that path is replaced by a new link.
    const gone = env.newCgroup('gone');
    const stalePath = join(env.pinDir, 'link_stale');
    second.program('test_connect4').attachCgroup(gone, { pinPath: stalePath }).close();
    removeCgroup(gone);
    const stale = BpfLink.openPinned(stalePath);
    // the kernel releases a removed cgroup's programs from a work queue, shortly after rmdir
    await eventually('the removed cgroup releases its link', () => stale.info().cgroupId === 0n);
    assert.equal(bpfErrorOf(() => stale.update(second.program('test_connect4'))).code, 'ENOLINK');
    stale.close();
    const other = env.newCgroup('other');
    const c = second.program('test_connect4').attachOrUpdateCgroup(other, stalePath);
    env.defer(() => c.link.close());
    assert.equal(c.via, 'bpf_link');
    assert.equal(c.link.info().cgroupId !== 0n, true);
    assert.equal(attachedPrograms(other, 'cgroup/connect4').length, 1);
  },
);

kernelTest(
  'a PROG_ATTACH program is replaced by the next run of the same name, never run twice; links are left alone',
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    env.defer(() => void detachCgroupAll(env.cgroup, 'cgroup/connect4', 'test_'));
    const first = openTestObject(env.pinDir);
    const firstId = first.program('test_connect4').id;
    first.program('test_connect4').attachCgroup(env.cgroup, { forceProgAttach: true }).close();
    first.close();
    // another tool's program of the same name through a bpf_link is not ours to replace
    const bystander = openTestObject(join(env.pinDir, 'bystander'));
    env.defer(() => bystander.close());
    const bystanderLink = bystander.program('test_connect4').attachCgroup(env.cgroup);
    env.defer(() => bystanderLink.close());

    const second = openTestObject(env.pinDir);
    env.defer(() => second.close());
    const prog = second.program('test_connect4');
    const link = prog.attachCgroup(env.cgroup, { forceProgAttach: true, replaceSameName: true });
    env.defer(() => link.close());
    assert.equal(link.legacy, true);
    assert.equal(link.replacedProgramId, firstId);
    const onHook = () =>
      attachedPrograms(env.cgroup, 'cgroup/connect4')
        .map((p) => [p.id, p.via])
        .sort((x, y) => Number(x[0]) - Number(y[0]));
    const expected = (id: number) =>
      [
        [bystander.program('test_connect4').id, 'bpf_link'],
        [id, 'prog_attach'],
      ].sort((x, y) => Number(x[0]) - Number(y[0]));
    assert.deepEqual(onHook(), expected(prog.id));
    assert.deepEqual(link.info(), {
      id: 0,
      type: 'prog_attach',
      programId: prog.id,
      attachType: 'cgroup_inet4_connect',
    });
    await connectFrom(env.cgroup, port);
    assert.equal(counter(second.map('km_test_counters'), COUNTER_CONNECT), 1n, 'only the new one ran');

    // update() swaps the program of a PROG_ATTACH attachment too
    const third = openTestObject(env.pinDir);
    env.defer(() => third.close());
    assert.equal(link.update(third.program('test_connect4')), prog.id);
    assert.deepEqual(onHook(), expected(third.program('test_connect4').id));
    assert.equal(link.info().programId, third.program('test_connect4').id);
  },
);

// The client keeps one connection open and writes a line whenever the test asks on stdin.
const HELD_CLIENT = `
const s = require('net').connect(Number(process.argv[1]), '127.0.0.1');
s.on('error', (e) => { console.error(e.message); process.exit(2); });
s.on('connect', () => console.log('connected'));
require('readline').createInterface({ input: process.stdin }).on('line', (l) => s.write(l + '\\n', () => console.log('sent')));
`;

kernelTest(
  "sk_msg attached to a pinned sockhash replaces the previous run's program; sockets already there keep theirs",
  async (_t, env) => {
    const { server, port } = await listener();
    env.defer(() => void server.close());
    const stats = enableStats();
    env.defer(() => stats.close());
    const sockopsPin = join(env.pinDir, 'link_sockops');
    // The old instance stays open only so the test can read its run count.
    const first = openTestObject(env.pinDir);
    env.defer(() => first.close());
    first.program('test_sockops').attachOrUpdateCgroup(env.cgroup, sockopsPin).link.close();
    const sockhash = first.map('km_test_sockhash');
    const oldMsg = first.program('test_sk_msg');
    oldMsg.attachSockmap(sockhash);
    assert.deepEqual(
      sockhash.attachedPrograms('sk_msg_verdict').map((p) => p.id),
      [oldMsg.id],
    );

    const held = spawnInCgroup(env.cgroup, process.execPath, ['-e', HELD_CLIENT, String(port)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    env.defer(() => void held.kill('SIGKILL'));
    const lines: string[] = [];
    held.stdout!.on('data', (d: Buffer) => lines.push(...d.toString().split('\n').filter(Boolean)));
    const sent = async (n: number) => eventually(`held client line ${n}`, () => lines.length >= n);
    await sent(1);
    held.stdin!.write('before\n');
    await sent(2);
    assert.equal(oldMsg.stats().runCount, 1n, 'the first run’s sk_msg saw the held socket');

    const second = openTestObject(env.pinDir);
    env.defer(() => second.close());
    const newMsg = second.program('test_sk_msg');
    second.program('test_sockops').attachOrUpdateCgroup(env.cgroup, sockopsPin).link.close();
    newMsg.attachSockmap(second.map('km_test_sockhash'));
    assert.deepEqual(
      second
        .map('km_test_sockhash')
        .attachedPrograms('sk_msg_verdict')
        .map((p) => p.id),
      [newMsg.id],
      'the map holds the new program only',
    );

    held.stdin!.write('after\n');
    await sent(3);
    assert.equal(oldMsg.stats().runCount, 2n, 'a socket added before keeps the program it was added with');
    assert.equal(newMsg.stats().runCount, 0n);
    await connectFrom(env.cgroup, port, 'new connection');
    assert.ok(newMsg.stats().runCount >= 1n, 'sockets added from now on run the new program');
    assert.equal(oldMsg.stats().runCount, 2n);
  },
);
