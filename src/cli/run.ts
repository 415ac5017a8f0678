// `kernmesh run`: load the configuration, start the agent and its admin endpoint, and stop on
// SIGTERM/SIGINT leaving pinned state in place (traffic keeps its last programming).
import { createWriteStream } from 'node:fs';
import pino from 'pino';
import { startAgent } from '../agent/start.js';
import { ConfigError, loadConfig, optionsHelp } from '../config/config.js';

const HELP = `usage: kernmesh run [flags]

Runs the node agent: xDS from istiod (--xds-address) or a file (--xds-file) is translated and
programmed into eBPF maps; programs attach to the cgroups given with --cgroup. Flags win over
KERNMESH_* environment variables, which win over the --config YAML file (keys are flag names).

flags:
${optionsHelp()}
`;

export async function runRun(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    out.write(HELP);
    return 0;
  }
  let config;
  try {
    config = loadConfig(argv);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`kernmesh run: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  const log = pino({ level: config.logLevel, base: { component: 'kernmesh' } });
  const accessLog =
    config.accessLog === undefined
      ? undefined
      : config.accessLog === 'stdout'
        ? process.stdout
        : createWriteStream(config.accessLog, { flags: 'a' });
  let running;
  try {
    running = await startAgent(config, log, { accessLog });
  } catch (e) {
    log.fatal({ err: e }, 'kernmesh could not start');
    process.stderr.write(`kernmesh run: ${(e as Error).message}\n`);
    return 1;
  }
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal }, 'stopping');
  await running.stop();
  log.info(
    { bpffs: config.bpffs },
    'stopped: programs stay attached and maps pinned, traffic keeps the last programming (kernmesh cleanup removes them)',
  );
  return 0;
}
