// Struct layouts as the compiled BPF object declares them in its BTF (via bpftool), so codec tests
// compare against what the kernel side was really built with, not against a copy of the header.
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

/** Every named struct in the object's BTF, by name. */
export function btfStructs(objectPath: string): Map<string, BtfStruct> {
  const out = execFileSync('bpftool', ['btf', 'dump', 'file', objectPath, 'format', 'raw', '-j'], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  const types = (JSON.parse(out) as { types: BtfType[] }).types;
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
