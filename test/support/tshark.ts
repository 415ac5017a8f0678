// Debian's tshark (package tshark; scripts/setup.sh installs it) as the reference reader of capture
// files: what it reassembles from a pcap is what Wireshark users would see.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

function tshark(args: string[]): string {
  const r = spawnSync('tshark', args, { encoding: 'utf8' });
  if (r.error)
    throw new Error(
      `tshark not runnable (Debian package tshark; scripts/setup.sh installs it): ${r.error.message}`,
      {
        cause: r.error,
      },
    );
  assert.equal(r.status, 0, `tshark ${args.join(' ')} failed:\n${r.stderr}`);
  return r.stdout;
}

export interface FollowedStream {
  /** "address:port" as tshark prints the two nodes (IPv6 in brackets). */
  nodes: [string, string];
  /** Bytes each node sent, reassembled by tshark. */
  sent: [Buffer, Buffer];
}

/** `tshark -r FILE -q -z follow,tcp,raw,N`: the reassembled bytes of stream N, each direction. */
export function followTcp(file: string, stream = 0): FollowedStream {
  const out = tshark(['-r', file, '-q', '-z', `follow,tcp,raw,${stream}`]);
  const nodes: string[] = [];
  const hex: [string[], string[]] = [[], []];
  let body = false;
  for (const line of out.split('\n')) {
    const node = /^Node ([01]): (.*)$/.exec(line);
    if (node) {
      nodes[Number(node[1])] = node[2]!;
      body = node[1] === '1';
      continue;
    }
    if (!body || line.startsWith('====')) {
      if (line.startsWith('====') && body) body = false;
      continue;
    }
    if (line.startsWith('\t')) hex[1].push(line.trim());
    else if (line.trim()) hex[0].push(line.trim());
  }
  assert.equal(nodes.length, 2, `tshark found no stream ${stream}:\n${out}`);
  return {
    nodes: [nodes[0]!, nodes[1]!],
    sent: [Buffer.from(hex[0].join(''), 'hex'), Buffer.from(hex[1].join(''), 'hex')],
  };
}

/** One row of fields per packet (`tshark -T fields -e ...`). */
export function packetFields(file: string, fields: string[]): string[][] {
  const out = tshark(['-r', file, '-T', 'fields', ...fields.flatMap((f) => ['-e', f])]);
  return out
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split('\t'));
}
