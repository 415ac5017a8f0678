// `kernmesh accel status|on|off|rules [FILE]`: acceleration of a running agent, through its control
// socket. A rules file is validated by the agent before anything changes; a bad one is refused with
// its line and column and the rules in force stay.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

import type { AccelStatus } from '../accel/control.js';
import { ControlError, controlRequest, DEFAULT_CONTROL_SOCKET } from '../control/client.js';
import type { ControlMessage } from '../control/protocol.js';
import { table } from './view.js';

const HELP = `usage: kernmesh accel status|on|off|rules [FILE] [--control-socket PATH] [--json]

  status        on or off, the rules in force with their lines and what each decided, the counters
  on | off      new local connections are (not) accelerated from now on; open ones are never broken
  rules         the rules in force; with FILE, load it (validated first: a bad file changes nothing)

Talks to the agent's control socket (default ${DEFAULT_CONTROL_SOCKET}, or KERNMESH_CONTROL_SOCKET).
`;

const COUNTERS: [string, string][] = [
  ['socketsInserted', 'sockets inserted'],
  ['socketsRefused', 'connections refused by the rules'],
  ['messagesRedirected', 'messages redirected'],
  ['bytesRedirected', 'bytes redirected'],
  ['messagesFallback', 'messages through the stack'],
  ['redirectFailures', 'redirect failures'],
  ['insertFailures', 'insert failures'],
];

export function renderAccelStatus(s: AccelStatus): string {
  const out = [`acceleration: ${s.enabled ? 'on' : 'off'}`];
  out.push(`rules: ${s.source}${s.applied_at ? ` (applied ${s.applied_at})` : ''}`);
  if (s.rules.length === 0) out.push('  no rules: every local connection is accelerated');
  else
    out.push(
      table([
        ['LINE', 'RULE', 'MATCHED', 'ACCELERATED', 'REFUSED'],
        ...s.rules.map((r) => [String(r.line), r.rule, r.matched, r.accelerated, r.refused]),
      ]).trimEnd(),
    );
  out.push(`counters: ${COUNTERS.map(([k, label]) => `${label} ${s.counters[k] ?? '0'}`).join(', ')}`);
  return out.join('\n') + '\n';
}

export async function runAccel(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  let socket = process.env.KERNMESH_CONTROL_SOCKET ?? DEFAULT_CONTROL_SOCKET;
  let json = false;
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      out.write(HELP);
      return 0;
    } else if (a === '--json') json = true;
    else if (a === '--control-socket') socket = argv[++i] ?? '';
    else if (a.startsWith('--control-socket=')) socket = a.slice('--control-socket='.length);
    else if (a.startsWith('-')) {
      process.stderr.write(`kernmesh accel: unknown flag ${a}\n${HELP}`);
      return 2;
    } else words.push(a);
  }
  const [verb, file, extra] = words;
  let request: ControlMessage;
  switch (verb) {
    case 'status':
      request = { op: 'accel.status' };
      break;
    case 'on':
    case 'off':
      request = { op: 'accel.set', enabled: verb === 'on' };
      break;
    case 'rules':
      if (file === undefined) {
        request = { op: 'accel.status' };
        break;
      }
      try {
        request = { op: 'accel.rules', text: readFileSync(file, 'utf8'), source: resolve(file) };
      } catch (e) {
        process.stderr.write(`kernmesh accel rules: cannot read ${file}: ${(e as Error).message}\n`);
        return 1;
      }
      break;
    default:
      process.stderr.write(`kernmesh accel: expected status, on, off or rules\n${HELP}`);
      return 2;
  }
  if (extra !== undefined || (file !== undefined && verb !== 'rules')) {
    process.stderr.write(`kernmesh accel: unexpected argument ${extra ?? file}\n${HELP}`);
    return 2;
  }
  try {
    const reply = await controlRequest(socket, request);
    const status = reply.accel as AccelStatus;
    out.write(json ? JSON.stringify(status, null, 2) + '\n' : renderAccelStatus(status));
    return 0;
  } catch (e) {
    const msg = e instanceof ControlError ? e.message : (e as Error).message;
    process.stderr.write(`kernmesh accel: ${msg}\n`);
    return 1;
  }
}
