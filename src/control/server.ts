// The agent's control socket: a unix socket only root can reach (directory 0700, socket 0600), where
// `kernmesh accel` and `kernmesh capture` change or read state the admin endpoint never changes.
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';

import {
  FRAME_CAPTURE,
  FRAME_JSON,
  FrameReader,
  encodeFrame,
  jsonFrame,
  type ControlMessage,
} from './protocol.js';

/** Where a capture's records and its end go. */
export interface CaptureSink {
  record(raw: Buffer): void;
  end(summary: Record<string, unknown>): void;
}

/** What the socket can ask of the agent; each throws an Error whose message is the operator's answer. */
export interface ControlHandlers {
  /** `accel status|on|off|rules`: a JSON reply. */
  request(message: ControlMessage): Record<string, unknown>;
  /** Starts a capture; returns its first reply and a way to stop it early. */
  capture(message: ControlMessage, sink: CaptureSink): { started: Record<string, unknown>; stop(): void };
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/** True when a process accepts connections on the socket at path. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function startControlServer(
  path: string,
  handlers: ControlHandlers,
  log?: Logger,
): Promise<ControlServer> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket()) throw new Error(`control socket ${path}: exists and is not a socket`);
    if (await answers(path)) throw new Error(`control socket ${path}: another agent listens there`);
    unlinkSync(path); // left by an agent that did not stop cleanly
  }
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    serve(socket, handlers, log);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`control socket ${path}: ${e.message}`, { cause: e })));
    // Only root reaches it: the socket is created 0600 (umask) and chmod'ed again to be sure.
    const umask = process.umask(0o177);
    server.listen(path, () => {
      process.umask(umask);
      resolve();
    });
  });
  chmodSync(path, 0o600);
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

function serve(socket: Socket, handlers: ControlHandlers, log?: Logger): void {
  const reader = new FrameReader();
  let capture: { stop(): void } | undefined;
  const send = (value: unknown): void => {
    if (!socket.destroyed) socket.write(jsonFrame(value));
  };
  socket.on('error', () => socket.destroy());
  socket.on('close', () => capture?.stop());
  socket.on('data', (chunk: Buffer) => {
    let frames;
    try {
      frames = reader.push(chunk);
    } catch (e) {
      send({ ok: false, error: (e as Error).message });
      socket.end();
      return;
    }
    for (const f of frames) {
      let message: ControlMessage;
      try {
        if (f.type !== FRAME_JSON) throw new Error(`frame type ${f.type} is not a request`);
        message = JSON.parse(f.payload.toString('utf8')) as ControlMessage;
      } catch (e) {
        send({ ok: false, error: `bad request: ${(e as Error).message}` });
        continue;
      }
      if (message.op === 'stop') {
        capture?.stop();
        continue;
      }
      if (capture) {
        send({ ok: false, error: 'a capture runs on this connection; send stop first' });
        continue;
      }
      try {
        if (message.op === 'capture') {
          const session = handlers.capture(message, {
            record: (raw) => {
              if (!socket.destroyed) socket.write(encodeFrame(FRAME_CAPTURE, raw));
            },
            end: (summary) => {
              capture = undefined;
              send({ ok: true, op: 'capture.end', ...summary });
              socket.end();
            },
          });
          capture = session;
          send({ ok: true, op: 'capture.started', ...session.started });
        } else {
          send({ ok: true, ...handlers.request(message) });
        }
      } catch (e) {
        const err = e as Error & { errors?: unknown };
        log?.info({ op: message.op, err: err.message }, 'control request refused');
        send({ ok: false, error: err.message, ...(err.errors ? { errors: err.errors } : {}) });
      }
    }
  });
}
