// Typed front of the libbpf addon (native/src/). Everything here is synchronous and runs on the JS
// thread, as libbpf does; the ring buffer is consumed from Node's own event loop.
import { existsSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';

export type UpdateFlag = 'any' | 'noexist' | 'exist';

/** An error from libbpf or bpf(2): `<syscall> <name>: <CODE> (<description>)[: detail]`. */
export interface BpfError extends Error {
  code: string;
  errno: number;
  syscall: string;
  map?: string;
  program?: string;
  object?: string;
  link?: string;
  path?: string;
}

export function isBpfError(e: unknown): e is BpfError {
  return e instanceof Error && typeof (e as Partial<BpfError>).errno === 'number' && 'syscall' in e;
}

export interface OpenOptions {
  /** Maps are pinned here by name; a compatible map already pinned there is reused (restart keeps state). */
  pinDir: string;
  /** Per map name, set before load (map sizes from flags). */
  maxEntries?: Record<string, number>;
  /** libbpf's log (debug/info/warn) is routed here; without it libbpf's warnings go to stderr. */
  log?: Logger;
  /**
   * Runs once the object is read and before anything reaches the kernel, with its BTF: throwing
   * refuses the object (nothing is loaded or pinned). See spec.ts's checkSpec.
   */
  check?: (btf: BtfReader) => void;
}

/** An object's BTF: its structs and enums by name (undefined for one it does not have). */
export interface BtfReader {
  /** The object's file name, for messages. */
  readonly object: string;
  struct(name: string): BtfStruct | undefined;
  enum(name: string): BtfEnum | undefined;
}

/** A struct as the compiler laid it out, from an object's BTF. Offsets and sizes in bytes. */
export interface BtfStruct {
  name: string;
  size: number;
  members: { name: string; offset: number; bitOffset: number; bitSize: number; size: number | null }[];
}

/** An enum as an object's BTF declares it: its values by name. */
export interface BtfEnum {
  name: string;
  size: number;
  values: Record<string, number>;
}

/** What the kernel says about a link (bpf_link_info); a PROG_ATTACH attachment has id 0. */
export interface LinkInfo {
  id: number;
  /** 'cgroup', 'prog_attach' (the fallback), ... */
  type: string;
  /** The program the link runs now. */
  programId: number;
  /** Cgroup links: the cgroup directory's inode; 0 once the cgroup is gone (the link is defunct). */
  cgroupId?: bigint;
  attachType?: string;
}

/** A program attached to a cgroup or sockmap, as BPF_PROG_QUERY lists it. */
export interface AttachedProgram {
  id: number;
  /** The kernel's name: the first 15 characters of the C function name. */
  name?: string;
  /** Cgroups only: whether it came through a bpf_link or BPF_PROG_ATTACH. */
  via?: 'bpf_link' | 'prog_attach';
}

// ---- the addon's raw surface ----

interface NativeMapHandle {
  readonly name: string;
  readonly type: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly fd: number;
  readonly supportsBatch: boolean;
  lookup(key: Buffer): Buffer | undefined;
  update(key: Buffer, value: Buffer, flag?: UpdateFlag): void;
  delete(key: Buffer): boolean;
  keys(): Buffer[];
  lookupBatch(batchSize?: number): [Buffer, Buffer][];
  updateBatch(keys: Buffer[], values: Buffer[], flag?: UpdateFlag): void;
  deleteBatch(keys: Buffer[]): number;
  pin(path: string): void;
  close(): void;
}
interface NativeLinkHandle {
  readonly fd: number;
  readonly pinned: string | undefined;
  readonly legacy: boolean;
  readonly replacedProgramId: number | undefined;
  update(programFd: number, programName: string, expectedProgramId?: number): number;
  info(): LinkInfo;
  pin(path: string): void;
  unpin(): void;
  detach(): void;
  close(): void;
}
interface NativeProgramHandle {
  readonly name: string;
  readonly type: string;
  readonly attachType: string;
  readonly fd: number;
  readonly id: number;
  attachCgroup(
    cgroupPath: string,
    pinPath?: string,
    forceProgAttach?: boolean,
    replaceSameName?: boolean,
  ): NativeLinkHandle;
  attachSockmap(map: NativeMapHandle): void;
  detachSockmap(map: NativeMapHandle): void;
  attachNetns(netnsPath: string, pinPath?: string): NativeLinkHandle;
  iterate(map?: NativeMapHandle | null, netnsPath?: string): Buffer;
  stats(): { runTimeNs: bigint; runCount: bigint };
}
interface NativeObjectHandle {
  readonly name: string;
  maps(): NativeMapHandle[];
  programs(): NativeProgramHandle[];
  btfType(kind: 'struct', name: string): BtfStruct | null;
  btfType(kind: 'enum', name: string): BtfEnum | null;
  close(): void;
}
interface NativeRingBufferHandle {
  close(): void;
  consume(): number;
  unref(): void;
}
interface Addon {
  NativeObject: {
    open(
      path: string,
      pinDir: string,
      maxEntries: Record<string, number>,
      beforeLoad?: (btfType: (kind: 'struct' | 'enum', name: string) => BtfStruct | BtfEnum | null) => void,
    ): NativeObjectHandle;
  };
  NativeMap: { openPinned(path: string, name?: string): NativeMapHandle };
  NativeLink: { openPinned(path: string): NativeLinkHandle };
  NativeRingBuffer: new (map: NativeMapHandle, onRecord: (record: Buffer) => void) => NativeRingBufferHandle;
  setLogSink(sink: ((level: 'warn' | 'info' | 'debug', message: string) => void) | undefined): void;
  enableStats(): number;
  closeFd(fd: number): void;
  possibleCpus(): number;
  detachCgroupAll(cgroupPath: string, attachType: string, namePrefix?: string): number;
  attachedPrograms(target: string | NativeMapHandle, attachType: string): AttachedProgram[];
  btfStruct(objectPath: string, name: string): BtfStruct;
  btfEnum(objectPath: string, name: string): BtfEnum;
}

const ADDON = join('native', 'build', 'Release', 'kernmesh_native.node');

// This file runs as native/index.ts (tsx) and as dist/native/index.js (tsc): find the repo root
// by walking up to the directory that holds the built addon.
function findAddon(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, ADDON);
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`${ADDON} not found above ${fileURLToPath(import.meta.url)}: run \`npm run build:native\``);
}

