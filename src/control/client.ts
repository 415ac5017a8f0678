// The CLI's side of the control socket: one request and its reply, or a capture's stream of records.
import { createConnection, type Socket } from 'node:net';

import { FRAME_CAPTURE, FRAME_JSON, FrameReader, jsonFrame, type ControlMessage } from './protocol.js';

/** The agent's default control socket (`kernmesh run --control-socket`). */
export const DEFAULT_CONTROL_SOCKET = '/run/kernmesh/control.sock';

function connect(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    s.once('connect', () => resolve(s));
    s.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `no agent answers on the control socket ${path} (${e.code ?? e.message}); is kernmesh run up, with --control-socket there?`,
        ),
      ),
    );
  });
}

/** The agent's refusal, with the rule errors of a bad rules file when there are some. */
export class ControlError extends Error {
  constructor(
    message: string,
    readonly reply: ControlMessage,
  ) {
    super(message);
    this.name = 'ControlError';
  }
}

/** Sends one request and resolves with the reply; a refusal rejects with ControlError. */
export async function controlRequest(path: string, message: ControlMessage): Promise<ControlMessage> {
  const socket = await connect(path);
  const reader = new FrameReader();
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      for (const f of reader.push(chunk)) {
        if (f.type !== FRAME_JSON) continue;
        const reply = JSON.parse(f.payload.toString('utf8')) as ControlMessage;
        socket.end();
        if (reply.ok) resolve(reply);
        else reject(new ControlError(reply.error ?? 'refused', reply));
      }
    });
    socket.on('error', reject);
    socket.on('close', () =>
      reject(new Error(`the agent closed the control socket ${path} without a reply`)),
    );
    socket.write(jsonFrame(message));
  });
}

export interface CaptureStream {
  /** The agent's first reply: the clock to convert record timestamps and the filter it applies. */
  started: ControlMessage;
  /** Asks the agent to stop; `done` then resolves with the summary. */
  stop(): void;
  /** The summary (captured, delivered, lost by cause) once the agent ends the capture. */
  done: Promise<ControlMessage>;
}

/** Starts a capture; each record is handed to onRecord as the kernel wrote it. */
export async function controlCapture(
  path: string,
  message: ControlMessage,
  onRecord: (raw: Buffer) => void,
): Promise<CaptureStream> {
  const socket = await connect(path);
  const reader = new FrameReader();
  let resolveStarted!: (m: ControlMessage) => void;
  let rejectStarted!: (e: Error) => void;
  const started = new Promise<ControlMessage>((res, rej) => {
    resolveStarted = res;
    rejectStarted = rej;
  });
  let resolveDone!: (m: ControlMessage) => void;
  let rejectDone!: (e: Error) => void;
  const done = new Promise<ControlMessage>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  // Both are rejected on a refusal; the caller awaits `started` first.
  done.catch(() => {});
  let ended = false;
  socket.on('data', (chunk: Buffer) => {
    for (const f of reader.push(chunk)) {
      if (f.type === FRAME_CAPTURE) {
        onRecord(Buffer.from(f.payload));
        continue;
      }
      if (f.type !== FRAME_JSON) continue;
      const m = JSON.parse(f.payload.toString('utf8')) as ControlMessage;
      if (!m.ok) {
        const err = new ControlError(m.error ?? 'refused', m);
        rejectStarted(err);
        rejectDone(err);
        socket.end();
      } else if (m.op === 'capture.started') resolveStarted(m);
      else if (m.op === 'capture.end') {
        ended = true;
        resolveDone(m);
      }
    }
  });
  socket.on('error', (e) => {
    rejectStarted(e);
    rejectDone(e);
  });
  socket.on('close', () => {
    if (ended) return;
    const e = new Error(`the agent closed the control socket ${path} before the capture ended`);
    rejectStarted(e);
    rejectDone(e);
  });
  socket.write(jsonFrame(message));
  const first = await started;
  return {
    started: first,
    stop: () => {
      if (!socket.destroyed) socket.write(jsonFrame({ op: 'stop' }));
    },
    done,
  };
}
