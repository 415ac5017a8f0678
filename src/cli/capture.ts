// `kernmesh capture`: what tcpdump cannot see. Bytes redirected through the sockmap skip the TCP/IP
// stack; the running agent copies the head of each such message and this command writes them as a
// pcap stream (real addresses, ports and stream offsets), or one line per message without -w.
import { createWriteStream, type WriteStream } from 'node:fs';

import { decodeCaptureRecord } from '../accel/codec.js';
import { CAPTURE_DEFAULTS } from '../accel/capture.js';
import { PcapWriter, pcapHeader } from '../accel/pcap.js';
import { ControlError, controlCapture, DEFAULT_CONTROL_SOCKET } from '../control/client.js';

const HELP = `usage: kernmesh capture [--service S] [--pod P] [--port N] [--ip CIDR] [--snaplen N] [--count N]
                        [--max-rate N] [--max-bytes N] [-w FILE|-] [--control-socket PATH]

Copies, for accelerated connections that match every filter given, the first --snaplen bytes
(default ${CAPTURE_DEFAULTS.snaplen}) of each message the sockmap redirects, and writes them as pcap
(-w FILE, or -w - for stdout) that Wireshark and tshark follow; without -w, one line per message.
Stops after --count messages or at Ctrl-C, then prints what was captured and lost.

  --service S    a service by host, short name or cluster name: connections to its endpoints
  --pod P        a pod (name or namespace/name) the agent knows: connections from or to its addresses
  --port N       either end's port
  --ip CIDR      either end's address
  --max-rate N   messages per second at most (default ${CAPTURE_DEFAULTS.maxMessagesPerSecond}); more are lost and counted
  --max-bytes N  captured bytes per second at most (default ${CAPTURE_DEFAULTS.maxBytesPerSecond})

Talks to the agent's control socket (default ${DEFAULT_CONTROL_SOCKET}, or KERNMESH_CONTROL_SOCKET).
`;

const VALUE_FLAGS: Record<string, string> = {
  '--service': 'service',
  '--pod': 'pod',
  '--port': 'port',
  '--ip': 'ip',
  '--snaplen': 'snaplen',
  '--count': 'count',
  '--max-rate': 'maxMessagesPerSecond',
  '--max-bytes': 'maxBytesPerSecond',
  '-w': 'write',
  '--control-socket': 'socket',
};

export async function runCapture(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const opts: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    if (a === '--help' || a === '-h') {
      out.write(HELP);
      return 0;
    }
    let value: string | undefined;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      value = a.slice(eq + 1);
      a = a.slice(0, eq);
    }
    const key = VALUE_FLAGS[a];
    if (!key) {
      process.stderr.write(`kernmesh capture: unknown argument ${a}\n${HELP}`);
      return 2;
    }
    value ??= argv[++i];
    if (value === undefined) {
      process.stderr.write(`kernmesh capture: ${a} needs a value\n`);
      return 2;
    }
    opts[key] = value;
  }
  const socket = opts.socket ?? process.env.KERNMESH_CONTROL_SOCKET ?? DEFAULT_CONTROL_SOCKET;
  const request: Record<string, unknown> = { op: 'capture' };
  for (const k of ['service', 'pod', 'ip']) if (opts[k] !== undefined) request[k] = opts[k];
  for (const k of ['port', 'snaplen', 'count', 'maxMessagesPerSecond', 'maxBytesPerSecond'])
    if (opts[k] !== undefined) request[k] = Number(opts[k]);

  const target = opts.write;
  let sink: NodeJS.WritableStream | undefined;
  let file: WriteStream | undefined;
  if (target === '-') sink = out;
  else if (target !== undefined) sink = file = createWriteStream(target);
  const state: { writer?: PcapWriter } = {};
  const lines = target === undefined;
  let toUnix = 0n;

  // Records can arrive in the same read as the first reply: held until the clock is known.
  const early: Buffer[] = [];
  let onRecord = (raw: Buffer): void => void early.push(raw);
  const handle = (raw: Buffer): void => {
    const r = decodeCaptureRecord(raw);
    if (lines) {
      const ts = new Date(Number((r.timestampNs + toUnix) / 1_000_000n)).toISOString();
      const short = r.data.length < r.size ? ` (first ${r.data.length})` : '';
      const at = (a: string, p: number): string => (a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);
      out.write(
        `${ts} ${at(r.source, r.sourcePort)} > ${at(r.destination, r.destinationPort)}: ${r.size} bytes${short}, offset ${r.offset}\n`,
      );
      return;
    }
    for (const p of state.writer!.packets(r)) sink!.write(p);
  };
  let stream;
  try {
    stream = await controlCapture(socket, request, (raw) => onRecord(raw));
  } catch (e) {
    file?.close();
    process.stderr.write(
      `kernmesh capture: ${e instanceof ControlError ? e.message : (e as Error).message}\n`,
    );
    return 1;
  }
  const clock = stream.started.clock as { monotonic_ns: string; unix_ns: string };
  toUnix = BigInt(clock.unix_ns) - BigInt(clock.monotonic_ns);
  state.writer = new PcapWriter(toUnix);
  sink?.write(pcapHeader(Number(stream.started.snaplen)));
  for (const raw of early.splice(0)) handle(raw);
  onRecord = handle;
  process.stderr.write(
    `kernmesh capture: ${String(stream.started.filter)}, snaplen ${String(stream.started.snaplen)}; Ctrl-C stops\n`,
  );
  const stop = (): void => stream.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const end = await stream.done;
    const lost = end.lost as Record<string, number>;
    const lostTotal = Object.values(lost).reduce((a, b) => a + b, 0);
    process.stderr.write(
      `kernmesh capture: ${String(end.captured)} messages captured (${String(end.captured_bytes)} bytes), ${String(end.delivered)} written; ` +
        `lost ${lostTotal} (rate cap ${lost.rate}, bytes cap ${lost.bytes}, ring full ${lost.ring}, copy failed ${lost.pull})\n`,
    );
    return 0;
  } catch (e) {
    process.stderr.write(`kernmesh capture: ${(e as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    if (file) await new Promise<void>((resolve) => file.end(() => resolve()));
  }
}
