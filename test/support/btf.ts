// Struct layouts and enum values as the compiled BPF object declares them in its BTF, read by
// bpftool: codec tests compare the agent's specs against what the kernel side was really built
// with, through a reader other than the agent's own (native's, which the agent checks at load).
import { execFileSync } from 'node:child_process';

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
  bitfield_size?: number;
}
interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: BtfMember[];
  values?: { name: string; val: number }[];
}

export interface BtfMemberLayout {
  name: string;
  /** Bytes from the start of the struct. */
  offset: number;
  /** Bytes (arrays: the whole array). */
  size: number;
}
export interface BtfStruct {
  name: string;
  size: number;
  members: BtfMemberLayout[];
}

function btfTypes(objectPath: string): BtfType[] {
  const out = execFileSync('bpftool', ['btf', 'dump', 'file', objectPath, 'format', 'raw', '-j'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  return (JSON.parse(out) as { types: BtfType[] }).types;
}

/** Every named enum in the object's BTF: its values by name. */
export function btfEnums(objectPath: string): Map<string, Record<string, number>> {
  const out = new Map<string, Record<string, number>>();
  for (const t of btfTypes(objectPath))
    if ((t.kind === 'ENUM' || t.kind === 'ENUM64') && t.name && t.name !== '(anon)')
      out.set(t.name, Object.fromEntries((t.values ?? []).map((v) => [v.name, v.val])));
  return out;
}

/** Every named struct in the object's BTF, by name. */
export function btfStructs(objectPath: string): Map<string, BtfStruct> {
  const types = btfTypes(objectPath);
  const byId = new Map(types.map((t) => [t.id, t]));

  const sizeOf = (id: number, depth = 0): number => {
    const t = byId.get(id);
    if (!t || depth > 32) throw new Error(`BTF type ${id} of ${objectPath} cannot be sized`);
    switch (t.kind) {
      case 'INT':
      case 'STRUCT':
      case 'UNION':
      case 'ENUM':
      case 'ENUM64':
      case 'FLOAT':
        return t.size ?? 0;
      case 'PTR':
        return 8;
      case 'ARRAY':
        return (t.nr_elems ?? 0) * sizeOf(t.type_id ?? 0, depth + 1);
      case 'TYPEDEF':
      case 'CONST':
      case 'VOLATILE':
      case 'RESTRICT':
      case 'TYPE_TAG':
        return sizeOf(t.type_id ?? 0, depth + 1);
      default:
        throw new Error(`BTF kind ${t.kind} (type ${id}) not handled`);
    }
  };

  const structs = new Map<string, BtfStruct>();
  for (const t of types) {
    if (t.kind !== 'STRUCT' || !t.name || t.name === '(anon)') continue;
    structs.set(t.name, {
      name: t.name,
      size: t.size ?? 0,
      members: (t.members ?? []).map((m) => ({
        name: m.name,
        offset: m.bits_offset / 8,
        size: sizeOf(m.type_id),
      })),
    });
  }
  return structs;
}
