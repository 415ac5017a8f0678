// kernmesh's BPF objects for every stage that loads one (routing, connection closing, telemetry,
// acceleration, authorization): where the built object is, loading it with its spec checked, and
// attaching its cgroup programs through links pinned by one naming rule.
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { BpfLink, BpfObject, type OpenOptions } from './index.js';
import { checkSpec, type ObjectSpec } from './spec.js';

/** bpf/<name> (e.g. 'route.bpf.o'), found above this file: it runs as native/ under tsx and as dist/native/. */
export function bpfObjectPath(name: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, 'bpf', name);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`bpf/${name} not found above ${fileURLToPath(import.meta.url)}: run \`npm run build:bpf\``);
}

/**
 * Loads an object after checking `spec` against its BTF: an object whose structs or constants
 * differ from what the agent encodes is refused, each difference named, before it reaches the kernel.
 */
export function openObject(path: string, spec: ObjectSpec, opts: Omit<OpenOptions, 'check'>): BpfObject {
  return BpfObject.open(path, { ...opts, check: checkSpec(spec) });
}

/** Where a program's link to a cgroup is pinned: link_<cgroup inode>_<program> (the inode names it uniquely). */
export function cgroupLinkPath(pinDir: string, cgroup: string, program: string): string {
  return join(pinDir, `link_${statSync(cgroup).ino}_${program}`);
}

/** The programs attached to one cgroup; detach() stops them for new and open sockets alike. */
export interface CgroupAttachment {
  cgroup: string;
  links: BpfLink[];
  /** Per link: 'bpf_link', 'existing bpf_link' (a previous run's, updated to this program), 'prog_attach'... */
  via: string[];
  /** Per link: the program the hook ran before (a previous run's instance), when there was one. */
  replacedProgramIds: (number | undefined)[];
  detach(): void;
}

/**
 * Attaches programs of an object to a cgroup with bpf_links, pinned under linkPinDir when given
 * (cgroupLinkPath). A link already pinned there (a previous run's) is updated in place to run this
 * object's program, so a restarted or upgraded agent runs its own instances without a moment
 * unattached. On a failure part way, the links this call created are detached and unpinned; those
 * it found pinned keep running (traffic keeps its last programming, as after SIGTERM).
 */
export function attachPrograms(
  object: BpfObject,
  programs: readonly string[],
  cgroup: string,
  linkPinDir?: string,
): CgroupAttachment {
  const links: BpfLink[] = [];
  const via: string[] = [];
  const replacedProgramIds: (number | undefined)[] = [];
  const detach = (): void => {
    for (const l of links) {
      if (l.pinned) l.unpin();
      l.detach();
      l.close();
    }
  };
  const undo = (): void => {
    links.forEach((l, i) => {
      if (via[i] === 'existing bpf_link') {
        l.close();
        return;
      }
      if (l.pinned) l.unpin();
      l.detach();
      l.close();
    });
  };
  try {
    for (const name of programs) {
      const program = object.program(name);
      if (linkPinDir) {
        const r = program.attachOrUpdateCgroup(cgroup, cgroupLinkPath(linkPinDir, cgroup, name));
        links.push(r.link);
        via.push(r.via);
        replacedProgramIds.push(r.replacedProgramId);
      } else {
        const link = program.attachCgroup(cgroup);
        links.push(link);
        via.push(link.legacy ? 'prog_attach' : 'bpf_link');
        replacedProgramIds.push(undefined);
      }
    }
  } catch (e) {
    undo();
    throw new Error(`attach ${programs.join(', ')} to cgroup ${cgroup}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return { cgroup, links, via, replacedProgramIds, detach };
}
