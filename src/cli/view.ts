// What the commands that show state (status, maps, demo) share: their flags and the plain-text
// table they print, so all of them read alike.

/** Columns padded to the widest cell, two spaces apart, no trailing blanks; one line per row. */
export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export type ViewFlags = { help: true } | { unknown: string } | { value: string; json: boolean };

/**
 * `[--FLAG VALUE | --FLAG=VALUE] [--json] [--help]`, read left to right: the first --help or
 * unknown flag decides, as it would in a loop that stops there.
 */
export function parseViewFlags(argv: string[], flag: string, value: string): ViewFlags {
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') return { help: true };
    else if (a === '--json') json = true;
    else if (a === flag) value = argv[++i] ?? '';
    else if (a.startsWith(`${flag}=`)) value = a.slice(flag.length + 1);
    else return { unknown: a };
  }
  return { value, json };
}
