// What user space relies on in a BPF object, declared once as data beside each codec (a spec): the
// layout of every struct it encodes or decodes and the value of every enum constant it mirrors. A
// spec is checked against the object's own BTF when the object is loaded (spec versus live object,
// as cilium/ebpf does), and a difference refuses the object with each difference named.
import type { BtfReader } from './index.js';

export interface FieldLayout {
  /** Member name in C. */
  name: string;
  /** Bytes from the start of the struct. */
  offset: number;
  /** Bytes (the whole array for array members). */
  size: number;
}

export interface StructLayout {
  /** `struct <name>` in the object's header. */
  readonly struct: string;
  readonly size: number;
  readonly fields: readonly FieldLayout[];
}

/** Enum constants by their C names, as user space uses them. */
export interface EnumSpec {
  /** `enum <name>` in the object's header. */
  readonly enum: string;
  readonly values: Readonly<Record<string, number>>;
}

/** Everything user space relies on in one object. */
export interface ObjectSpec {
  structs: readonly StructLayout[];
  enums: readonly EnumSpec[];
}

/**
 * A struct's layout from its members' sizes in C order. The headers spell out their padding, so
 * members follow one another; `size` is given only where the compiler pads the end.
 */
export function layout(struct: string, fields: [string, number][], size?: number): StructLayout {
  let offset = 0;
  const out = fields.map(([name, bytes]) => {
    const f = { name, offset, size: bytes };
    offset += bytes;
    return f;
  });
  return { struct, size: size ?? offset, fields: out };
}

export function enumSpec(name: string, values: Record<string, number>): EnumSpec {
  return { enum: name, values };
}

/** 'round_robin' and 'roundRobin' both name C's ROUND_ROBIN. */
const upperSnake = (name: string): string => name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

/**
 * An enum whose constants are a list in C order: `prefix` + the name in upper snake case = its
 * index ('round_robin' → KM_LB_ROUND_ROBIN = 1), plus `extra` constants (counts, limits).
 */
export function enumOfList(
  name: string,
  prefix: string,
  names: readonly string[],
  extra: Record<string, number> = {},
): EnumSpec {
  const values: Record<string, number> = {};
  names.forEach((n, i) => (values[prefix + upperSnake(n)] = i));
  return { enum: name, values: { ...values, ...extra } };
}

/** An enum from a record of its values: `prefix` + each key in upper snake case (failOnPanic → KM_SVC_FAIL_ON_PANIC). */
export function enumOf(name: string, prefix: string, record: Readonly<Record<string, number>>): EnumSpec {
  return {
    enum: name,
    values: Object.fromEntries(Object.entries(record).map(([k, v]) => [prefix + upperSnake(k), v])),
  };
}

/** Every way the object's BTF differs from the spec, one line each (none: they agree). */
export function specDifferences(spec: ObjectSpec, btf: BtfReader): string[] {
  const out: string[] = [];
  const where = btf.object;
  for (const s of spec.structs) {
    const live = btf.struct(s.struct);
    if (!live) {
      out.push(`struct ${s.struct}: not in ${where}`);
      continue;
    }
    if (live.size !== s.size)
      out.push(`struct ${s.struct}: ${live.size} bytes in ${where}, ${s.size} in the agent`);
    const liveMembers = new Map(live.members.map((m) => [m.name, m]));
    for (const f of s.fields) {
      const m = liveMembers.get(f.name);
      if (!m) out.push(`struct ${s.struct}: member ${f.name} not in ${where}`);
      else if (m.offset !== f.offset || m.size !== f.size || m.bitSize !== 0)
        out.push(
          `struct ${s.struct}: member ${f.name} at offset ${m.offset} (${m.size ?? '?'} bytes${m.bitSize ? `, a ${m.bitSize}-bit field` : ''}) in ${where}, at ${f.offset} (${f.size} bytes) in the agent`,
        );
    }
    const declared = new Set(s.fields.map((f) => f.name));
    for (const m of live.members)
      if (!declared.has(m.name))
        out.push(
          `struct ${s.struct}: member ${m.name} (offset ${m.offset}) in ${where} only, not in the agent`,
        );
  }
  for (const e of spec.enums) {
    const live = btf.enum(e.enum);
    if (!live) {
      out.push(`enum ${e.enum}: not in ${where}`);
      continue;
    }
    for (const [name, value] of Object.entries(e.values)) {
      const v = live.values[name];
      if (v === undefined) out.push(`enum ${e.enum}: ${name} not in ${where}`);
      else if (v !== value) out.push(`enum ${e.enum}: ${name} = ${v} in ${where}, ${value} in the agent`);
    }
  }
  return out;
}

/** Throws naming every difference between the spec and the object's BTF (BpfObject.open's `check`). */
export function checkSpec(spec: ObjectSpec): (btf: BtfReader) => void {
  return (btf) => {
    const diff = specDifferences(spec, btf);
    if (diff.length)
      throw new Error(
        `${btf.object} does not match this agent (built from other sources?): ${diff.join('; ')}`,
      );
  };
}

/** A u32 key or value in host byte order (little-endian on our targets): ids, array indexes. */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}

/** Sums a per-CPU u64 value (each CPU's copy is 8-byte aligned). */
export function sumPerCpuU64(value: Buffer): bigint {
  let total = 0n;
  for (let off = 0; off + 8 <= value.length; off += 8) total += value.readBigUInt64LE(off);
  return total;
}
