// IP literals ↔ the 16-byte address fields of bpf/kernmesh.h (IPv4 in the first 4 bytes). Shared by
// xds/ (workload API addresses), accel/ (rule CIDRs) and dataplane/ (map keys), so it sits beside the stages.
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;

/** KM_AF_INET / KM_AF_INET6 in kernmesh.h: the IP version, not the kernel's AF_* numbers. */
export function familyOf(address: string): Family {
  if (isIPv4(address)) return 4;
  if (isIPv6(address)) return 6;
  throw new Error(`not an IP address: ${JSON.stringify(address)}`);
}

function v4Bytes(address: string): number[] {
  return address.split('.').map((p) => Number(p));
}

/** 16 bytes: IPv4 in the first 4, IPv6 in full. */
export function encodeAddress(address: string): Buffer {
  const out = Buffer.alloc(16);
  if (isIPv4(address)) {
    Buffer.from(v4Bytes(address)).copy(out, 0);
    return out;
  }
  if (!isIPv6(address)) throw new Error(`not an IP address: ${JSON.stringify(address)}`);
  let text = address;
  const zone = text.indexOf('%');
  if (zone >= 0) text = text.slice(0, zone);
  // an embedded dotted quad (::ffff:1.2.3.4) becomes its two hex groups
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const b = v4Bytes(tail);
    const hi = (((b[0] ?? 0) << 8) | (b[1] ?? 0)).toString(16);
    const lo = (((b[2] ?? 0) << 8) | (b[3] ?? 0)).toString(16);
    text = `${text.slice(0, lastColon + 1)}${hi}:${lo}`;
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const parse = (s: string): number[] => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const headGroups = parse(head);
  const restGroups = rest === undefined ? [] : parse(rest);
  const fill = rest === undefined ? 0 : 8 - headGroups.length - restGroups.length;
  const groups = [...headGroups, ...new Array<number>(Math.max(0, fill)).fill(0), ...restGroups];
  if (groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff)))
    throw new Error(`cannot parse IPv6 address ${JSON.stringify(address)}`);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/** Inverse of encodeAddress; IPv6 in the canonical compressed form (RFC 5952). */
export function decodeAddress(bytes: Buffer, family: number): string {
  if (family === 4) return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(bytes.readUInt16BE(i * 2));
  // the longest run of two or more zero groups becomes "::"
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** Canonical text of an address, so the same endpoint always gets the same backend id. */
export function canonicalAddress(address: string): string {
  return decodeAddress(encodeAddress(address), familyOf(address));
}
