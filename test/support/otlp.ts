// An OTLP/HTTP traces receiver for tests: decodes each request body as the OpenTelemetry protocol's
// ExportTraceServiceRequest with code generated from the opentelemetry-proto definitions (shipped by
// @opentelemetry/otlp-transformer 0.215, a different encoder from the exporter's), and keeps the spans.
import { createRequire } from 'node:module';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

interface ProtoType {
  decode(b: Uint8Array): unknown;
  encode(v: unknown): { finish(): Uint8Array };
  toObject(m: unknown, o: Record<string, unknown>): unknown;
  create(v: unknown): unknown;
}
const root = createRequire(import.meta.url)(
  '@opentelemetry/otlp-transformer/build/src/generated/root.js',
) as {
  opentelemetry: { proto: { collector: { trace: { v1: Record<string, ProtoType> } } } };
};
const TRACE = root.opentelemetry.proto.collector.trace.v1;

type AnyValue = { stringValue?: string; intValue?: string; boolValue?: boolean; doubleValue?: number };

export interface ReceivedSpan {
  name: string;
  kind: string;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, string | number | boolean>;
  events: { name: string; timeNs: bigint; attributes: Record<string, string | number | boolean> }[];
  status?: { code?: string; message?: string };
  resource: Record<string, string | number | boolean>;
}

function value(v: AnyValue | undefined): string | number | boolean {
  if (!v) return '';
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.doubleValue !== undefined) return v.doubleValue;
  return '';
}

function attrs(
  list: { key: string; value?: AnyValue }[] | undefined,
): Record<string, string | number | boolean> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, value(kv.value)]));
}

interface RequestObject {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value?: AnyValue }[] };
    scopeSpans?: {
      spans?: {
        name: string;
        kind: string;
        startTimeUnixNano: string;
        endTimeUnixNano: string;
        attributes?: { key: string; value?: AnyValue }[];
        events?: { name: string; timeUnixNano: string; attributes?: { key: string; value?: AnyValue }[] }[];
        status?: { code?: string; message?: string };
      }[];
    }[];
  }[];
}

export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  /** Content types of the requests, to show they were protobuf. */
  readonly contentTypes: string[] = [];
  /** What to answer: accept, refuse (400, not retried), or never answer. */
  mode: 'accept' | 'refuse' | 'hold' = 'accept';
  private readonly held: ServerResponse[] = [];

  private constructor(
    private readonly server: ReturnType<typeof createServer>,
    readonly url: string,
  ) {}

  static async start(): Promise<OtlpReceiver> {
    const holder: { r?: OtlpReceiver } = {};
    const server = createServer((req, res) => holder.r!.handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    holder.r = new OtlpReceiver(server, `http://127.0.0.1:${port}/v1/traces`);
    return holder.r;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (d: Buffer) => chunks.push(d));
    req.on('end', () => {
      this.contentTypes.push(String(req.headers['content-type']));
      if (this.mode === 'hold') {
        this.held.push(res);
        return;
      }
      if (this.mode === 'refuse' || req.url !== '/v1/traces') {
        res.writeHead(400).end();
        return;
      }
      const msg = TRACE.ExportTraceServiceRequest!.decode(Buffer.concat(chunks));
      const o = TRACE.ExportTraceServiceRequest!.toObject(msg, {
        longs: String,
        enums: String,
        defaults: false,
      }) as RequestObject;
      for (const rs of o.resourceSpans ?? []) {
        const resource = attrs(rs.resource?.attributes);
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            this.spans.push({
              name: s.name,
              kind: s.kind,
              startNs: BigInt(s.startTimeUnixNano),
              endNs: BigInt(s.endTimeUnixNano),
              attributes: attrs(s.attributes),
              events: (s.events ?? []).map((e) => ({
                name: e.name,
                timeNs: BigInt(e.timeUnixNano),
                attributes: attrs(e.attributes),
              })),
              ...(s.status ? { status: s.status } : {}),
              resource,
            });
      }
      const reply = TRACE.ExportTraceServiceResponse!.encode(
        TRACE.ExportTraceServiceResponse!.create({}),
      ).finish();
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(Buffer.from(reply));
    });
  }

  async close(): Promise<void> {
    for (const r of this.held.splice(0)) r.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