const addon = createRequire(import.meta.url)(findAddon()) as Addon;

type LogSink = (level: 'warn' | 'info' | 'debug', message: string) => void;

// The sink outside BpfObject.open's own `log`; undefined means libbpf's warnings go to stderr.
let defaultSink: LogSink | undefined;

function sinkFor(log: Logger): LogSink {
  return (level, message) => {
    log[level]({ libbpf: true }, message);
  };
}

// ---- the API ----

export class BpfMap {
  /** @internal */
  constructor(readonly handle: NativeMapHandle) {}

  /** Opens a map pinned on bpffs. The kernel keeps 15 characters of a name: pass the full one if known. */
  static openPinned(path: string, name?: string): BpfMap {
    return new BpfMap(addon.NativeMap.openPinned(path, name));
  }

  get name(): string {
    return this.handle.name;
  }
  get type(): string {
    return this.handle.type;
  }
  get keySize(): number {
    return this.handle.keySize;
  }
  get valueSize(): number {
    return this.handle.valueSize;
  }
  get maxEntries(): number {
    return this.handle.maxEntries;
  }
  get fd(): number {
    return this.handle.fd;
  }
  /** Whether the kernel implements the batch commands for this map type (hash and array families). */
  get supportsBatch(): boolean {
    return this.handle.supportsBatch;
  }

  /** A miss is undefined. Per-CPU maps give possibleCpus() * round_up(valueSize, 8) bytes. */
  lookup(key: Buffer): Buffer | undefined {
    return this.handle.lookup(key);
  }
  update(key: Buffer, value: Buffer, flag: UpdateFlag = 'any'): void {
    this.handle.update(key, value, flag);
  }
  /** False when the key was absent. */
  delete(key: Buffer): boolean {
    return this.handle.delete(key);
  }
  keys(): Buffer[] {
    return this.handle.keys();
  }
  /** Key/value pairs; a key deleted between listing and lookup is left out. */
  entries(): [Buffer, Buffer][] {
    const out: [Buffer, Buffer][] = [];
    for (const k of this.handle.keys()) {
      const v = this.handle.lookup(k);
      if (v) out.push([k, v]);
    }
    return out;
  }
  /** Every entry through BPF_MAP_LOOKUP_BATCH, batchSize entries per call. EOPNOTSUPP where unsupported. */
  lookupBatch(batchSize?: number): [Buffer, Buffer][] {
    return this.handle.lookupBatch(batchSize);
  }
  /** One BPF_MAP_UPDATE_BATCH; on failure the error's message says how many entries were written. */
  updateBatch(keys: Buffer[], values: Buffer[], flag: UpdateFlag = 'any'): void {
    this.handle.updateBatch(keys, values, flag);
  }
  /** One BPF_MAP_DELETE_BATCH; an absent key fails it with ENOENT after the keys before it went. */
  deleteBatch(keys: Buffer[]): number {
    return this.handle.deleteBatch(keys);
  }
  pin(path: string): void {
    this.handle.pin(path);
  }
  /** The programs attached to this sockmap/sockhash for one attach type (e.g. 'sk_msg_verdict'). */
  attachedPrograms(attachType: string): AttachedProgram[] {
    return addon.attachedPrograms(this.handle, attachType);
  }
  /** Closes a pinned map's fd; a map of a BpfObject is released with the object. */
  close(): void {
    this.handle.close();
  }
}

