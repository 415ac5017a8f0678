// What every benchmark prints the same way: medians, and the machine the numbers came from.
import { readFileSync } from 'node:fs';
import { cpus, release } from 'node:os';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** CPU model, cores, kernel and Node version. */
export function machine(): string {
  const model =
    /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? '?';
  return `${model}, ${cpus().length} cores, Linux ${release()}, Node ${process.version}`;
}
