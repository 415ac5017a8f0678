// Captured sockmap messages as a pcap stream: each message becomes TCP segments with synthesized
// Ethernet and IP headers carrying the connection's real addresses and ports, and sequence numbers
// from the sender's stream offset, so Wireshark and tshark reassemble and follow the stream.
import { encodeAddress } from '../net/address.js';
import type { CaptureRecord } from './codec.js';

const LINKTYPE_ETHERNET = 1;
/** Classic pcap with nanosecond timestamps. */
const PCAP_MAGIC_NS = 0xa1b23c4d;
const ETH = 14;
const IP4 = 20;
const IP6 = 40;
const TCP = 20;
/** Payload of one synthesized segment: an IPv4 total length must fit 16 bits. */
const MAX_SEGMENT = 65000;
const TCP_PSH_ACK = 0x18;

/** The 24-byte file header; snaplen is the largest packet length recorded. */
export function pcapHeader(snaplen: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(PCAP_MAGIC_NS, 0);
  b.writeUInt16LE(2, 4);
  b.writeUInt16LE(4, 6);
  b.writeUInt32LE(snaplen + ETH + IP6 + TCP, 16);
  b.writeUInt32LE(LINKTYPE_ETHERNET, 20);
  return b;
}

function ipv4Checksum(h: Buffer): number {
  let sum = 0;
  for (let i = 0; i < h.length; i += 2) sum += h.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function addressBytes(address: string, family: 4 | 6): Buffer {
  const b = encodeAddress(address);
  return family === 4 ? b.subarray(0, 4) : b;
}

/** One's-complement sum of the TCP pseudo-header and segment (the whole segment must be present). */
function tcpChecksum(src: Buffer, dst: Buffer, segment: Buffer): number {
  let sum = 0;
  const add = (b: Buffer): void => {
    for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
    if (b.length % 2) sum += b[b.length - 1]! << 8;
  };
  add(src);
  add(dst);
  sum += 6;
  if (src.length === 16) sum += segment.length >>> 16;
  sum += segment.length & 0xffff;
  add(segment);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff || 0xffff;
}

interface Direction {
  /** Sequence number of stream offset 0 (the ISN + 1). */
  base: number;
  /** The highest stream offset seen sent, for the other direction's acknowledgements. */
  next: bigint;
}

/**
 * Turns capture records into pcap packet records. One writer per output: it remembers each
 * direction's stream end so segments acknowledge what the other side has sent.
 */
export class PcapWriter {
  private readonly directions = new Map<string, Direction>();
  private ipId = 0;

  /** CLOCK_MONOTONIC ns (the records' clock) → Unix ns: the offset taken when the capture started. */
  constructor(private readonly monotonicToUnixNs: bigint) {}

  private direction(src: string, dst: string): Direction {
    let d = this.directions.get(`${src}>${dst}`);
    if (!d) {
      d = { base: 1, next: 0n };
      this.directions.set(`${src}>${dst}`, d);
    }
    return d;
  }

  /** The pcap records (header + packet) for one captured message. */
  packets(r: CaptureRecord): Buffer[] {
    const src = `${r.source}|${r.sourcePort}`;
    const dst = `${r.destination}|${r.destinationPort}`;
    const out = this.direction(src, dst);
    const back = this.direction(dst, src);
    const end = r.offset + BigInt(r.size);
    if (end > out.next) out.next = end;
    const ack = (back.base + Number(back.next % 2n ** 32n)) >>> 0;
    const records: Buffer[] = [];
    const ts = r.timestampNs + this.monotonicToUnixNs;
    // A message longer than one segment is cut the way TSO would, so lengths stay representable.
    for (let start = 0; start < r.size || (r.size === 0 && start === 0); start += MAX_SEGMENT) {
      const length = Math.min(MAX_SEGMENT, r.size - start);
      const captured = r.data.subarray(
        Math.min(start, r.data.length),
        Math.min(start + length, r.data.length),
      );
      const seq = (out.base + Number((r.offset + BigInt(start)) % 2n ** 32n)) >>> 0;
      records.push(this.packet(r, ts, seq, ack, length, captured));
      if (r.size === 0) break;
    }
    return records;
  }

  private packet(
    r: CaptureRecord,
    ts: bigint,
    seq: number,
    ack: number,
    length: number,
    captured: Buffer,
  ): Buffer {
    const v4 = r.family === 4;
    const ipLen = v4 ? IP4 : IP6;
    const srcIp = addressBytes(r.source, r.family);
    const dstIp = addressBytes(r.destination, r.family);
    const headers = Buffer.alloc(ETH + ipLen + TCP);
    // Locally administered MACs: there is no link under a sockmap redirect.
    Buffer.from([0x02, 0, 0, 0, 0, 0x02]).copy(headers, 0);
    Buffer.from([0x02, 0, 0, 0, 0, 0x01]).copy(headers, 6);
    headers.writeUInt16BE(v4 ? 0x0800 : 0x86dd, 12);
    const ip = headers.subarray(ETH, ETH + ipLen);
    if (v4) {
      ip.writeUInt8(0x45, 0);
      ip.writeUInt16BE(IP4 + TCP + length, 2);
      ip.writeUInt16BE(this.ipId++ & 0xffff, 4);
      ip.writeUInt16BE(0x4000, 6); // don't fragment
      ip.writeUInt8(64, 8);
      ip.writeUInt8(6, 9);
      srcIp.copy(ip, 12);
      dstIp.copy(ip, 16);
      ip.writeUInt16BE(ipv4Checksum(ip), 10);
    } else {
      ip.writeUInt32BE(0x60000000, 0);
      ip.writeUInt16BE(TCP + length, 4);
      ip.writeUInt8(6, 6);
      ip.writeUInt8(64, 7);
      srcIp.copy(ip, 8);
      dstIp.copy(ip, 24);
    }
    const tcp = headers.subarray(ETH + ipLen);
    tcp.writeUInt16BE(r.sourcePort, 0);
    tcp.writeUInt16BE(r.destinationPort, 2);
    tcp.writeUInt32BE(seq, 4);
    tcp.writeUInt32BE(ack, 8);
    tcp.writeUInt8(5 << 4, 12);
    tcp.writeUInt8(TCP_PSH_ACK, 13);
    tcp.writeUInt16BE(0xffff, 14);
    // The checksum needs every byte: a truncated segment carries 0 (Wireshark does not check by default).
    if (captured.length === length)
      tcp.writeUInt16BE(tcpChecksum(srcIp, dstIp, Buffer.concat([tcp, captured])), 16);
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(Number(ts / 1_000_000_000n), 0);
    rec.writeUInt32LE(Number(ts % 1_000_000_000n), 4);
    rec.writeUInt32LE(headers.length + captured.length, 8);
    rec.writeUInt32LE(headers.length + length, 12);
    return Buffer.concat([rec, headers, captured]);
  }
}