export class BpfLink {
  /** @internal */
  constructor(private readonly handle: NativeLinkHandle) {}

  static openPinned(path: string): BpfLink {
    return new BpfLink(addon.NativeLink.openPinned(path));
  }

  /** -1 for a PROG_ATTACH attachment, which has no link fd. */
  get fd(): number {
    return this.handle.fd;
  }
  get pinned(): string | undefined {
    return this.handle.pinned;
  }
  /** True when the kernel had no cgroup bpf_link and the program went in through BPF_PROG_ATTACH. */
  get legacy(): boolean {
    return this.handle.legacy;
  }
  /** For a PROG_ATTACH attachment that took over a previous run's program (replaceSameName): its id. */
  get replacedProgramId(): number | undefined {
    return this.handle.replacedProgramId;
  }
  info(): LinkInfo {
    return this.handle.info();
  }
  /**
   * Makes the link run `program` from now on, atomically (BPF_LINK_UPDATE: no moment without a
   * program). With expectedProgramId, only if that is the program it runs now (BPF_F_REPLACE), else
   * EPERM. A PROG_ATTACH attachment swaps its program with BPF_F_REPLACE (or attach-then-detach
   * before 5.6). A defunct link (its cgroup gone) fails with ENOLINK. Returns the previous program's id.
   */
  update(program: BpfProgram, opts: { expectedProgramId?: number } = {}): number {
    return this.handle.update(program.fd, program.name, opts.expectedProgramId);
  }
  pin(path: string): void {
    this.handle.pin(path);
  }
  unpin(): void {
    this.handle.unpin();
  }
  /** The program stops running (bpf_link_detach, or BPF_PROG_DETACH for a legacy attachment). */
  detach(): void {
    this.handle.detach();
  }
  /** Closes our fd; a pinned link keeps the program attached, an unpinned one is detached by the kernel. */
  close(): void {
    this.handle.close();
  }
}

export interface AttachCgroupOptions {
  /** Pins the link here, so the program stays attached after this process exits. */
  pinPath?: string;
  /** Skips bpf_link and uses BPF_PROG_ATTACH (BPF_F_ALLOW_MULTI), as on kernels before 5.7. */
  forceProgAttach?: boolean;
  /**
   * PROG_ATTACH only (a link is found again through its pin): a program of the same name already
   * attached there through PROG_ATTACH, a previous run's, is replaced in place instead of running twice.
   */
  replaceSameName?: boolean;
}

/** How attachOrUpdateCgroup() attached a program. */
export interface CgroupAttachResult {
  link: BpfLink;
  /**
   * 'bpf_link' (new, pinned), 'existing bpf_link' (a previous run's pinned link, updated to run this
   * program), 'prog_attach' (the fallback; 'replaced prog_attach' when it took over a previous run's).
   */
  via: 'bpf_link' | 'existing bpf_link' | 'prog_attach' | 'replaced prog_attach';
  /** The program the attachment ran before (a previous run's instance). */
  replacedProgramId?: number;
}

export class BpfProgram {
  /** @internal */
  constructor(readonly handle: NativeProgramHandle) {}

