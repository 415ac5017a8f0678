#!/usr/bin/env node
// kernmesh's command line: one binary, one subcommand per job an operator has.
import { VERSION } from '../agent/agent.js';

type Command = (argv: string[], out: NodeJS.WritableStream) => Promise<number>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  run: {
    summary: 'run the agent: xDS from istiod (or a file) programmed into the kernel',
    load: async () => (await import('./run.js')).runRun,
  },
  check: {
    summary: 'analyse a config dump or resources file offline: what kernmesh accepts and refuses',
    load: async () => (await import('./check.js')).runCheck,
  },
  status: {
    summary: "a running agent's xDS sync, services, attach points and last errors (via its admin endpoint)",
    load: async () => (await import('./status.js')).runStatus,
  },
  maps: {
    summary: 'the kernel state read from pinned maps (works while the agent is down)',
    load: async () => (await import('./maps.js')).runMaps,
  },
  demo: {
    summary: 'a self-contained demo: backends, VIPs, the agent and connections in a cgroup of its own',
    load: async () => (await import('./demo.js')).runDemo,
  },
  accel: {
    summary: "a running agent's acceleration: status, on, off, rules [FILE] (via its control socket)",
    load: async () => (await import('./accel.js')).runAccel,
  },
  capture: {
    summary: 'capture the bytes the sockmap redirects (tcpdump cannot see them) as pcap',
    load: async () => (await import('./capture.js')).runCapture,
  },
  cleanup: {
    summary: 'detach programs and unpin everything under --bpffs DIR',
    load: async () => (await import('./cleanup.js')).runCleanup,
  },
};

function usage(): string {
  return [
    `kernmesh ${VERSION}: Istio's L4 data plane in the kernel (eBPF), without sidecars`,
    '',
    'usage: kernmesh <command> [flags]',
    '',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`),
    '',
    "`kernmesh <command> --help` lists a command's flags.",
  ].join('\n');
}

export async function main(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    out.write(usage() + '\n');
    return name ? 0 : 2;
  }
  if (name === '--version' || name === 'version') {
    out.write(`kernmesh ${VERSION}\n`);
    return 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`kernmesh: unknown command "${name}"\n\n${usage()}\n`);
    return 2;
  }
  return (await cmd.load())(rest, out);
}

// Run only when executed, not when imported by tests.
const invoked = process.argv[1] ?? '';
if (/(^|\/)(main\.(ts|js)|kernmesh)$/.test(invoked)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`kernmesh: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
