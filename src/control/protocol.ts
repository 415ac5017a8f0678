// The control socket's wire format: length-prefixed frames, each a JSON message or a binary capture
// record, so a capture streams records and still ends with a JSON summary on the same connection.
//   frame = u32 big-endian length of (type + payload) | u8 type | payload

export const FRAME_JSON = 1;
/** A struct km_capture_record as the kernel wrote it, followed by its caplen bytes. */
export const FRAME_CAPTURE = 2;

/** Largest frame accepted: a capture record is at most 64 KiB; JSON replies are small. */
const MAX_FRAME = 1 << 20;

export interface Frame {
  type: number;
  payload: Buffer;
}

export function encodeFrame(type: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(payload.length + 1, 0);
  head.writeUInt8(type, 4);
  return Buffer.concat([head, payload]);
}

export function jsonFrame(value: unknown): Buffer {
  return encodeFrame(
    FRAME_JSON,
    Buffer.from(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))),
  );
}

/** Splits a byte stream into frames; throws on a length no peer of ours would send. */
export class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    const out: Frame[] = [];
    while (this.buffered.length >= 5) {
      const length = this.buffered.readUInt32BE(0);
      if (length < 1 || length > MAX_FRAME) throw new Error(`control socket: bad frame length ${length}`);
      if (this.buffered.length < 4 + length) break;
      out.push({ type: this.buffered.readUInt8(4), payload: this.buffered.subarray(5, 4 + length) });
      this.buffered = this.buffered.subarray(4 + length);
    }
    return out;
  }
}

/** A JSON message of either side: `op` names the request; replies carry `ok` and, when false, `error`. */
export type ControlMessage = { op?: string; ok?: boolean; error?: string } & Record<string, unknown>;