  /** The C function name. */
  get name(): string {
    return this.handle.name;
  }
  get type(): string {
    return this.handle.type;
  }
  /** From the SEC() name, e.g. 'cgroup_inet4_connect' for SEC("cgroup/connect4"). */
  get attachType(): string {
    return this.handle.attachType;
  }
  get fd(): number {
    return this.handle.fd;
  }
  get id(): number {
    return this.handle.id;
  }
  /** bpf_link to the cgroup v2 directory; BPF_PROG_ATTACH only where the kernel lacks cgroup links. */
  attachCgroup(cgroupPath: string, opts: AttachCgroupOptions = {}): BpfLink {
    return new BpfLink(
      this.handle.attachCgroup(
        cgroupPath,
        opts.pinPath,
        opts.forceProgAttach ?? false,
        opts.replaceSameName ?? false,
      ),
    );
  }
  /**
   * Attaches through the link pinned at pinPath. A link already pinned there (a previous run's) is
   * updated in place to run this program, so a restarted or upgraded agent runs its own instances
   * without a moment unattached; a defunct one (its cgroup gone) is unpinned and replaced. Where
   * the kernel has no cgroup links, a previous run's PROG_ATTACH program of this name is replaced.
   */
  attachOrUpdateCgroup(cgroupPath: string, pinPath: string): CgroupAttachResult {
    if (existsSync(pinPath)) {
      const link = BpfLink.openPinned(pinPath);
      try {
        return { link, via: 'existing bpf_link', replacedProgramId: link.update(this) };
      } catch (e) {
        if (!isBpfError(e) || e.code !== 'ENOLINK') {
          link.close();
          throw e;
        }
        link.unpin();
        link.close();
      }
    }
    const link = this.attachCgroup(cgroupPath, { pinPath, replaceSameName: true });
    if (!link.legacy) return { link, via: 'bpf_link' };
    const replaced = link.replacedProgramId;
    return replaced === undefined
      ? { link, via: 'prog_attach' }
      : { link, via: 'replaced prog_attach', replacedProgramId: replaced };
  }
  /**
   * Attaches an sk_msg / sk_skb program to a sockmap or sockhash. The map holds one program per
   * attach type: attaching replaces the one there (a previous run's) for sockets added from now on;
   * sockets already in the map keep the program they were added with until they close.
   */
  attachSockmap(map: BpfMap): void {
    this.handle.attachSockmap(map.handle);
  }
  detachSockmap(map: BpfMap): void {
    this.handle.detachSockmap(map.handle);
  }
  /**
   * bpf_link from this program (sk_lookup) to the network namespace named by an nsfs file
   * (/proc/<pid>/ns/net, /var/run/netns/<name>), pinned at pinPath when given. Namespace links run
   * until detached or until the namespace is gone (then the link is defunct: update fails ENOLINK).
   */
  attachNetns(netnsPath: string, opts: { pinPath?: string } = {}): BpfLink {
    return new BpfLink(this.handle.attachNetns(netnsPath, opts.pinPath));
  }
  /**
   * Runs an iterator program (SEC("iter/...")) once over its whole set, through a bpf_iter link made
   * and closed for the run, and returns what it wrote (bpf_seq_write). A map iterator walks
   * opts.map; a socket iterator (iter/tcp) walks the network namespace at opts.netns (an nsfs file
   * such as /proc/<pid>/ns/net: a helper thread enters it, CAP_SYS_ADMIN), else the agent's own.
   */
  iterate(opts: { map?: BpfMap; netns?: string } = {}): Buffer {
    return this.handle.iterate(opts.map?.handle ?? null, opts.netns);
  }
  /** Cumulative run time and count; they only grow while stats are enabled (enableStats()). */
  stats(): { runTimeNs: bigint; runCount: bigint } {
    return this.handle.stats();
  }
}

export class BpfObject {
  private readonly mapsByName = new Map<string, BpfMap>();
  private readonly programsByName = new Map<string, BpfProgram>();

  private constructor(
    readonly path: string,
    private readonly handle: NativeObjectHandle,
  ) {
    for (const m of handle.maps()) this.mapsByName.set(m.name, new BpfMap(m));
    for (const p of handle.programs()) this.programsByName.set(p.name, new BpfProgram(p));
  }

  /** Opens and loads an object, its maps pinned under opts.pinDir (created if missing). */
  static open(path: string, opts: OpenOptions): BpfObject {
    mkdirSync(opts.pinDir, { recursive: true });
    if (opts.log) addon.setLogSink(sinkFor(opts.log));
    const check = opts.check;
    const object = basename(path);
    const beforeLoad = check
      ? (btfType: (kind: 'struct' | 'enum', name: string) => BtfStruct | BtfEnum | null): void =>
          check({
            object,
            struct: (name) => (btfType('struct', name) as BtfStruct | null) ?? undefined,
            enum: (name) => (btfType('enum', name) as BtfEnum | null) ?? undefined,
          })
      : undefined;
    try {
      return new BpfObject(
        path,
        addon.NativeObject.open(path, opts.pinDir, opts.maxEntries ?? {}, beforeLoad),
      );
    } finally {
      addon.setLogSink(defaultSink);
    }
  }

  map(name: string): BpfMap {
    const m = this.mapsByName.get(name);
    if (!m) throw notFound('map', name, this.handle.name, [...this.mapsByName.keys()]);
    return m;
  }
  program(name: string): BpfProgram {
    const p = this.programsByName.get(name);
    if (!p) throw notFound('program', name, this.handle.name, [...this.programsByName.keys()]);
    return p;
  }
  maps(): BpfMap[] {
    return [...this.mapsByName.values()];
  }
  programs(): BpfProgram[] {
    return [...this.programsByName.values()];
  }
  /** A struct as the loaded object's BTF lays it out; undefined when the object has none of that name. */
  btfStruct(name: string): BtfStruct | undefined {
    return this.handle.btfType('struct', name) ?? undefined;
  }
  /** An enum's values as the loaded object's BTF declares them; undefined when it has none of that name. */
  btfEnum(name: string): BtfEnum | undefined {
    return this.handle.btfType('enum', name) ?? undefined;
  }
  /** Closes the object's fds (its maps and programs become unusable); pinned maps and links stay. */
  close(): void {
    this.handle.close();
  }
}

function notFound(kind: 'map' | 'program', name: string, object: string, known: string[]): BpfError {
  const e = new Error(
    `bpf_object__find_${kind}_by_name ${name}: ENOENT (No such ${kind} in ${object}; it has ${known.join(', ')})`,
  ) as BpfError;
  e.code = 'ENOENT';
  e.errno = 2;
  e.syscall = `bpf_object__find_${kind}_by_name`;
  e.object = object;
  e[kind] = name;
  return e;
}

export class RingBuffer {
  private readonly handle: NativeRingBufferHandle;

  /** Records are delivered as Buffer copies from Node's event loop until close(). */
  constructor(map: BpfMap, onRecord: (record: Buffer) => void) {
    this.handle = new addon.NativeRingBuffer(map.handle, onRecord);
  }
  /** Delivers whatever is pending now, synchronously; returns how many records. */
  consume(): number {
    return this.handle.consume();
  }
  /** Lets the process exit while the ring buffer is open. */
  unref(): void {
    this.handle.unref();
  }
  close(): void {
    this.handle.close();
  }
}

/** BPF_ENABLE_STATS(BPF_STATS_RUN_TIME) while held: programs' run time and count accumulate. */
export function enableStats(): { close(): void } {
  let fd = addon.enableStats();
  return {
    close(): void {
      if (fd >= 0) addon.closeFd(fd);
      fd = -1;
    },
  };
}

export function possibleCpus(): number {
  return addon.possibleCpus();
}

/**
 * Detaches the programs of one attach type ('cgroup_inet4_connect' or 'cgroup/connect4') from a
 * cgroup, links and PROG_ATTACH alike: all of them, or only those whose name starts with
 * namePrefix (the kernel keeps 15 characters of a name). For cleanup tools; returns how many.
 */
export function detachCgroupAll(cgroupPath: string, attachType: string, namePrefix?: string): number {
  return addon.detachCgroupAll(cgroupPath, attachType, namePrefix);
}

/** The programs attached to a cgroup for one attach type (its own list, not inherited ones). */
export function attachedPrograms(cgroupPath: string, attachType: string): AttachedProgram[] {
  return addon.attachedPrograms(cgroupPath, attachType);
}

/** Routes libbpf's log to a pino logger from now on (BpfObject.open's `log` does so during the load). */
export function setLibbpfLogger(log: Logger | undefined): void {
  defaultSink = log ? sinkFor(log) : undefined;
  addon.setLogSink(defaultSink);
}

/** Reads a struct's layout from a BPF object file's BTF; ENOENT names a struct it does not have. */
export function btfStruct(objectPath: string, name: string): BtfStruct {
  return addon.btfStruct(objectPath, name);
}

/** Reads an enum's values from a BPF object file's BTF; ENOENT names an enum it does not have. */
export function btfEnum(objectPath: string, name: string): BtfEnum {
  return addon.btfEnum(objectPath, name);
}

/** An object file's BTF as a BtfReader (what OpenOptions.check is given), without loading it. */
export function fileBtf(objectPath: string): BtfReader {
  const missing = <T>(read: () => T): T | undefined => {
    try {
      return read();
    } catch (e) {
      if (isBpfError(e) && e.syscall === 'btf__find_by_name_kind') return undefined;
      throw e;
    }
  };
  return {
    object: basename(objectPath),
    struct: (name) => missing(() => addon.btfStruct(objectPath, name)),
    enum: (name) => missing(() => addon.btfEnum(objectPath, name)),
  };
}
